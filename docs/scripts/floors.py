"""How hard is a dataset? Its floors on one split, from the features already cached.

    .venv/bin/python docs/scripts/floors.py instruments [--split heldout-freepats] [--root DIR]

Prints the test OA of the linear probe and of K-means (K = classes, the paper's majority
mapping) on each clip's time-averaged log-Mel frame, as ``hearproto.runner.tables`` scores its
floors, and of a 1-NN on the same frames with each clip's level removed (a test note with a
twin in training scores here), with chance and the split's sizes.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from hearproto.baselines.probe import kmeans_clustering, linear_probe, mean_features
from hearproto.data import prepare_dataset


def level_free(x: np.ndarray) -> np.ndarray:
    """Each row ``(N, F)`` less its own mean: blind to the clip's level."""
    return x - x.mean(axis=1, keepdims=True)


def floors(name: str, split: str = "random", root: str | None = None) -> dict[str, float]:
    data = prepare_dataset(name, root=root, split=split, progress=False)
    train, test = data.split("train", None), data.split("test", None)
    x_train, y_train = mean_features(train)
    x_test, y_test = mean_features(test)
    nearest = KNeighborsClassifier(1).fit(level_free(x_train), y_train)
    return {
        "classes": len(data.classes), "train clips": len(train), "test clips": len(test),
        "chance (%)": 100 / len(data.classes),
        "linear probe OA (%)": linear_probe(train, test)["OA"],
        "K-means OA (%)": kmeans_clustering(train, test, seed=0)["OA"],
        "1-NN level-free OA (%)": 100 * float(np.mean(
            nearest.predict(level_free(x_test)) == y_test)),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--split", default="random")
    parser.add_argument("--root")
    args = parser.parse_args()
    for key, value in floors(args.name, args.split, args.root).items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
