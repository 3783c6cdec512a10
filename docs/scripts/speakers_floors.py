"""How hard is the built-in ``speakers`` data set? Its floors, measured on a fresh render.

    python docs/scripts/speakers_floors.py [--limit-per-class N] [--seed S] [--keep]

Generates the data set into a temporary data home (``HEARPROTO_DATA``, so the default cache
is left alone), timing the render and the recording conditions (wall clock, and the CPU time
of every process), prepares it (log-Mel features, 70/10/20 split) and prints the test OA of
the linear probe and of K-means (K = speakers, the paper's majority mapping) on time-averaged
log-Mels, as ``hearproto.runner.tables`` scores its floors, and of a 1-NN on the same frames
with each clip's mean level removed; then the training OA of the clusters the unsupervised
model starts from (Ward on cepstral statistics, ``hearproto.clustering.cepstral_clusters``),
chance, the clip count and the durations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.neighbors import KNeighborsClassifier

from hearproto.baselines.probe import kmeans_clustering, linear_probe, mean_features
from hearproto.clustering import cepstral_clusters
from hearproto.data import prepare_dataset
from hearproto.data.dataset import clip_statistics
from hearproto.data.registry import default_builtin_root, ensure_generated
from hearproto.metrics import majority_mapping


def level_normalised(x: np.ndarray) -> np.ndarray:
    """Each row ``(N, F)`` less its own mean: blind to the clip's level."""
    return x - x.mean(axis=1, keepdims=True)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def floors(limit_per_class: int | None, seed: int) -> dict[str, float]:
    """The figures, by name, of the data set rendered from ``seed`` (``limit_per_class``
    clips per speaker; None: the full set) into the data home."""
    start, cpu = time.perf_counter(), cpu_seconds()
    ensure_generated("speakers", default_builtin_root("speakers", limit_per_class, seed),
                     limit_per_class, seed, progress=False)
    generation, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    data = prepare_dataset("speakers", limit_per_class=limit_per_class, seed=seed,
                           progress=False)
    features = time.perf_counter() - start - generation
    train, test = data.split("train", None), data.split("test", None)
    x_train, y_train = mean_features(train)
    x_test, y_test = mean_features(test)
    nearest = KNeighborsClassifier(1).fit(level_normalised(x_train), y_train)
    clips = pd.read_csv(Path(data.root) / "clips.csv")
    means, stds = clip_statistics(train)
    clusters = cepstral_clusters(means, stds, train.num_classes)
    mapping = majority_mapping(clusters, y_train, train.num_classes, train.num_classes)
    return {
        "speakers": len(data.classes),
        "clips": len(data.table),
        "test clips": len(test),
        "seconds min": float(clips["seconds"].min()),
        "seconds median": float(clips["seconds"].median()),
        "seconds max": float(clips["seconds"].max()),
        "generation: render + recording conditions, wall (s)": generation,
        "generation, CPU of every process (s)": cpu,
        "log-Mel features and split (s)": features,
        "chance (%)": 100 / len(data.classes),
        "linear probe OA (%)": linear_probe(train, test)["OA"],
        "K-means OA (%)": kmeans_clustering(train, test, seed=0)["OA"],
        "1-NN level-normalised OA (%)": 100 * float(np.mean(
            nearest.predict(level_normalised(x_test)) == y_test)),
        "Ward on cepstral statistics, training OA (%)": 100 * float(np.mean(
            mapping[clusters] == y_train)),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data home")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="spk-")
    os.environ["HEARPROTO_DATA"] = home
    try:
        for name, value in floors(args.limit_per_class, args.seed).items():
            print(f"{name}: {value:.1f}" if isinstance(value, float) else f"{name}: {value}")
    finally:
        if args.keep:
            print(f"data home: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
