"""The torch path of the reconstruction error: the definition
(:func:`hearproto.transforms.squared_error`) in chunks of prototypes, each under activation
checkpointing when gradients are needed, optionally fused by ``torch.compile``. It runs where
no fused kernel applies (float64, an input that needs a gradient, ``HEARPROTO_KERNEL=torch``).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from hearproto.transforms import MelBins, squared_error

__all__ = ["chunked_error"]

_COMPILED: dict[str, object] = {}


def _compiledsquared_error():
    """:func:`~hearproto.transforms.squared_error` fused by ``torch.compile`` (once per process); None if compiling is
    unavailable here (no C++ compiler, say), after one warning."""
    if "chunk" not in _COMPILED:
        try:
            _COMPILED["chunk"] = torch.compile(squared_error, dynamic=None)
        except Exception as err:  # torch.compile itself unsupported
            warnings.warn(f"torch.compile unavailable ({err}); using eager mode", stacklevel=3)
            _COMPILED["chunk"] = None
    return _COMPILED["chunk"]


def _run_chunk(fn, args, compiled: bool, needs_grad: bool) -> Tensor:
    if compiled:
        fused = _compiledsquared_error()
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


def chunked_error(x: Tensor, prototypes: Tensor, pitch: Tensor | None, gain: Tensor | None,
                  filters: Tensor | None, constants: MelBins | None, k_chunk: int | None = None,
                  compiled: bool = False) -> Tensor:
    """:func:`~hearproto.transforms.squared_error` in chunks of prototypes. ``(B, K)``.

    ``x`` is ``(B, T, F)``; the other arguments are those of ``reconstruct`` (per-time
    parameters with K, or 1 to broadcast, on dim 1; prototypes ``(K, F)`` or per clip
    ``(B, K, 1, F)``). ``k_chunk`` processes the prototypes
    ``k_chunk`` at a time; when gradients are needed each chunk runs under activation
    checkpointing, so that only one chunk of ``(B, k_chunk, T, F)`` intermediates is alive in
    forward and backward (the chunk is recomputed in backward). ``None`` does all prototypes
    at once. The results do not depend on ``k_chunk``. ``compiled`` fuses each chunk with
    ``torch.compile`` (about 2x faster on CPU, compiled once per shape; falls back to eager
    with a warning where compiling is unavailable).
    """
    if k_chunk is not None and k_chunk < 1:
        raise ValueError(f"k_chunk must be a positive integer or None, got {k_chunk}")
    n_protos = prototypes.shape[0] if prototypes.ndim == 2 else prototypes.shape[1]
    tensors = [t for t in (x, prototypes, pitch, gain, filters) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if k_chunk is None or k_chunk >= n_protos:
        if compiled:
            return _run_chunk(squared_error, (x, prototypes, pitch, gain, filters, constants),
                              True, needs_grad)
        return squared_error(x, prototypes, pitch, gain, filters, constants)

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
        errors.append(_run_chunk(squared_error, args, compiled, needs_grad))
    return torch.cat(errors, dim=1)
