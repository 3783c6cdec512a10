"""The reconstruction error the model trains on, :func:`reconstruction_error`: fused kernels,
one pass over (b, k, t, f) that never writes a (B, K, T, F) tensor, with a hand-written
backward pass, and the torch path where none applies (:mod:`hearproto.kernels.chunks`).

- CPU: C with OpenMP and glibc's vector ``log1pf`` (:mod:`hearproto.kernels.cpu`), built at
  first use by the system's C compiler;
- CUDA: Triton (:mod:`hearproto.kernels.cuda`), fp32 accumulation for fp32, fp16 and bf16.

:func:`reconstruction_error` calls :func:`fused_error` first and falls back to the torch path
where it returns None: float64 inputs (kept exact, for gradient
checks), inputs ``x`` that need a gradient, on the CPU non-finite parameters or filter cutoffs
beyond ±3, or no kernel on this device. ``HEARPROTO_KERNEL=torch`` (or :func:`use_backend`) turns the fused path off.

The encoder's first level has a CPU kernel of its own (:mod:`hearproto.kernels.encoder`),
which the same switch turns off.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from hearproto.transforms import MelBins

__all__ = ["BACKENDS", "reconstruction_error", "fused_error", "use_backend", "backend",
           "fused_available"]

BACKENDS = ("auto", "fused", "torch")
_CHOSEN: list[str] = []
#: The largest |cutoff| of a filter the C kernel takes: exp(20 (1 + |c| - 0.5)) stays finite
#: in float32 (the model's filters have |c| < 0.25).
MAX_FILTER_CUTOFF = 3.0


def backend() -> str:
    """``auto`` (fused where a kernel exists), ``fused`` (the same, but an unavailable kernel
    is an error) or ``torch``; from :func:`use_backend`, else ``$HEARPROTO_KERNEL``."""
    name = _CHOSEN[-1] if _CHOSEN else os.environ.get("HEARPROTO_KERNEL", "auto")
    if name not in BACKENDS:
        raise ValueError(f"HEARPROTO_KERNEL must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, compute reconstruction errors with ``name`` (see :func:`backend`)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    _CHOSEN.append(name)
    try:
        yield
    finally:
        _CHOSEN.pop()


def fused_available(device: torch.device | str) -> bool:
    """Whether a fused kernel runs on ``device`` here (builds or imports it on first call)."""
    device = torch.device(device)
    if device.type == "cpu":
        from hearproto.kernels import cpu
        return cpu.available()
    if device.type == "cuda":
        from hearproto.kernels import cuda
        return cuda.available()
    return False


def _in_range(pitch: Tensor | None, filters: Tensor | None) -> bool:
    """Finite parameters, pitch factors > 0, filter cutoffs the C kernel takes (its filters
    use exp(20 (c - 0.5)) times a per-bin constant: one log per bin instead of an exp and a
    log; the Triton kernel uses the stable form, for any cutoff)."""
    with torch.no_grad():
        if pitch is not None and not bool(torch.isfinite(pitch).all() and (pitch > 0).all()):
            return False
        if filters is not None:
            if not bool(torch.isfinite(filters).all()):
                return False
            if float(filters[..., 0::2].abs().max()) > MAX_FILTER_CUTOFF:
                return False
    return True


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
    """Mean over T and F of the squared error of each prototype's reconstruction of ``x``
    ``(B, T, F)``: ``(B, K)``, the numbers of :func:`hearproto.transforms.squared_error`.

    The other arguments are those of :func:`hearproto.transforms.reconstruct` (per-time
    parameters with K, or 1 to broadcast, on dim 1; prototypes ``(K, F)`` or per clip
    ``(B, K, 1, F)``). A fused kernel computes it where one takes the inputs (float32, fp16
    or bf16 on the CPU or CUDA, ``x`` without gradient); elsewhere the torch path does,
    ``k_chunk`` prototypes at a time, fused by torch.compile when ``compiled``
    (:func:`hearproto.kernels.chunks.chunked_error`). ``HEARPROTO_KERNEL=torch`` or
    :func:`use_backend` selects the torch path.
    """
    if k_chunk is not None and k_chunk < 1:
        raise ValueError(f"k_chunk must be a positive integer or None, got {k_chunk}")
    fused = fused_error(x, prototypes, pitch, gain, filters, constants)
    if fused is not None:
        return fused
    from hearproto.kernels.chunks import chunked_error
    return chunked_error(x, prototypes, pitch, gain, filters, constants, k_chunk, compiled)


def fused_error(x: Tensor, prototypes: Tensor, pitch: Tensor | None, gain: Tensor | None,
                filters: Tensor | None, constants) -> Tensor | None:
    """:func:`reconstruction_error` by a fused kernel, ``(B, K)``, or
    None where the torch path must run (see the module's docstring)."""
    choice = backend()
    if choice == "torch":
        return None
    tensors = [t for t in (x, prototypes, pitch, gain, filters) if t is not None]
    device = x.device
    usable = (
        x.ndim == 3
        and all(t.device == device for t in tensors)
        and all(t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in tensors)
        and not (x.requires_grad and torch.is_grad_enabled())
        and (prototypes.ndim == 2 or (prototypes.ndim == 4 and prototypes.shape[2] == 1))
        and (pitch is None or constants is not None)
        and x.shape[-1] >= 2
    )
    if usable:  # the range check would synchronise with a GPU; the Triton kernel needs none
        usable = fused_available(device) and (device.type == "cuda"
                                              or _in_range(pitch, filters))
    if not usable:
        if choice == "fused":
            raise RuntimeError("HEARPROTO_KERNEL=fused, but no fused kernel takes these inputs "
                               f"(device {device}, dtypes {[t.dtype for t in tensors]})")
        return None
    batch, frames, n_bins = x.shape
    table = prototypes[None] if prototypes.ndim == 2 else prototypes[:, :, 0]  # (Bp, K, F)
    n_protos = table.shape[1]

    def per_time(t: Tensor | None, *tail: int) -> Tensor | None:
        if t is None:
            return None
        return t.expand(batch, n_protos, frames, *tail).float().contiguous()

    inputs = (x.float().contiguous(), table.float().contiguous(), per_time(pitch),
              per_time(gain), per_time(filters, 4))
    result_dtype = torch.result_type(x, prototypes)
    if pitch is not None:
        weight, bins_per_log = constants.weight, constants.bins_per_log
    else:  # the kernels read neither
        weight, bins_per_log = _unit_weight(n_bins, device), 1.0
    if device.type == "cpu":
        from hearproto.kernels.cpu import FusedError
    else:
        from hearproto.kernels.cuda import FusedError
    out = FusedError.apply(*inputs, weight, bins_per_log)
    return out.to(result_dtype)


_UNIT: dict[tuple[int, str], Tensor] = {}


def _unit_weight(n_bins: int, device: torch.device) -> Tensor:
    """A stand-in per-bin weight when there is no pitch shift (the kernels ignore it), made
    once per device: a copy from the host each step would stop a CUDA graph's recording."""
    key = (n_bins, str(device))
    if key not in _UNIT:
        _UNIT[key] = torch.zeros(n_bins, device=device)
    return _UNIT[key]
