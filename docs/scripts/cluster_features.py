"""Which clip description clusters the classes best: the table behind the ``cepstral``
initialisation in docs/training.md.

    python docs/scripts/cluster_features.py [instruments speakers librispeech-mini]

For each dataset, describes every training clip by its time-averaged log-Mel (mean level
removed), by cepstral coefficients of that mean (and of the per-bin deviation over time),
standardised or not, and clusters the descriptions with K = classes by K-means, Ward
linkage and spectral clustering. Prints the accuracy of each clustering on the training clips
under the majority mapping (each cluster is read as its most frequent class).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from scipy.fft import dct
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.preprocessing import StandardScaler

from hearproto.clustering import cepstral_features
from hearproto.data import prepare_dataset
from hearproto.data.dataset import clip_statistics
from hearproto.metrics import majority_mapping

MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "librispeech-mini"
DATASETS = {
    "instruments": {"name": "instruments"},
    "speakers": {"name": "speakers"},
    "librispeech-mini": {"name": "librispeech", "root": str(MINI), "n_speakers": 10},
}


def descriptions(means: np.ndarray, stds: np.ndarray) -> dict[str, np.ndarray]:
    """Clip descriptions ``(N, D)`` by name."""
    level_free = means - means.mean(axis=1, keepdims=True)
    cepstra = dct(level_free, axis=1, norm="ortho")[:, 1:20]
    return {
        "log-Mel mean, level removed": level_free,
        "cepstra 1-19 of the mean": cepstra,
        "the same, standardised": StandardScaler().fit_transform(cepstra),
        "+ cepstra 0-19 of the deviation, standardised (cepstral)":
            cepstral_features(means, stds, 20),
    }


def accuracy(clusters: np.ndarray, labels: np.ndarray, k: int) -> float:
    mapping = majority_mapping(clusters, labels, k, k)
    return 100 * float(np.mean(mapping[clusters] == labels))


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)  # spectral: graph not connected
    print("| dataset | description | K-means | Ward | spectral |\n|---|---|---|---|---|")
    for name in names:
        data = prepare_dataset(progress=False, **DATASETS[name])
        train = data.split("train", None)
        means, stds = clip_statistics(train)
        labels, k = train.labels.numpy(), train.num_classes
        for label, x in descriptions(means, stds).items():
            methods = (KMeans(k, n_init=10, random_state=0),
                       AgglomerativeClustering(k, linkage="ward"),
                       SpectralClustering(k, affinity="nearest_neighbors", n_neighbors=10,
                                          random_state=0))
            scores = [accuracy(method.fit_predict(x), labels, k) for method in methods]
            print(f"| {name} | {label} | " + " | ".join(f"{s:.1f}" for s in scores) + " |",
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", metavar="DATASET",
                        help=f"any of {', '.join(DATASETS)} (default: all)")
    chosen = parser.parse_args().datasets or list(DATASETS)
    unknown = sorted(set(chosen) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    main(chosen)
