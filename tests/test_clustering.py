"""K-means blind to level and pitch: distances against a direct computation, and clusters of
timbre recovered where plain K-means splits by register."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from hearproto.audio import PRESETS
from hearproto.clustering import pitch_factors, pitch_invariant_distances, pitch_invariant_kmeans
from hearproto.transforms import mel_bin_constants, pitch_shift

BINS = mel_bin_constants(PRESETS["instruments"])
# three timbres: the amplitudes of the first 12 harmonics
TIMBRES = [1.0 / np.arange(1, 13), np.where(np.arange(1, 13) % 2, 1.0, 0.05) / np.arange(1, 13),
           np.exp(-0.5 * ((np.arange(1, 13) - 5) / 1.5) ** 2)]


def note(amplitudes: np.ndarray, f0: float, level: float) -> np.ndarray:
    """A time-averaged log-Mel-like frame: harmonics of f0 as bumps on the log-frequency axis
    of the mel bins' centres, in scaled log power, offset by ``level``."""
    centres = BINS.centres_hz.numpy()
    power = np.full(len(centres), 1e-6)
    for h, a in enumerate(amplitudes, start=1):
        power += a ** 2 * np.exp(-0.5 * (np.log(centres / (h * f0)) / 0.03) ** 2)
    return (np.log10(power) + 10) / 17 + level


def notes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x, labels = [], []
    for label, amplitudes in enumerate(TIMBRES):
        for semitone in range(-6, 7, 2):
            for _ in range(2):
                f0 = 220.0 * 2 ** (semitone / 12)
                x.append(note(amplitudes, f0, rng.uniform(-0.05, 0.05)))
                labels.append(label)
    return np.stack(x), np.array(labels)


def test_distances_are_the_variance_of_the_shifted_residual():
    torch.manual_seed(0)
    x, centres = torch.rand(5, 128, dtype=torch.float64), torch.rand(3, 128, dtype=torch.float64)
    factors = pitch_factors(3)
    assert len(factors) == 7 and factors[3] == 1 and factors[-1] == pytest.approx(2 ** 0.25)
    bins = BINS.to(dtype=torch.float64)
    got = pitch_invariant_distances(x, centres, factors, bins, chunk=2)
    for j, s in enumerate(factors):
        shifted = pitch_shift(centres, torch.full((1, 3, 1), float(s), dtype=torch.float64),
                              bins)[0, :, 0]  # (K, F)
        expected = ((x[:, None] - shifted[None]) - (x[:, None] - shifted[None]).mean(-1, keepdim=True)
                    ).pow(2).mean(-1)
        torch.testing.assert_close(got[:, :, j], expected)
    # a constant level offset costs nothing
    torch.testing.assert_close(pitch_invariant_distances(x + 0.3, centres, factors, bins), got)


def test_clusters_follow_timbre_across_pitches():
    x, labels = notes()
    centred = x - x.mean(1, keepdims=True)
    start = KMeans(3, n_init=10, random_state=0).fit(centred).cluster_centers_
    plain = KMeans(3, n_init=10, random_state=0).fit_predict(centred)
    assert adjusted_rand_score(labels, plain) < 0.5  # plain K-means splits by register
    centres, clusters, factors = pitch_invariant_kmeans(torch.from_numpy(centred), 3, BINS,
                                                        init=torch.from_numpy(start))
    assert adjusted_rand_score(labels, clusters.numpy()) == 1.0
    assert centres.shape == (3, 128) and factors.shape == (len(x),)
    # within a timbre, the factors found order the notes by pitch (2 notes per pitch)
    for k in range(3):
        members = (clusters == k).numpy()
        assert np.all(np.diff(factors[members].numpy()[::2]) > 0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="init must be"):
        pitch_invariant_kmeans(torch.rand(4, 128), 2, BINS, init=torch.rand(2, 64))
    with pytest.raises(ValueError, match="N >= k"):
        pitch_invariant_kmeans(torch.rand(4, 128), 5, BINS)
    with pytest.raises(ValueError, match="semitones"):
        pitch_factors(-1)
