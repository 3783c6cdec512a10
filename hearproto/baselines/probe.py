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
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hearproto.data.dataset import ClipDataset
from hearproto.metrics import accuracies, majority_mapping

__all__ = ["mean_features", "linear_probe", "kmeans_scores", "kmeans_clustering"]


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
    # AA over the classes present in test, as for every method: a held-out lineage lacks some
    # classes, which sklearn's balanced accuracy would leave out too, with a warning each time
    return accuracies(y_test, model.predict(x_test), train.num_classes)


def kmeans_scores(train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray,
                  labels: np.ndarray, num_classes: int, k: int | None = None,
                  seed: int = 0) -> dict[str, float]:
    """K-means (``k`` clusters, default ``num_classes``) on ``train_features`` ``(N, D)``; each
    cluster takes the majority class of its training clips (the paper's mapping); ``features``
    ``(M, D)`` go to the nearest centre. ``{"OA", "AA"}`` in percent on ``labels`` ``(M,)``."""
    k = k or num_classes
    kmeans = KMeans(k, n_init=10, random_state=seed).fit(train_features)
    mapping = majority_mapping(kmeans.labels_, train_labels, k, num_classes)
    predicted = mapping[kmeans.predict(features)]  # -1 for a cluster without training clips
    return accuracies(labels, predicted, num_classes)


def kmeans_clustering(train: ClipDataset, test: ClipDataset, k: int | None = None,
                      seed: int = 0) -> dict[str, float]:
    """K-means (``k`` clusters, default: the number of classes) on the training clips' mean
    frames, scored by :func:`kmeans_scores`. ``{"OA", "AA"}`` in percent."""
    x_train, y_train = mean_features(train)
    x_test, y_test = mean_features(test)
    return kmeans_scores(x_train, y_train, x_test, y_test, train.num_classes, k, seed)
