"""How hard is a dataset? References on time-averaged log-Mels.

Each clip becomes the mean of its log-Mel frames (a 128-d timbre summary, no temporal
information). A standardised logistic regression fitted on the training split (the
supervised floor) and K-means with the majority mapping of the paper (the unsupervised floor)
are scored on another split.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hearproto.data.dataset import ClipDataset
from hearproto.metrics import evaluate, majority_mapping

__all__ = ["mean_features", "linear_probe", "kmeans_clustering"]


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


def kmeans_clustering(train: ClipDataset, test: ClipDataset, k: int | None = None,
                      seed: int = 0) -> dict[str, float]:
    """K-means (``k`` clusters, default: the number of classes) on the training clips' mean
    frames; each cluster takes the majority class of its training clips; test clips go to the
    nearest centre. ``{"OA", "AA"}`` in percent."""
    x_train, y_train = mean_features(train)
    x_test, y_test = mean_features(test)
    k = k or train.num_classes
    kmeans = KMeans(k, n_init=10, random_state=seed).fit(x_train)
    mapping = majority_mapping(kmeans.labels_, y_train, k, train.num_classes)
    distances = ((x_test[:, None, :] - kmeans.cluster_centers_[None]) ** 2).mean(-1)
    scores = evaluate(distances, y_test, mapping, train.num_classes)
    return {"OA": scores["OA"], "AA": scores["AA"]}
