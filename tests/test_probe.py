"""The references on time-averaged log-Mels separate what is separable, and only that."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hearproto.frontend import PRESETS
from hearproto.baselines import kmeans_clustering, linear_probe, mean_features
from hearproto.data.cache import FeatureStore
from hearproto.data.dataset import ClipDataset


def synthetic(levels: dict[str, float], per_class: int, split: str, seed: int,
              classes: list[str] | None = None, noise: float = 0.02) -> ClipDataset:
    """Clips whose frames sit around a class level (plus noise); ``classes``: the class list,
    if it holds classes without clips here."""
    rng = np.random.default_rng(seed)
    frames, rows, start = [], [], 0
    for label, level in levels.items():
        for i in range(per_class):
            clip = level + noise * rng.standard_normal((10, 128))
            frames.append(clip)
            rows.append({"path": f"{label}/{i}", "label": label, "start": start, "frames": 10})
            start += 10
    table = pd.DataFrame(rows)
    store = FeatureStore(None, table, np.concatenate(frames).astype(np.float32))
    return ClipDataset(store, table.assign(split=split), classes or sorted(levels),
                       PRESETS["speakers"], "synthetic", split)


def test_mean_features():
    data = synthetic({"a": 0.2, "b": 0.7}, 3, "train", 0)
    x, y = mean_features(data)
    assert x.shape == (6, 128) and list(y) == [0, 0, 0, 1, 1, 1]
    assert x[:3].mean() == pytest.approx(0.2, abs=0.01)


def test_separable_classes_are_found_by_both():
    levels = {"a": 0.2, "b": 0.5, "c": 0.8}
    train, test = synthetic(levels, 8, "train", 0), synthetic(levels, 4, "test", 1)
    assert linear_probe(train, test) == {"OA": 100.0, "AA": 100.0}
    assert kmeans_clustering(train, test) == {"OA": 100.0, "AA": 100.0}


def test_indistinguishable_classes_stay_near_chance():
    levels = {"a": 0.5, "b": 0.5}
    train, test = synthetic(levels, 40, "train", 0), synthetic(levels, 40, "test", 1)
    assert linear_probe(train, test)["OA"] < 75


def test_the_probe_scores_a_test_split_without_some_classes_quietly():
    """A held-out lineage lacks some classes: AA runs over the classes present in the test
    split, as sklearn's balanced accuracy does, without its warning about the others."""
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    levels = {"a": 0.30, "b": 0.50, "c": 0.52}  # b and c overlap: some b go to c
    train = synthetic(levels, 20, "train", 0, noise=0.3)
    test = synthetic({"a": 0.30, "b": 0.50}, 20, "test", 1, classes=["a", "b", "c"], noise=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = linear_probe(train, test)
    (x_train, y_train), (x_test, y_test) = mean_features(train), mean_features(test)
    predicted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
        x_train, y_train).predict(x_test)
    assert 2 in predicted  # the case in question: a class predicted that the split lacks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = 100 * balanced_accuracy_score(y_test, predicted)
    assert scores["OA"] == pytest.approx(100 * accuracy_score(y_test, predicted))
    assert scores["AA"] == pytest.approx(expected)
