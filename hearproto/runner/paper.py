"""The paper's numbers (Loiseau et al., ISMIR 2022, Tables 1-3), to print beside ours.

They were measured on SOL and LibriSpeech: beside ``instruments`` and ``speakers`` they are
references from *different* datasets, and every table labels them so. OA and AA are percent.
The paper does not state the scale of its L_rec; ours is the mean squared error of the
[0, 1]-scaled log-Mels x 100, so the two L_rec columns are comparable in trend, not in value.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["PAPER_DATASET", "PAPERS_UNSUPERVISED", "STAGE_LABELS", "paper_table1", "paper_table2", "paper_table3"]

#: The paper's dataset that each of our datasets stands in for.
PAPER_DATASET = {"instruments": "SOL", "sol": "SOL", "speakers": "LibriSpeech",
                 "librispeech": "LibriSpeech"}

#: Table 2's row of our model trained as the paper trains it, with free assignment (Eq. 7):
#: the row the paper's numbers and findings belong to. Our recipe's row, which holds its
#: initial clusters as targets, is "Ours unsupervised".
PAPERS_UNSUPERVISED = "Ours unsupervised, the paper's assignment"

#: Table 1's row labels for the curriculum stages.
STAGE_LABELS = {"raw": "Raw prototypes", "gain": "+ gain", "pitch": "+ pitch shift",
                "filters": "+ frequency filters", "ce": "+ cross-entropy"}

# (OA, AA, L_rec) per stage, validation sets.
_TABLE1 = {
    ("SOL", "unsupervised"): {"raw": (29.3, 13.2, 12.4), "gain": (32.2, 15.8, 3.4),
                              "pitch": (37.6, 19.1, 2.6), "filters": (33.4, 14.6, 1.5)},
    ("SOL", "supervised"): {"raw": (28.4, 39.5, 12.9), "gain": (37.4, 40.1, 3.8),
                            "pitch": (51.6, 46.1, 2.9), "filters": (55.1, 47.7, 2.1),
                            "ce": (98.9, 94.5, 2.5)},
    ("LibriSpeech", "unsupervised"): {"raw": (13.3, 13.2, 8.6), "gain": (44.4, 43.3, 3.4),
                                      "pitch": (46.8, 46.9, 2.6),
                                      "filters": (48.8, 49.5, 1.6)},
    ("LibriSpeech", "supervised"): {"raw": (60.5, 59.5, 8.6), "gain": (78.7, 79.1, 3.4),
                                    "pitch": (77.2, 77.8, 2.6), "filters": (88.8, 89.4, 1.6),
                                    "ce": (99.9, 99.9, 1.9)},
}
# (OA, AA) on the test sets; APNet + K-means needs labels to train.
_TABLE2 = {
    "SOL": {"Autoencoder + K-means": (28.7, 12.3), "APNet + K-means": (37.3, 18.2),
            PAPERS_UNSUPERVISED: (34.5, 15.4)},
    "LibriSpeech": {"Autoencoder + K-means": (11.0, 11.1), "APNet + K-means": (36.3, 36.4),
                    PAPERS_UNSUPERVISED: (48.6, 49.5)},
}
# (OA, AA, L_rec) on the test sets.
_TABLE3 = {
    "SOL": {"Direct Classification": (97.8, 94.8, None), "APNet": (95.3, 91.3, 0.1),
            "Ours supervised": (99.3, 95.8, 2.6)},
    "LibriSpeech": {"Direct Classification": (99.4, 99.5, None), "APNet": (97.8, 97.8, 0.2),
                    "Ours supervised": (99.9, 99.9, 2.6)},
}


def _paper_dataset(dataset: str) -> str | None:
    return PAPER_DATASET.get(dataset)


def paper_table1(dataset: str, mode: str) -> pd.DataFrame:
    """Stage, OA, AA, L_rec of Table 1 for the paper dataset matching ``dataset`` (empty if
    none matches, e.g. a user's folder)."""
    rows = _TABLE1.get((_paper_dataset(dataset), mode), {})
    return pd.DataFrame([(stage, *values) for stage, values in rows.items()],
                        columns=["stage", "OA", "AA", "L_rec"])


def paper_table2(dataset: str) -> pd.DataFrame:
    """Method, OA, AA of Table 2 for the paper dataset matching ``dataset``."""
    rows = _TABLE2.get(_paper_dataset(dataset), {})
    return pd.DataFrame([(method, *values) for method, values in rows.items()],
                        columns=["method", "OA", "AA"])


def paper_table3(dataset: str) -> pd.DataFrame:
    """Method, OA, AA, L_rec of Table 3 for the paper dataset matching ``dataset``."""
    rows = _TABLE3.get(_paper_dataset(dataset), {})
    return pd.DataFrame([(method, *values) for method, values in rows.items()],
                        columns=["method", "OA", "AA", "L_rec"])
