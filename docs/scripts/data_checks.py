"""The data checks of docs/training.md: how far simple references get on each dataset, and
whether two built-in instruments share their samples.

    python docs/scripts/data_checks.py [--samples]

Prints, per dataset (instruments, speakers, librispeech-mini beside the repository), the
test OA of 1-NN and 5-NN on time-averaged log-Mels, raw and with each clip's mean level
removed, of K-means (K = classes) with the majority mapping, and of the linear probe. With
``--samples``, renders every pair of instruments at three shared keys and prints the ten
most similar magnitude spectra (1.0 would be the same sample).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from hearproto.baselines.probe import kmeans_scores, linear_probe, mean_features
from hearproto.data import prepare_dataset

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
