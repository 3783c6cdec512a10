"""What a model gets wrong, clip by clip: the test predictions of our model and of Direct
Classification, their confusion matrices and per-class accuracy, the pairs of classes most
often confused, and the contingency of our unsupervised clusters with the classes (the
Results pages' figures and players).

:func:`predictions_on_test` reads each test clip's choice from a shipped run's sidecar (stored
with its scores), or scores the checkpoint's test split as the tables do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from hearproto.data import PreparedDataset
from hearproto.data.dataset import ClipDataset
from hearproto.metrics import per_class_recall

#: What :func:`cluster_contingency` names a cluster that no training clip chose.
UNMAPPED = "(no training clip)"

__all__ = ["UNMAPPED", "Predictions", "predictions_on_test", "confusion_frame", "per_class_accuracy",
           "most_confused_pairs", "confusion_figure", "cluster_contingency",
           "contingency_figure", "clip_frames", "clip_errors_of"]


@dataclass
class Predictions:
    """Every test clip of one checkpoint: ``table`` (``clip``, its index in ``clips``;
    ``label`` and ``predicted``, class names, ``predicted`` None for a clip on a prototype
    mapped to no class; for our model ``prototype``, the one that reconstructs it best), the
    test ``clips``, ``classes`` and the ``data`` they come from. :func:`clip_errors_of` gives
    the errors of the clips wanted."""

    table: pd.DataFrame
    clips: ClipDataset
    classes: list[str]
    data: PreparedDataset

    @property
    def wrong(self) -> pd.DataFrame:
        """The rows of misclassified clips."""
        return self.table[self.table["label"] != self.table["predicted"]]


def predictions_on_test(checkpoint: str | os.PathLike, device: str = "auto",
                        root: str | None = None) -> Predictions:
    """The test predictions of ``checkpoint``: our model (supervised: each prototype is its
    class; unsupervised: the majority class of the training clips each one reconstructs
    best) or a baseline with a classifier (Direct Classification, APNet). A checkpoint
    unpacked from ``weights/`` gives the choices stored when it was shipped; any other is
    evaluated (:func:`~hearproto.training.evaluate_checkpoint`,
    :func:`~hearproto.baselines.trainer.evaluate_baseline`, with ``per_clip``)."""
    from hearproto.baselines.trainer import BaselineConfig, evaluate_baseline
    from hearproto.training import (TrainConfig, checkpoint_dataset, evaluate_checkpoint,
                                    read_checkpoint)
    from hearproto.training.evaluation import evaluation_split

    from hearproto.runner.shipped import shipped_scores

    payload = read_checkpoint(checkpoint)
    baseline = payload.get("baseline")
    if baseline == "autoencoder":
        raise ValueError(f"{checkpoint}: the autoencoder has no classifier to predict with")
    stored = shipped_scores(checkpoint, "test")
    per_clip = (stored or {}).get("per_clip")  # chosen when the run was shipped
    if not per_clip:
        score = evaluate_baseline if baseline else evaluate_checkpoint
        per_clip = score(checkpoint, "test", device, root, per_clip=True)["per_clip"]
    config = (BaselineConfig if baseline else TrainConfig).from_dict(payload["config"])
    data = checkpoint_dataset(checkpoint, payload, config, root)
    clips = evaluation_split(data, "test")
    return _predictions(clips, np.asarray(per_clip["predicted"]), per_clip.get("prototype"),
                        data)


def _predictions(clips: ClipDataset, predicted: np.ndarray, chosen,
                 data: PreparedDataset) -> Predictions:
    classes = list(clips.classes)
    if len(predicted) != len(clips):
        raise ValueError(f"{len(predicted)} predictions for {len(clips)} test clips: the "
                         "stored choices are not of these data")
    table = pd.DataFrame({"clip": np.arange(len(clips)),
                          "label": [classes[i] for i in clips.labels.numpy()],
                          "predicted": [classes[p] if p >= 0 else None for p in predicted]})
    if chosen is not None:
        table["prototype"] = np.asarray(chosen)
    return Predictions(table, clips, classes, data)


@torch.no_grad()
def clip_errors_of(model, predictions: Predictions, clips) -> np.ndarray:
    """The errors ``(n, K)`` of the test clips ``clips`` (indices) by every prototype of our
    ``model``, clip by clip (whole clips, as the scores are)."""
    clips = [int(c) for c in clips]
    model.eval()
    rows = [model.errors(clip_frames(predictions, c))[0][0].float().numpy() for c in clips]
    return np.stack(rows) if rows else np.zeros((0, model.num_prototypes))


def confusion_frame(predictions: Predictions) -> pd.DataFrame:
    """Clip counts, true class (rows) by predicted class (columns), in the classes' order."""
    table = predictions.table.dropna(subset=["predicted"])
    counts = pd.crosstab(pd.Categorical(table["label"], predictions.classes),
                         pd.Categorical(table["predicted"], predictions.classes), dropna=False)
    counts.index.name, counts.columns.name = "true class", "predicted class"
    return counts


