"""Clusters of clips for the unsupervised initialisation.

``cepstral_clusters``: Ward clustering of each clip's standardised cepstral statistics (the
DCT of its time-averaged log-Mel, without the level coefficient, and of its per-bin standard
deviation over time): the classic timbre description of speaker and instrument clustering.

``pitch_invariant_kmeans``: K-means under the model's own invariances, level and pitch.

A prototype explains a clip up to a gain and a pitch shift, so the distance between a
time-averaged clip ``x`` and a centre ``c`` is taken as the smallest, over a grid of pitch
factors ``s``, of the variance over mel bins of ``x - shift(c, s)`` (the variance ignores a
constant level offset). Clips of one instrument played at different pitches then fall into
one cluster, where plain K-means splits them by register.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.fft import dct
from torch import Tensor

from hearproto.transforms import MelBins, pitch_shift

__all__ = ["cepstral_clusters", "cepstral_features", "nearest_centres", "pitch_factors",
           "pitch_invariant_distances", "pitch_invariant_kmeans"]


def cepstral_features(means: np.ndarray, stds: np.ndarray, coefficients: int = 20
                      ) -> np.ndarray:
    """``(N, 2 * coefficients - 1)`` features of clips given their log-Mel ``means`` and
    ``stds`` over time ``(N, F)``: cepstral coefficients 1 .. coefficients-1 of the mean
    (coefficient 0 is the level, left out) and 0 .. coefficients-1 of the deviation, each
    standardised over the clips (a constant feature stays 0)."""
    if means.shape != stds.shape or means.ndim != 2:
        raise ValueError(f"means and stds must both be (N, F), got {means.shape} and {stds.shape}")
    if not 1 < coefficients <= means.shape[1]:
        raise ValueError(f"coefficients must be in 2..{means.shape[1]}, got {coefficients}")
    features = np.hstack([dct(means, axis=1, norm="ortho")[:, 1:coefficients],
                          dct(stds, axis=1, norm="ortho")[:, :coefficients]])
    spread = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


#: Ward linkage keeps all N (N - 1) / 2 distances: 0.95 GB and 4 s for 10,000 clips, 3.5 GB
#: for 20,000. Above this many clips K-means on the same features is used instead.
WARD_MAX_CLIPS = 20_000


def cepstral_clusters(means: np.ndarray, stds: np.ndarray, k: int, coefficients: int = 20,
                      seed: int = 0, ward_max_clips: int = WARD_MAX_CLIPS) -> np.ndarray:
    """Each clip's cluster ``(N,)`` in ``0..k-1``: Ward clustering of
    :func:`cepstral_features` (deterministic), or K-means from ``seed`` when N is above
    ``ward_max_clips`` (on speakers, Ward 80.5 % and K-means 74.2 %, docs/training.md)."""
    from sklearn.cluster import AgglomerativeClustering, KMeans  # imported when clustering

    if len(means) < k:
        raise ValueError(f"{k} clusters need at least {k} clips, got {len(means)}")
    features = cepstral_features(means, stds, coefficients)
    if len(features) > ward_max_clips:
        return KMeans(k, n_init=10, random_state=seed).fit_predict(features)
    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(features)


def pitch_factors(semitones: int) -> Tensor:
    """The grid of pitch factors ``2^(j/12)``, j = -semitones..semitones. ``(2 semitones + 1,)``"""
    if semitones < 0:
        raise ValueError(f"semitones must be at least 0, got {semitones}")
    return 2.0 ** (torch.arange(-semitones, semitones + 1, dtype=torch.float64) / 12)


def _shifted(rows: Tensor, factors: Tensor, constants: MelBins) -> Tensor:
    """Every row ``(N, F)`` shifted by every factor ``(J,)``: ``(N, J, F)``."""
    grid = factors.to(rows.dtype)[None, :, None].expand(len(rows), -1, 1)  # (N, J, T=1)
    return pitch_shift(rows[:, None, None, :], grid, constants)[:, :, 0]


def pitch_invariant_distances(x: Tensor, centres: Tensor, factors: Tensor,
                              constants: MelBins, chunk: int = 256) -> Tensor:
    """Level-free squared distances of clips ``x`` ``(N, F)`` to the centres ``(K, F)``
    shifted by each factor: ``(N, K, J)``, the variance over F of ``x - shift(c_k, s_j)``."""
    shifted = _shifted(centres, factors, constants)  # (K, J, F)
    out = []
    for part in x.split(chunk):
        out.append((part[:, None, None, :] - shifted[None]).var(dim=-1, unbiased=False))
    return torch.cat(out)


def nearest_centres(x: Tensor, centres: Tensor, factors: Tensor, constants: MelBins
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """For each clip of ``x`` ``(N, F)``, the nearest centre under
    :func:`pitch_invariant_distances`: its distance, its index and the index of the pitch
    factor that reached it, each ``(N,)``."""
    distance, best = pitch_invariant_distances(x, centres, factors, constants).flatten(1).min(1)
    return distance, best // len(factors), best % len(factors)


def _seed_centres(x: Tensor, k: int, factors: Tensor, constants: MelBins,
                  generator: torch.Generator) -> Tensor:
    """k-means++ seeding under the pitch-invariant distance: ``(k, F)`` clips of ``x``."""
    chosen = [int(torch.randint(len(x), (), generator=generator))]
    nearest = nearest_centres(x, x[chosen], factors, constants)[0]
    while len(chosen) < k:
        weights = nearest.clamp(min=0)
        if not weights.sum() > 0:  # every clip already has a centre in reach
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(pick)
        new = nearest_centres(x, x[[pick]], factors, constants)[0]
        nearest = torch.minimum(nearest, new)
    return x[chosen].clone()


def _lloyd(x: Tensor, centres: Tensor, factors: Tensor, constants: MelBins,
           iterations: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """Lloyd's iterations from ``centres``: centres, clusters, factor indices, inertia."""
    centres = centres.clone()
    for iteration in range(iterations + 1):
        nearest, clusters, shifts = nearest_centres(x, centres, factors, constants)
        if iteration == iterations:
            break
        aligned = pitch_shift(x[:, None, None, :], (1 / factors[shifts])[:, None, None],
                              constants)[:, 0, 0]  # each clip at its centre's pitch
        for k in range(len(centres)):
            members = clusters == k
            if members.any():
                centres[k] = aligned[members].mean(dim=0)
            else:  # restart an empty cluster at the clip explained worst
                worst = int(nearest.argmax())
                centres[k], nearest[worst] = x[worst], -1.0
    return centres, clusters, shifts, float(nearest.sum())


