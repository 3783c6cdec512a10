"""The references on time-averaged log-Mels separate what is separable, and only that."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hearproto.frontend import PRESETS
from hearproto.baselines import kmeans_clustering, linear_probe, mean_features
from hearproto.data.cache import FeatureStore
from hearproto.data.dataset import ClipDataset


def synthetic(levels: dict[str, float], per_class: int, split: str, seed: int) -> ClipDataset:
    """Clips whose frames sit around a class level (plus noise)."""
    rng = np.random.default_rng(seed)
    frames, rows, start = [], [], 0
    for label, level in levels.items():
        for i in range(per_class):
            clip = level + 0.02 * rng.standard_normal((10, 128))
            frames.append(clip)
            rows.append({"path": f"{label}/{i}", "label": label, "start": start, "frames": 10})
            start += 10
    table = pd.DataFrame(rows)
    store = FeatureStore(None, table, np.concatenate(frames).astype(np.float32))
    return ClipDataset(store, table.assign(split=split), sorted(levels), PRESETS["speakers"],
                       "synthetic", split)


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
