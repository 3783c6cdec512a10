"""The spectral transformations of the prototypes, as pure differentiable tensor functions.

Conventions (DESIGN.md, "The model"): prototypes ``P`` are ``(K, F)`` scaled log-Mel frames;
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

:func:`reconstruct` composes them; :func:`reconstruction_error` gives the per (clip,
prototype) mean squared error, by a fused kernel (:mod:`hearproto.kernels`) where one
applies, else in memory-frugal chunks of prototypes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as nnf
from torch.utils.checkpoint import checkpoint

from hearproto.audio import FrontEnd
from hearproto.kernels import fused_error

__all__ = [
    "MEL_A",
    "SOFTPLUS_BETA",
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
    "reconstruction_error",
]

MEL_A = 2595.0  # HTK mel scale: mel = A log10(1 + hz / 700)
MEL_BREAK_HZ = 700.0
SOFTPLUS_BETA = 10.0


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
        mel_lo, mel_hi = (MEL_A * math.log10(1.0 + hz / MEL_BREAK_HZ) for hz in (f_min, f_max))
        mels = np.linspace(mel_lo, mel_hi, n_mels + 2)[1:-1]
        hz = MEL_BREAK_HZ * (10.0 ** (mels / MEL_A) - 1.0)
        d_mel = (mel_hi - mel_lo) / (n_mels + 1)
        return cls(
            weight=torch.from_numpy(hz / (MEL_BREAK_HZ + hz)),
            bins_per_log=MEL_A / (math.log(10.0) * d_mel),
            centres_hz=torch.from_numpy(hz),
        )

    @classmethod
    def from_frontend(cls, frontend: FrontEnd) -> "MelBins":
        """The bins of a :class:`~hearproto.audio.FrontEnd`."""
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
    return 0.5 * torch.tanh(raw)


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
    return 0.25 * torch.tanh(raw)


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


def _chunk_error(
    x: Tensor, prototypes: Tensor, pitch: Tensor | None, gain: Tensor | None,
    filters: Tensor | None, constants: MelBins | None,
) -> Tensor:
    rec = reconstruct(prototypes, pitch, gain, filters, constants)
    return (rec - x[:, None]).square().mean(dim=(-2, -1))


_COMPILED: dict[str, object] = {}


def _compiled_chunk_error():
    """``_chunk_error`` fused by ``torch.compile`` (once per process); None if compiling is
    unavailable here (no C++ compiler, say), after one warning."""
    if "chunk" not in _COMPILED:
        try:
            _COMPILED["chunk"] = torch.compile(_chunk_error, dynamic=None)
        except Exception as err:  # torch.compile itself unsupported
            warnings.warn(f"torch.compile unavailable ({err}); using eager mode", stacklevel=3)
            _COMPILED["chunk"] = None
    return _COMPILED["chunk"]


def _run_chunk(fn, args, compiled: bool, needs_grad: bool) -> Tensor:
    if compiled:
        fused = _compiled_chunk_error()
        if fused is not None:
            try:
                if needs_grad:
                    return checkpoint(fused, *args, use_reentrant=False)
                return fused(*args)
            except Exception as err:  # compiling failed at the first call: stay eager
                if not isinstance(err, (torch._dynamo.exc.BackendCompilerFailed,
                                        torch._inductor.exc.InductorError)):
                    raise
                warnings.warn(f"torch.compile failed ({type(err).__name__}: "
                              f"{str(err)[:200]}); using eager mode", stacklevel=3)
                _COMPILED["chunk"] = None
    if needs_grad:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def reconstruction_error(
    x: Tensor,
    prototypes: Tensor,
    pitch: Tensor | None = None,
    gain: Tensor | None = None,
    filters: Tensor | None = None,
    constants: MelBins | None = None,
    k_chunk: int | None = None,
    compiled: bool = False,
) -> Tensor:
    """Mean over T and F of the squared error of each prototype's reconstruction. ``(B, K)``.

    ``x`` is ``(B, T, F)``; the other arguments are those of :func:`reconstruct` (per-time
    parameters with K, or 1 to broadcast, on dim 1; prototypes ``(K, F)`` or per clip
    ``(B, K, 1, F)``). ``k_chunk`` processes the prototypes
    ``k_chunk`` at a time; when gradients are needed each chunk runs under activation
    checkpointing, so that only one chunk of ``(B, k_chunk, T, F)`` intermediates is alive in
    forward and backward (the chunk is recomputed in backward). ``None`` does all prototypes
    at once. The results do not depend on ``k_chunk``. ``compiled`` fuses each chunk with
    ``torch.compile`` (about 2x faster on CPU, compiled once per shape; falls back to eager
    with a warning where compiling is unavailable).

    Where a fused kernel takes the inputs (:mod:`hearproto.kernels`: float32, fp16 or bf16 on
    the CPU or CUDA, ``x`` without gradient) it computes the same values and gradients in one
    pass, and ``k_chunk`` and ``compiled`` do not matter; ``HEARPROTO_KERNEL=torch`` or
    ``hearproto.kernels.use_backend("torch")`` selects the path above.
    """
    if k_chunk is not None and k_chunk < 1:
        raise ValueError(f"k_chunk must be a positive integer or None, got {k_chunk}")
    fused = fused_error(x, prototypes, pitch, gain, filters, constants)
    if fused is not None:
        return fused
    n_protos = prototypes.shape[0] if prototypes.ndim == 2 else prototypes.shape[1]
    tensors = [t for t in (x, prototypes, pitch, gain, filters) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if k_chunk is None or k_chunk >= n_protos:
        if compiled:
            return _run_chunk(_chunk_error, (x, prototypes, pitch, gain, filters, constants),
                              True, needs_grad)
        return _chunk_error(x, prototypes, pitch, gain, filters, constants)

    def part(t: Tensor | None, lo: int, hi: int) -> Tensor | None:
        if t is None or t.shape[1] == 1:  # absent, or broadcast over the prototypes
            return t
        return t[:, lo:hi]

    errors = []
    for lo in range(0, n_protos, k_chunk):
        hi = min(lo + k_chunk, n_protos)
        table = prototypes[lo:hi] if prototypes.ndim == 2 else prototypes[:, lo:hi]
        args = (x, table, part(pitch, lo, hi), part(gain, lo, hi),
                part(filters, lo, hi), constants)
        errors.append(_run_chunk(_chunk_error, args, compiled, needs_grad))
    return torch.cat(errors, dim=1)
