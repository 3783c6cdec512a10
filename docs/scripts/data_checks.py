"""The data checks of docs/training.md: how far simple references get on each dataset, and
whether two built-in instruments share their samples.

    python docs/scripts/data_checks.py [--samples]

Prints, per dataset (instruments, speakers, librispeech-mini beside the repository), the
test OA of 1-NN and 5-NN on time-averaged log-Mels, raw and with each clip's mean level
removed, of K-means (K = classes) with the majority mapping, of the linear probe, and of
K-means blind to level and pitch (three seeds). With
``--samples``, renders every pair of instruments at three shared keys and prints the ten
most similar magnitude spectra (1.0 would be the same sample).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.neighbors import KNeighborsClassifier

from hearproto.baselines.probe import kmeans_scores, linear_probe, mean_features
from hearproto.clustering import nearest_centres, pitch_factors, pitch_invariant_kmeans
from hearproto.data import prepare_dataset
from hearproto.metrics import majority_mapping
from hearproto.transforms import mel_bin_constants

MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "librispeech-mini"
DATASETS = {
    "instruments": {"name": "instruments"},
    "speakers": {"name": "speakers"},
    "librispeech-mini": {"name": "librispeech", "root": str(MINI), "n_speakers": 10},
}


def level_normalised(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=1, keepdims=True)


def references(label: str, spec: dict) -> None:
    data = prepare_dataset(progress=False, **spec)
    train, test = data.split("train", None), data.split("test", None)
    x_train, y_train = mean_features(train)
    x_test, y_test = mean_features(test)
    for name, transform in (("raw", lambda x: x), ("level-normalised", level_normalised)):
        for k in (1, 5):
            knn = KNeighborsClassifier(k).fit(transform(x_train), y_train)
            print(f"{label}: {k}-NN, {name}: {100 * np.mean(knn.predict(transform(x_test)) == y_test):.1f}")
        scores = kmeans_scores(transform(x_train), y_train, transform(x_test), y_test,
                               train.num_classes)
        print(f"{label}: K-means, {name}: {scores['OA']:.1f}")
    print(f"{label}: linear probe: {linear_probe(train, test)['OA']:.1f}")
    for seed in range(3):
        print(f"{label}: pitch-invariant K-means, seed {seed}: "
              f"{pitch_invariant_scores(data, x_train, y_train, x_test, y_test, seed):.1f}")


def pitch_invariant_scores(data, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                           y_test: np.ndarray, seed: int) -> float:
    """Test OA of K-means blind to level and to pitch shifts of up to an octave (the
    ``pitch-kmeans`` initialisation), with the majority mapping."""
    k = len(data.classes)
    train, test = (torch.from_numpy(level_normalised(x)) for x in (x_train, x_test))
    start = KMeans(k, n_init=10, random_state=seed).fit(train.numpy()).cluster_centers_
    bins = mel_bin_constants(data.frontend)
    centres, clusters, _ = pitch_invariant_kmeans(train, k, bins, seed=seed,
                                                  init=torch.from_numpy(start))
    mapping = majority_mapping(clusters.numpy(), y_train, k, k)
    _, nearest, _ = nearest_centres(test.float(), centres, pitch_factors(12).float(),
                                    bins.to(dtype=torch.float32))
    return 100 * float(np.mean(mapping[nearest.numpy()] == y_test))


def shared_samples(top: int = 10) -> None:
    from hearproto.data import instruments

    synth, sfid = instruments._open_synth()
    rows = []
    for a, b in itertools.combinations(instruments.CLASSES, 2):
        spec_a, spec_b = instruments.CLASSES[a], instruments.CLASSES[b]
        low, high = max(spec_a.low, spec_b.low), min(spec_a.high, spec_b.high)
        if low > high:
            continue
        similarities = []
        for key in sorted({low, (low + high) // 2, high}):
            spectra = [np.abs(np.fft.rfft(np.asarray(
                instruments._render_note(synth, sfid, spec, key, 100))[:instruments.SAMPLE_RATE]))
                for spec in (spec_a, spec_b)]
            similarities.append(spectra[0] @ spectra[1] / (np.linalg.norm(spectra[0])
                                                           * np.linalg.norm(spectra[1]) + 1e-12))
        rows.append((min(similarities), a, b))
    for similarity, a, b in sorted(rows, reverse=True)[:top]:
        print(f"{similarity:.4f}  {a} / {b}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", action="store_true", help="also compare the instruments")
    args = parser.parse_args()
    for label, spec in DATASETS.items():
        references(label, spec)
    if args.samples:
        shared_samples()
