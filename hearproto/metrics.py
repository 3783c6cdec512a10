"""Evaluation metrics for prototype models: OA, AA, L_rec and the confusion matrix.

Every function accepts numpy arrays or torch tensors (any device, with or without grad) and
returns plain Python floats or numpy arrays. Shapes: N clips, K prototypes, C classes.

- The chosen prototype of a clip is ``argmin_k errors[n, k]`` (first index on ties).
- Supervised models: prototype k <-> class k (:func:`supervised_mapping`).
- Unsupervised models: each prototype takes the majority class of the *training* clips
  assigned to it (:func:`majority_mapping`); a prototype no training clip chose maps to -1,
  and every clip assigned to it counts as wrong.
- OA = percent of clips whose predicted class is the true class; AA = unweighted mean of the
  per-class recall over the classes present in ``labels`` (see :func:`average_accuracy`).
- L_rec = mean over clips of the chosen prototype's error; :func:`evaluate` reports it x100.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

__all__ = [
    "UNMAPPED",
    "assign_prototypes",
    "majority_mapping",
    "supervised_mapping",
    "predict",
    "overall_accuracy",
    "per_class_recall",
    "average_accuracy",
    "accuracies",
    "mean_chosen_error",
    "chosen_error",
    "confusion",
    "evaluate",
]

#: Class given to a prototype that no training clip was assigned to.
UNMAPPED = -1


def _numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of a numpy array, torch tensor or sequence."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _errors(errors: Any) -> np.ndarray:
    e = _numpy(errors)
    if e.ndim != 2 or e.shape[1] == 0:
        raise ValueError(f"errors must be (N, K) with K >= 1, got shape {e.shape}")
    return e.astype(np.float64, copy=False)


def _int_vector(x: Any, name: str) -> np.ndarray:
    a = _numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name} must hold integers")
    return a.astype(np.int64, copy=False)


def _labels(labels: Any, num_classes: int | None = None, n: int | None = None) -> np.ndarray:
    y = _int_vector(labels, "labels")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries, expected {n}")
    if y.size and y.min() < 0:
        raise ValueError("labels must be >= 0")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} out of range for num_classes={num_classes}")
    return y


def _pair(labels: Any, predictions: Any, num_classes: int | None = None):
    y = _labels(labels, num_classes)
    p = _int_vector(predictions, "predictions")
    if p.shape != y.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in length")
    if y.size == 0:
        raise ValueError("no clips to evaluate")
    if p.min() < UNMAPPED:
        raise ValueError("predictions must be >= -1 (-1 = unmapped prototype)")
    return y, p


def assign_prototypes(errors: Any) -> np.ndarray:
    """Chosen prototype per clip: errors ``(N, K)`` -> ``(N,)`` int64, ``argmin`` over K.

    Ties go to the first (smallest) prototype index.
    """
    return np.argmin(_errors(errors), axis=1).astype(np.int64)


def majority_mapping(
    train_assignments: Any, train_labels: Any, num_prototypes: int, num_classes: int
) -> np.ndarray:
    """Class of each prototype, ``(K,)`` int64, from the training clips assigned to it.

    ``train_assignments`` ``(N,)`` (prototype per training clip, e.g. from
    :func:`assign_prototypes`) and ``train_labels`` ``(N,)``. Each prototype takes the majority
    class of its clips; ties go to the smallest class index. A prototype that no training clip
    chose gets ``-1`` (:data:`UNMAPPED`): :func:`predict` then outputs -1 for the clips assigned
    to it, and every metric counts those clips as wrong.
    """
    a = _int_vector(train_assignments, "train_assignments")
    y = _labels(train_labels, num_classes, n=a.shape[0])
    if a.size and (a.min() < 0 or a.max() >= num_prototypes):
        raise ValueError(f"train_assignments out of range for num_prototypes={num_prototypes}")
    counts = np.zeros((num_prototypes, num_classes), dtype=np.int64)
    np.add.at(counts, (a, y), 1)
    mapping = np.argmax(counts, axis=1).astype(np.int64)  # first max = smallest class
    mapping[counts.sum(axis=1) == 0] = UNMAPPED
    return mapping


def supervised_mapping(num_prototypes: int) -> np.ndarray:
    """Identity mapping ``(K,)``: prototype k <-> class k (supervised training)."""
    return np.arange(num_prototypes, dtype=np.int64)


def predict(errors: Any, mapping: Any) -> np.ndarray:
    """Class predictions ``(N,)``: ``mapping[argmin_k errors]``; -1 on an unmapped prototype."""
    e = _errors(errors)
    m = _int_vector(mapping, "mapping")
    if m.shape[0] != e.shape[1]:
        raise ValueError(f"mapping has {m.shape[0]} entries, errors has K={e.shape[1]}")
    return m[assign_prototypes(e)]


def overall_accuracy(labels: Any, predictions: Any) -> float:
    """OA in percent: share of clips with ``predictions == labels`` (both ``(N,)``)."""
    y, p = _pair(labels, predictions)
    return float(np.mean(y == p) * 100.0)


def per_class_recall(labels: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """Recall of each class in percent, ``(C,)``; NaN for a class with no clip in ``labels``.

    Clips predicted -1 (unmapped prototype) count as misses for their true class.
    """
    y, p = _pair(labels, predictions, num_classes)
    support = np.bincount(y, minlength=num_classes)
    hits = np.bincount(y[y == p], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1) * 100.0, np.nan)
    return recall.astype(np.float64)


def average_accuracy(labels: Any, predictions: Any, num_classes: int) -> float:
    """AA in percent: unweighted mean of the per-class recall (labels, predictions ``(N,)``).

    The mean runs over the classes PRESENT in ``labels`` only: a class with no clip in this
    split has no defined recall and is left out (so a small split is not penalised for what it
    does not contain). A class that is present but never predicted correctly counts 0 %. With
    every class present this equals sklearn's ``balanced_accuracy_score`` (x100).
    """
    return float(np.nanmean(per_class_recall(labels, predictions, num_classes)))


def accuracies(labels: Any, predictions: Any, num_classes: int) -> dict[str, float]:
    """``{"OA", "AA"}`` in percent of predictions ``(N,)`` (-1: no class) against labels."""
    return {"OA": overall_accuracy(labels, predictions),
            "AA": average_accuracy(labels, predictions, num_classes)}


def mean_chosen_error(errors: Any) -> float:
    """Mean over clips of ``min_k errors[n, k]``: the paper's L_rec of the chosen prototype.

    errors ``(N, K)``; returned unscaled (``evaluate`` reports it x100).
    """
    e = _errors(errors)
    if e.shape[0] == 0:
        raise ValueError("no clips to evaluate")
    return float(e.min(axis=1).mean())


def chosen_error(errors: Any, labels: Any) -> float:
    """Mean of ``errors[n, labels[n]]``: reconstruction by the TRUE class's prototype.

    For supervised models (prototype k <-> class k); unlike :func:`mean_chosen_error` it does not
    take the best prototype. errors ``(N, K)``, labels ``(N,)`` in ``[0, K)``; unscaled.
    """
    e = _errors(errors)
    y = _labels(labels, e.shape[1], n=e.shape[0])
    if y.size == 0:
        raise ValueError("no clips to evaluate")
    return float(e[np.arange(e.shape[0]), y].mean())


def confusion(labels: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """Confusion counts ``(C, C)`` int64: rows = true class, columns = predicted class.

    A prediction of -1 (clip assigned to an unmapped prototype) is counted in no column, so a
    row may sum to less than the class's number of clips; the shortfall is that class's
    unmapped clips. (OA/AA still count those clips as wrong.)
    """
    y, p = _pair(labels, predictions, num_classes)
    if p.max() >= num_classes:
        raise ValueError(f"prediction {int(p.max())} out of range for num_classes={num_classes}")
    cm = confusion_matrix(y, p, labels=np.arange(num_classes))  # drops predictions not in labels
    return cm.astype(np.int64)


def evaluate(errors: Any, labels: Any, mapping: Any, num_classes: int) -> dict[str, Any]:
    """All metrics of one split. errors ``(N, K)``, labels ``(N,)``, mapping ``(K,)``.

    Returns ``{"OA", "AA"}`` in percent (floats), ``"L_rec"`` = :func:`mean_chosen_error`
    **x100** (as the paper's tables, which print e.g. 2.6 for mean squared errors of log-Mels
    scaled to [0, 1]), ``"confusion"`` ``(C, C)``, ``"assignments"`` ``(N,)`` chosen prototype
    per clip and ``"predictions"`` ``(N,)`` (-1 for clips on an unmapped prototype).
    """
    e = _errors(errors)
    y = _labels(labels, num_classes, n=e.shape[0])
    assignments = assign_prototypes(e)
    predictions = predict(e, mapping)
    return {
        **accuracies(y, predictions, num_classes),
        "L_rec": mean_chosen_error(e) * 100.0,
        "confusion": confusion(y, predictions, num_classes),
        "assignments": assignments,
        "predictions": predictions,
    }