def per_class_accuracy(predictions: dict[str, Predictions]) -> pd.DataFrame:
    """Per class (rows), each method's accuracy on its test clips in %, the classes sorted
    from the worst to the best of the first method."""
    columns = {}
    for method, found in predictions.items():
        lookup = {name: i for i, name in enumerate(found.classes)}
        labels = found.table["label"].map(lookup).to_numpy()
        guessed = found.table["predicted"].map(lookup).fillna(-1).astype(int).to_numpy()
        columns[method] = pd.Series(per_class_recall(labels, guessed, len(found.classes)),
                                    index=found.classes)
    frame = pd.DataFrame(columns)
    frame.index.name = "class"
    return frame.sort_values(list(predictions)[0], kind="stable")


def most_confused_pairs(predictions: Predictions, count: int = 3) -> pd.DataFrame:
    """The ``count`` (true, predicted) pairs of different classes with the most test clips:
    columns ``true``, ``predicted``, ``clips`` and ``of``, the true class's test clips."""
    counts = confusion_frame(predictions)
    totals = predictions.table["label"].value_counts()
    pairs = counts.stack().rename("clips").reset_index()
    pairs.columns = ["true", "predicted", "clips"]
    pairs = pairs[(pairs["true"] != pairs["predicted"]) & (pairs["clips"] > 0)]
    pairs = pairs.sort_values(["clips", "true", "predicted"], ascending=[False, True, True],
                              kind="stable").head(count).reset_index(drop=True)
    pairs["of"] = pairs["true"].map(totals).astype(int)
    return pairs


def confusion_figure(predictions: dict[str, Predictions], title: str) -> plt.Figure:
    """One panel per method: the confusion matrix, each row divided by its class's clips
    (so that the diagonal is the per-class accuracy), classes in the same order."""
    fig, axes = plt.subplots(1, len(predictions), figsize=(5.4 * len(predictions), 5.2),
                             squeeze=False)
    for ax, (method, found) in zip(axes[0], predictions.items()):
        counts = confusion_frame(found)
        totals = found.table["label"].value_counts().reindex(found.classes).to_numpy()
        rates = counts.to_numpy() / np.maximum(totals, 1)[:, None]
        image = ax.imshow(100 * rates, cmap="Greys", vmin=0, vmax=100)
        ticks = np.arange(len(found.classes))
        small = len(found.classes) > 16
        ax.set_xticks(ticks, found.classes, rotation=90, fontsize=5 if small else 8)
        ax.set_xlabel("predicted class")
        if ax is axes[0, 0]:  # the same classes in every panel: named once, on the left
            ax.set_yticks(ticks, found.classes, fontsize=5 if small else 8)
            ax.set_ylabel("true class")
        else:
            ax.set_yticks(ticks, [])
        correct = 100 * float(np.trace(counts.to_numpy())) / max(len(found.table), 1)
        ax.set_title(f"{method}: {correct:.1f} % correct")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.7, label="% of the true class's clips")
    fig.suptitle(title)
    return fig


def cluster_contingency(predictions: Predictions) -> pd.DataFrame:
    """Our unsupervised model's clusters (rows: the prototype each clip chose, those chosen by
    some test clip) by true class (columns): clip counts, with ``named``, the class the
    cluster is mapped to (the majority of its training clips), and ``purity``, the share in %
    of its test clips of that class. Largest clusters first."""
    table = predictions.table
    if "prototype" not in table:
        raise ValueError("cluster_contingency needs our model's predictions (prototypes)")
    counts = pd.crosstab(table["prototype"], pd.Categorical(table["label"], predictions.classes),
                         dropna=False)
    # a prototype no training clip chose is mapped to no class: its test clips count as wrong
    named = table.groupby("prototype")["predicted"].first().fillna(UNMAPPED)
    counts.columns = [str(c) for c in counts.columns]
    frame = counts.copy()
    frame["named"] = named.reindex(frame.index)
    same = [counts.at[k, name] if isinstance(name, str) and name in counts.columns else 0
            for k, name in zip(frame.index, frame["named"])]
    frame["purity"] = 100 * np.asarray(same) / counts.sum(axis=1).to_numpy()
    frame.index.name = "cluster"
    return frame.loc[counts.sum(axis=1).sort_values(ascending=False, kind="stable").index]


def contingency_figure(contingency: pd.DataFrame, title: str) -> plt.Figure:
    """The clusters-by-classes counts as an image, rows as :func:`cluster_contingency` orders
    them, columns in the classes' order."""
    counts = contingency.drop(columns=["named", "purity"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * counts.shape[1] + 3),
                                    max(3.5, 0.16 * counts.shape[0] + 2)))
    image = ax.imshow(counts.to_numpy(), cmap="Greys", aspect="auto")
    small = counts.shape[1] > 16
    ax.set_xticks(np.arange(counts.shape[1]), counts.columns, rotation=90,
                  fontsize=5 if small else 8)
    ax.set_yticks(np.arange(counts.shape[0]),
                  [f"{k} → {name}" for k, name in zip(counts.index, contingency["named"])],
                  fontsize=5 if counts.shape[0] > 16 else 8)
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster (prototype) → the class it is named after")
    fig.colorbar(image, ax=ax, shrink=0.7, label="test clips")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def clip_frames(predictions: Predictions, clip: int) -> torch.Tensor:
    """Test clip ``clip``'s log-Mels as a batch of one ``(1, T, F)``."""
    return torch.from_numpy(np.array(predictions.clips.frames(int(clip)), dtype=np.float32))[None]

