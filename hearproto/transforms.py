"""The spectral transformations of the prototypes, as pure differentiable tensor functions.

Conventions (docs/design.md, "The model"): prototypes ``P`` are ``(K, F)`` scaled log-Mel frames;
per-time parameters are ``(B, K, T)`` or ``(B, K, T, n)`` (one value per clip, prototype and
time step); reconstructions are ``(B, K, T, F)``. Everything is batched (no Python loop over
prototypes, batch or time), works on any device and float dtype, and is differentiable.

The transformations, applied in the order pitch -> gain -> filters:

- gain: ``m + g`` with ``g = 0.5 tanh(raw)`` (:func:`gain`, :func:`gain_from_raw`);
- pitch: a true frequency scaling, content at h Hz moves to s*h Hz, on the HTK mel axis with
  linear interpolation, ``s = exp(tanh(raw))`` in [1/e, e] (:func:`pitch_shift`,
  :func:`pitch_from_raw`; per-bin constants in :class:`MelBins`);
- filters, added in the log domain: ``G_h softplus(2(f - 0.5 + c_h))`` (high) and
  ``G_l softplus(-2(f - 0.5 + c_l))`` (low), ``f = linspace(0, 1, F)``, softplus with
  beta = 10, the four parameters ``0.25 tanh(raw)`` (:func:`high_filter`, :func:`low_filter`,
  :func:`spectral_filters`, :func:`filter_params_from_raw`).

:func:`reconstruct` composes them and :func:`squared_error` scores the reconstructions. The
module imports only torch and the mel scale: the fast paths of the same error (fused kernels,
chunks, torch.compile) are in :mod:`hearproto.kernels`, whose ``reconstruction_error`` is the
one the model calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import functional as nnf

from hearproto.melscale import MEL_A, MEL_BREAK_HZ, band_edges, hz_to_mel

if TYPE_CHECKING:
    from hearproto.frontend import FrontEnd

__all__ = [
    "MEL_A",
    "SOFTPLUS_BETA",
    "GAIN_RANGE",
    "PITCH_RANGE",
    "FILTER_RANGE",
    "MelBins",
    "mel_bin_constants",
    "gain",
    "gain_from_raw",
    "pitch_shift",
    "pitch_from_raw",
    "pitch_source_index",
    "high_filter",
    "low_filter",
    "spectral_filters",
    "filter_params_from_raw",
    "reconstruct",
    "squared_error",
]

SOFTPLUS_BETA = 10.0
#: The transformations' ranges: the networks' outputs reach them through tanh.
GAIN_RANGE = (-0.5, 0.5)
PITCH_RANGE = (math.exp(-1.0), math.exp(1.0))
FILTER_RANGE = (-0.25, 0.25)  # each of c_h, G_h, c_l, G_l


# --------------------------------------------------------------------------------------------
# Mel-bin constants


@dataclass(frozen=True, eq=False)
class MelBins:
    """Per-bin constants of the pitch shift, computed once per front end.

    ``weight`` ``(F,)`` is ``hz_f / (700 + hz_f)`` for each bin's centre frequency ``hz_f``;
    ``bins_per_log`` is ``A / (ln 10 * d_mel)``, the number of bins per natural-log unit of
    ``1 + hz / 700`` (``d_mel`` is the constant mel spacing of the bins); ``centres_hz``
    ``(F,)`` are the centre frequencies, kept for reference. With these, the output bin ``f``
    of a shift by ``s`` reads the input at the fractional index
    ``f + bins_per_log * log1p((1 / s - 1) * weight[f])``, which is the bin of
    ``mel(hz_f / s)`` and exactly ``f`` at ``s = 1``.

    Build with :meth:`from_frontend` (or :func:`mel_bin_constants`) or :meth:`from_range`;
    move with :meth:`to` once, so that :func:`pitch_shift` need not copy them each call.
    """

    weight: Tensor
    bins_per_log: float
    centres_hz: Tensor

    @classmethod
    def from_range(cls, n_mels: int, f_min: float, f_max: float) -> "MelBins":
        """Bins equally spaced on the HTK mel scale between ``f_min`` and ``f_max`` Hz (the
        centres are ``librosa.mel_frequencies(n_mels + 2, f_min, f_max, htk=True)[1:-1]``)."""
        if n_mels < 1 or not 0 <= f_min < f_max:
            raise ValueError(f"need n_mels >= 1 and 0 <= f_min < f_max, got "
                             f"{n_mels}, {f_min}, {f_max}")
        hz = band_edges(n_mels, f_min, f_max)[1:-1]
        d_mel = (hz_to_mel(f_max) - hz_to_mel(f_min)) / (n_mels + 1)
        return cls(
            weight=hz / (MEL_BREAK_HZ + hz),
            bins_per_log=MEL_A / (math.log(10.0) * d_mel),
            centres_hz=hz,
        )

    @classmethod
    def from_frontend(cls, frontend: FrontEnd) -> "MelBins":
        """The bins of a :class:`~hearproto.frontend.FrontEnd`."""
        return cls.from_range(frontend.n_mels, frontend.f_min, frontend.nyquist_limit)

    @property
    def n_bins(self) -> int:
        return int(self.weight.shape[0])

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "MelBins":
        """A copy with ``weight`` (and ``centres_hz``) on ``device`` / in ``dtype``."""
        return MelBins(self.weight.to(device=device, dtype=dtype), self.bins_per_log,
                       self.centres_hz.to(device=device))


def mel_bin_constants(frontend: FrontEnd) -> MelBins:
    """The per-bin constants of :func:`pitch_shift` for ``frontend``; compute them once."""
    return MelBins.from_frontend(frontend)


# --------------------------------------------------------------------------------------------
# Gain


def gain(m: Tensor, g: Tensor) -> Tensor:
    """``m + g`` per frame: ``m`` ``(B, K, T, F)`` or broadcastable (prototypes ``(K, F)``
    broadcast as ``(1, K, 1, F)``), ``g`` ``(B, K, T)``. Returns ``(B, K, T, F)``."""
    if m.ndim == 2:
        m = m[None, :, None, :]
    return m + g[..., None]


def gain_from_raw(raw: Tensor) -> Tensor:
    """Network output -> gain, ``0.5 tanh(raw)`` in (-0.5, 0.5). Same shape."""
    return GAIN_RANGE[1] * torch.tanh(raw)


# --------------------------------------------------------------------------------------------
# Pitch


def pitch_from_raw(raw: Tensor) -> Tensor:
    """Network output -> pitch factor, ``exp(tanh(raw))`` in (1/e, e). Same shape."""
    return torch.exp(torch.tanh(raw))


def pitch_source_index(s: Tensor, constants: MelBins) -> Tensor:
    """Fractional input-bin index read by each output bin, before clamping. ``(..., F)``.

    ``s`` is ``(...)``; output bin ``f`` reads the bin of ``mel(hz_f / s)``, i.e. the paper's
    ``Phi(mel_f, 1/s)`` converted to bins. Exactly ``f`` where ``s == 1``.
    """
    weight = constants.weight.to(device=s.device, dtype=s.dtype)
    index = torch.arange(weight.shape[0], device=s.device, dtype=s.dtype)
    ratio = torch.reciprocal(s) - 1.0  # exactly 0 at s = 1
    return torch.add(index, torch.log1p(ratio[..., None] * weight), alpha=constants.bins_per_log)


def pitch_shift(m: Tensor, s: Tensor, constants: MelBins) -> Tensor:
    """Mel-aware pitch shift by the factor ``s``: content at h Hz moves to ``s * h`` Hz.

    ``m`` is the prototype table ``(K, F)`` (broadcast against ``s`` ``(B, K, T)``; gathered
    straight from the table) or a spectrogram broadcastable to ``(B, K, T, F)``; ``s`` is
    ``(B, K, T)`` (or broadcastable to it). Each output bin reads the input at the fractional
    bin of ``mel(hz_f / s)`` (:func:`pitch_source_index`), clamped to ``[0, F - 1]`` (border),
    with linear interpolation between the two neighbouring bins. ``s == 1`` is exactly the
    identity. Returns ``(B, K, T, F)``.
    """
    n_bins = m.shape[-1]
    if n_bins != constants.n_bins:
        raise ValueError(f"m has {n_bins} bins but the constants are for {constants.n_bins}")
    dtype = torch.result_type(m, s)
    m, s = m.to(dtype), s.to(dtype)
    if m.ndim == 2:
        batch_shape = torch.broadcast_shapes(s.shape, (m.shape[0], 1))
    else:
        batch_shape = torch.broadcast_shapes(s.shape, m.shape[:-1])
    if n_bins == 1:  # nothing to interpolate
        return m.expand(*batch_shape, 1) if m.ndim > 2 else m[:, None].expand(*batch_shape, 1)
    position = pitch_source_index(s.expand(batch_shape), constants).clamp(0.0, n_bins - 1.0)
    lower = position.detach().floor().clamp_(max=n_bins - 2)
    frac = position - lower  # in [0, 1]; exactly 0 (or 1 at the last bin) when s == 1
    lower = lower.long()
    if m.ndim == 2:
        k = torch.arange(m.shape[0], device=m.device).view(-1, 1, 1)
        flat_index = lower.add_(k * n_bins)  # (..., K, T, F) into the flattened (K * F,) table
        table = m.reshape(-1)
        start, end = table[flat_index], table[flat_index + 1]
    else:
        full = m.expand(*batch_shape, n_bins)
        start = torch.gather(full, -1, lower)
        end = torch.gather(full, -1, lower + 1)
    return torch.lerp(start, end, frac)  # start + frac * (end - start), exact at 0 and 1


# --------------------------------------------------------------------------------------------
# Filters


def _filter(params: Tensor, n_bins: int, sign: float) -> Tensor:
    """``G softplus(sign * 2 (f - 0.5 + c))``: the small ``(..., 1)`` offset first, so that
    only three full-size tensors are made."""
    cutoff, level = params[..., 0:1], params[..., 1:2]
    slope = torch.linspace(0.0, 2.0 * sign, n_bins, device=params.device, dtype=params.dtype)
    offset = (2.0 * sign) * (cutoff - 0.5)
    return level * nnf.softplus(slope + offset, beta=SOFTPLUS_BETA)


def high_filter(params: Tensor, n_bins: int) -> Tensor:
    """``G_h softplus(2 (f - 0.5 + c_h))`` with ``f = linspace(0, 1, F)``, beta = 10.

    ``params`` ``(B, K, T, 2)`` holds ``(c_h, G_h)``. Returns ``(B, K, T, F)``, ``F = n_bins``;
    non-decreasing in f for ``G_h >= 0``; exactly zero for ``G_h = 0``.
    """
    return _filter(params, n_bins, 1.0)


def low_filter(params: Tensor, n_bins: int) -> Tensor:
    """``G_l softplus(-2 (f - 0.5 + c_l))`` with ``f = linspace(0, 1, F)``, beta = 10.

    ``params`` ``(B, K, T, 2)`` holds ``(c_l, G_l)``. Returns ``(B, K, T, F)``, ``F = n_bins``;
    non-increasing in f for ``G_l >= 0``; exactly zero for ``G_l = 0``.
    """
    return _filter(params, n_bins, -1.0)


def spectral_filters(params: Tensor, n_bins: int) -> Tensor:
    """Both filters, ``high + low``: ``params`` ``(B, K, T, 4)`` = ``(c_h, G_h, c_l, G_l)``.
    Returns ``(B, K, T, F)``, to be added to a log-Mel spectrogram."""
    return high_filter(params[..., 0:2], n_bins) + low_filter(params[..., 2:4], n_bins)


def filter_params_from_raw(raw: Tensor) -> Tensor:
    """Network output ``(B, K, T, 4)`` -> ``(c_h, G_h, c_l, G_l) = 0.25 tanh(raw)``."""
    return FILTER_RANGE[1] * torch.tanh(raw)


# --------------------------------------------------------------------------------------------
# Reconstruction


def reconstruct(
    prototypes: Tensor,
    pitch: Tensor | None = None,
    gain: Tensor | None = None,
    filters: Tensor | None = None,
    constants: MelBins | None = None,
) -> Tensor:
    """Transform the prototypes ``(K, F)``: pitch, then gain, then filters.

    ``pitch`` ``(B, K, T)`` (factors s, as from :func:`pitch_from_raw`; needs ``constants``),
    ``gain`` ``(B, K, T)`` (as from :func:`gain_from_raw`), ``filters`` ``(B, K, T, 4)``
    (as from :func:`filter_params_from_raw`); ``None`` switches a transformation off.
    Returns ``(B, K, T, F)``, or a tensor broadcastable to it (``(1, K, 1, F)`` when all are
    off). ``prototypes`` may also be ``(B, K, 1, F)``: a prototype per clip (as gathered by
    class label), broadcast over time.
    """
    n_bins = prototypes.shape[-1]
    if pitch is not None:
        if constants is None:
            raise ValueError("pitch shifting needs the mel-bin constants (MelBins)")
        m = pitch_shift(prototypes, pitch, constants)
    else:
        m = prototypes[None, :, None, :] if prototypes.ndim == 2 else prototypes
    if gain is not None:
        m = m + gain[..., None]
    if filters is not None:
        m = m + high_filter(filters[..., 0:2], n_bins) + low_filter(filters[..., 2:4], n_bins)
    return m


def squared_error(
    x: Tensor, prototypes: Tensor, pitch: Tensor | None = None, gain: Tensor | None = None,
    filters: Tensor | None = None, constants: MelBins | None = None,
) -> Tensor:
    """Mean over T and F of the squared error of each prototype's reconstruction of ``x``
    ``(B, T, F)``: ``(B, K)``. The arguments after ``x`` are those of :func:`reconstruct`. This
    is the definition; :func:`hearproto.kernels.reconstruction_error` computes the same numbers
    without holding ``(B, K, T, F)`` tensors.
    """
    rec = reconstruct(prototypes, pitch, gain, filters, constants)
    return (rec - x[:, None]).square().mean(dim=(-2, -1))
