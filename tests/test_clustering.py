"""Clusters for the unsupervised initialisation: K-means blind to level and pitch (distances
against a direct computation, clusters of timbre recovered where plain K-means splits by
register) and Ward clusters of cepstral statistics (features against a hand-written DCT,
clusters of spectral envelope recovered where plain K-means splits by level)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from hearproto.frontend import PRESETS
from hearproto.clustering import (cepstral_clusters, cepstral_features, pitch_factors,
                                  pitch_invariant_distances, pitch_invariant_kmeans)
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


def test_cepstral_features_are_standardised_dct_coefficients():
    rng = np.random.default_rng(0)
    means, stds = rng.normal(size=(6, 16)), rng.uniform(0.1, 1, size=(6, 16))
    n = np.arange(16)
    # DCT-II, orthonormal: row q is sqrt(2/F) cos(pi q (2n + 1) / 2F), row 0 scaled by 1/sqrt 2
    basis = np.sqrt(2 / 16) * np.cos(np.pi * n[:, None] * (2 * n[None] + 1) / 32)
    basis[0] /= np.sqrt(2)
    raw = np.hstack([means @ basis[1:5].T, stds @ basis[:5].T])
    expected = (raw - raw.mean(0)) / raw.std(0)
    np.testing.assert_allclose(cepstral_features(means, stds, coefficients=5), expected,
                               atol=1e-10)
    # the level (coefficient 0 of the mean) is left out: an offset per clip changes nothing
    np.testing.assert_allclose(cepstral_features(means + rng.normal(size=(6, 1)), stds, 5),
                               expected, atol=1e-10)
    with pytest.raises(ValueError, match="coefficients"):
        cepstral_features(means, stds, coefficients=17)
    with pytest.raises(ValueError, match="both be"):
        cepstral_features(means, stds[:, :8])


def test_cepstral_clusters_follow_the_envelope_not_the_level():
    # three smooth spectral envelopes ("voices"), each clip at a random level and with noise
    rng = np.random.default_rng(0)
    f = np.linspace(0, 1, 128)
    envelopes = [0.1 * np.cos(2 * np.pi * f * m + phase) for m, phase in ((1, 0), (2, 1), (3, 2))]
    means, stds, labels = [], [], []
    for label, envelope in enumerate(envelopes):
        for _ in range(12):
            means.append(envelope + rng.uniform(-0.3, 0.3) + rng.normal(0, 0.01, 128))
            stds.append(0.05 + rng.uniform(0, 0.01, 128))
            labels.append(label)
    means, stds, labels = np.stack(means), np.stack(stds), np.array(labels)
    plain = KMeans(3, n_init=10, random_state=0).fit_predict(means)
    assert adjusted_rand_score(labels, plain) < 0.5  # the levels dominate plain K-means
    clusters = cepstral_clusters(means, stds, 3)
    assert adjusted_rand_score(labels, clusters) == 1.0
    # many clips: K-means on the same features instead of Ward, same clusters here
    many = cepstral_clusters(means, stds, 3, ward_max_clips=10)
    assert adjusted_rand_score(labels, many) == 1.0
    with pytest.raises(ValueError, match="at least 4 clips"):
        cepstral_clusters(means[:3], stds[:3], 4)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="init must be"):
        pitch_invariant_kmeans(torch.rand(4, 128), 2, BINS, init=torch.rand(2, 64))
    with pytest.raises(ValueError, match="N >= k"):
        pitch_invariant_kmeans(torch.rand(4, 128), 5, BINS)
    with pytest.raises(ValueError, match="semitones"):
        pitch_factors(-1)
