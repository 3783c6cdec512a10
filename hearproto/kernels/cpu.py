"""The fused reconstruction error on the CPU: ``reconstruction_error.c``, built at first use.

The C source is compiled once per machine with the system's C compiler (``$CC``, else ``cc``
or ``gcc``; GCC 12 measured) into ``kernels/`` of the data home (``$HEARPROTO_DATA``, else
``$XDG_CACHE_HOME/hearproto`` or ``~/.cache/hearproto``) and loaded with :mod:`ctypes`. It
needs no Python headers and builds in about a second, which ``torch.utils.cpp_extension``
(torch's headers, ninja) does not. Without a compiler, or if the
build fails, :func:`available` is False after one warning, and the callers use the torch path.

:class:`FusedError` is the autograd function: the forward pass returns the ``(B, K)`` errors and
keeps only its inputs; the backward pass recomputes every row and reduces it straight into the
gradients (docs/kernels.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

__all__ = ["available", "FusedError", "SOURCE", "build_library", "load_library"]

SOURCE = Path(__file__).with_name("reconstruction_error.c")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-std=gnu11", "-shared", "-fPIC"]

_LIBRARIES: dict[Path, ctypes.CDLL | None] = {}  # None once a build or load failed


def _cache_dir() -> Path:
    from hearproto.files import data_home  # the project's one place for caches

    return data_home() / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """The CPU's model and flags: the library is built with -march=native, so one built on
    another CPU (a cache shared between machines) must not be loaded here."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines()
                 if line.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor()


def build_library(directory: Path | None = None, source: Path = SOURCE) -> Path:
    """Compile the C ``source`` (if this exact build is not cached) and return the library's
    path. Raises ``RuntimeError`` with the compiler's message on failure."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([source.read_text(), " ".join(FLAGS), version,
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    directory = directory or _cache_dir()
    target = directory / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source.name}: {done.stderr.strip()[:500]}")
        os.replace(built, target)  # atomic: a concurrent build writes the same file
    return target


def load_library(source: Path, declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The library built from ``source`` (built on first use), its functions typed by
    ``declare``; None, after one warning, where it cannot be built or loaded."""
    if source not in _LIBRARIES:
        try:
            library = ctypes.CDLL(str(build_library(source=source)))
            declare(library)
        except (RuntimeError, OSError, AttributeError) as err:
            warnings.warn(f"the fused CPU kernel {source.name} is unavailable ({err}); "
                          "using the torch path", stacklevel=3)
            library = None
        _LIBRARIES[source] = library
    return _LIBRARIES[source]


def _declare(library: ctypes.CDLL) -> None:
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    common = [p, p, i64, p, p, p, p, p, p, f32, i64, i64, i64, i64, i32]
    library.hp_error_forward.argtypes = [*common, p]
    library.hp_error_forward.restype = None
    library.hp_error_backward.argtypes = [*common, p, p, p, p, p]
    library.hp_error_backward.restype = None


def _load() -> ctypes.CDLL | None:
    return load_library(SOURCE, _declare)


def available() -> bool:
    """Whether the fused CPU kernel is built and loaded (builds it on the first call)."""
    return _load() is not None


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_EXPONENTIALS: dict[int, tuple[Tensor, Tensor]] = {}


def _bin_constants(weight: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """``w`` as float32, and ``e = exp(20 f / (F - 1))`` and ``1 / e`` (cached per F)."""
    if n_bins not in _EXPONENTIALS:
        e = torch.exp(20.0 * torch.linspace(0.0, 1.0, n_bins, dtype=torch.float64))
        _EXPONENTIALS[n_bins] = (e.float().contiguous(), e.reciprocal().float().contiguous())
    return (weight.to(torch.float32).contiguous(), *_EXPONENTIALS[n_bins])


def _arguments(x, protos, s, g, filt, weight, bins_per_log) -> tuple[tuple, tuple]:
    """The common leading arguments of both C functions, and the tensors behind their
    pointers, which the caller keeps alive through the call."""
    batch, frames, n_bins = x.shape
    n_protos = protos.shape[1]
    w, e, inv_e = _bin_constants(weight, n_bins)
    stride = n_protos * n_bins if protos.shape[0] > 1 else 0
    return (_pointer(x), _pointer(protos), stride, _pointer(s), _pointer(g), _pointer(filt),
            _pointer(w), _pointer(e), _pointer(inv_e), float(bins_per_log), batch, n_protos,
            frames, n_bins, torch.get_num_threads()), (w, e, inv_e)


class FusedError(torch.autograd.Function):
    """``(B, K)`` errors of float32 contiguous inputs: ``x`` ``(B, T, F)``, ``protos``
    ``(Bp, K, F)`` (``Bp`` 1 or B), ``s``, ``g`` ``(B, K, T)`` and ``filt`` ``(B, K, T, 4)``
    or None. ``x`` gets no gradient (callers route that case to the torch path)."""

    @staticmethod
    def forward(ctx, x, protos, s, g, filt, weight, bins_per_log):
        library = _load()
        out = torch.empty(x.shape[0], protos.shape[1], dtype=torch.float32)
        arguments, _alive = _arguments(x, protos, s, g, filt, weight, bins_per_log)
        library.hp_error_forward(*arguments, _pointer(out))
        ctx.save_for_backward(x, protos, s, g, filt)
        ctx.weight, ctx.bins_per_log = weight, bins_per_log
        return out

    @staticmethod
    def backward(ctx, grad):
        x, protos, s, g, filt = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad = grad.to(torch.float32).contiguous()
        batch, n_protos, n_bins = x.shape[0], protos.shape[1], x.shape[2]
        ds = torch.empty_like(s) if s is not None and needs[2] else None
        dg = torch.empty_like(g) if g is not None and needs[3] else None
        dfilt = torch.empty_like(filt) if filt is not None and needs[4] else None
        dp = torch.empty(batch, n_protos, n_bins) if needs[1] else None
        arguments, _alive = _arguments(x, protos, s, g, filt, ctx.weight, ctx.bins_per_log)
        _load().hp_error_backward(*arguments, _pointer(grad), _pointer(ds), _pointer(dg),
                                  _pointer(dfilt), _pointer(dp))
        if dp is not None and protos.shape[0] == 1:
            dp = dp.sum(0, keepdim=True)
        return None, dp, ds, dg, dfilt, None, None

