"""How hard is a dataset? A linear probe on time-averaged log-Mels.

Each clip becomes the mean of its log-Mel frames (a 128-d timbre summary, no temporal
information); a standardised logistic regression is fitted on the training split and scored
on another split. It is the floor any model of the paper should clear.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hearproto.data.dataset import ClipDataset

__all__ = ["mean_features", "linear_probe"]


def mean_features(dataset: ClipDataset) -> tuple[np.ndarray, np.ndarray]:
    """Time-averaged log-Mel of every whole clip. Returns ``(N, F)`` features, ``(N,)`` labels."""
    features = np.stack([np.asarray(dataset.frames(i)).mean(axis=0) for i in range(len(dataset))])
    return features, dataset.labels.numpy()


def linear_probe(train: ClipDataset, test: ClipDataset, max_iter: int = 5000) -> dict[str, float]:
    """Fit on ``train``, score on ``test``: ``{"OA", "AA"}`` in percent (AA: mean per-class
    recall over the classes present in ``test``)."""
    if train.classes != test.classes:
        raise ValueError("train and test must share their class list")
    x_train, y_train = mean_features(train)
    x_test, y_test = mean_features(test)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    return {"OA": 100 * accuracy_score(y_test, predicted),
            "AA": 100 * balanced_accuracy_score(y_test, predicted)}