@torch.no_grad()
def pitch_invariant_kmeans(x: Tensor, k: int, constants: MelBins, semitones: int = 12,
                           iterations: int = 10, n_init: int = 4, seed: int = 0,
                           init: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """K-means of clips ``x`` ``(N, F)`` under the distance of
    :func:`pitch_invariant_distances` (factors ``2^(j/12)``, ``|j| <= semitones``): each clip
    goes to its nearest (centre, factor); each centre becomes the mean of its clips, shifted
    back by their factors; an empty cluster restarts at the clip explained worst.

    Runs ``iterations`` Lloyd steps from each of ``n_init`` k-means++ seedings (and from
    ``init`` ``(k, F)`` if given) and keeps the run with the smallest total distance.
    Returns the centres ``(k, F)``, each clip's cluster ``(N,)`` and pitch factor ``(N,)``.
    """
    if x.ndim != 2 or len(x) < k:
        raise ValueError(f"x must be (N, F) with N >= k = {k}, got {tuple(x.shape)}")
    if init is not None and init.shape != (k, x.shape[1]):
        raise ValueError(f"init must be (k, F) = {(k, x.shape[1])}, got {tuple(init.shape)}")
    if n_init < 1 and init is None:
        raise ValueError(f"n_init must be at least 1 without init, got {n_init}")
    x = x.float()
    constants = constants.to(dtype=torch.float32)
    factors = pitch_factors(semitones).float()
    generator = torch.Generator().manual_seed(seed)
    starts = [] if init is None else [init.float()]
    starts += [_seed_centres(x, k, factors, constants, generator) for _ in range(n_init)]
    runs = [_lloyd(x, start, factors, constants, max(iterations, 0)) for start in starts]
    centres, clusters, shifts, _ = min(runs, key=lambda run: run[3])
    return centres, clusters, factors[shifts]
