"""The encoder's first level, fused on the CPU: ``encoder_level0.c``, built at first use.

At full resolution the first level is where a CPU training step spends its time: a 3 x 3
convolution from 1 to 8 channels, ReLU, batch norm, the frequency pool of the first skip and
the stride-2 convolution down, each writing and reading (B, 8, T, F) maps (32 MiB at B = 32),
forward and backward. :func:`first_level` computes the pool and the convolution down in two
passes that recompute the 3 x 3 neighbourhoods instead of storing any such map, and its
backward pass in two more (docs/kernels.md, "The encoder's first level"). The numbers are
those of the modules (tests/test_encoder_kernel.py compares outputs, running statistics and
every gradient with them in float64).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor, nn

from hearproto.kernels.cpu import load_library

__all__ = ["first_level", "first_level_applies", "SOURCE"]

SOURCE = Path(__file__).with_name("encoder_level0.c")
#: The C kernel's fixed sizes: channels of the level, channels of the skip, largest F.
CHANNELS, SKIP_CHANNELS, MAX_BINS = 8, 2, 1024


def _declare(library: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.hp_level0_stats.argtypes = [p, p, p, i64, i64, i64, i32, p, p]
    library.hp_level0_forward.argtypes = [p] * 9 + [i64, i64, i64, i32, p, p]
    library.hp_level0_backward_sums.argtypes = [p] * 11 + [i64, i64, i64, i32, p, p, p, p]
    library.hp_level0_backward_conv.argtypes = [p] * 12 + [i64, i64, i64, i32, p, p]
    for name in ("hp_level0_stats", "hp_level0_forward", "hp_level0_backward_sums",
                 "hp_level0_backward_conv"):
        getattr(library, name).restype = None


def _library() -> ctypes.CDLL | None:
    return load_library(SOURCE, _declare)


def first_level_applies(x: Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> bool:
    """Whether :func:`first_level` takes ``x`` ``(B, T, F)``: float32 on the CPU without a
    gradient of its own, no CPU autocast, the model's channel counts, a plain batch norm (or
    one in evaluation mode), T even, F even and at
    most :data:`MAX_BINS`, the fused path chosen (:func:`hearproto.kernels.backend`) and the
    kernel built."""
    from hearproto.kernels import backend

    return (backend() != "torch" and x.device.type == "cpu" and x.dtype == torch.float32
            and x.ndim == 3 and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.is_autocast_enabled("cpu")
            and conv.in_channels == 1 and conv.out_channels == CHANNELS
            and norm.num_features == CHANNELS and x.shape[1] % 2 == 0
            # a batch norm synchronised over processes needs their statistics, not this batch's
            and (type(norm) is nn.BatchNorm2d or not norm.training)
            and x.shape[2] % 2 == 0 and 2 <= x.shape[2] <= MAX_BINS
            and conv.weight.dtype == torch.float32 and _library() is not None)


def _batch_statistics(x: Tensor, conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """The mean and biased variance of relu(conv(x)) per channel, float64 ``(C,)`` each."""
    sums = torch.empty(CHANNELS, dtype=torch.float64)
    squares = torch.empty(CHANNELS, dtype=torch.float64)
    batch, frames, n_bins = x.shape
    weight, bias = conv.weight.detach().contiguous(), conv.bias.detach().contiguous()
    _library().hp_level0_stats(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), batch,
                               frames, n_bins, torch.get_num_threads(), sums.data_ptr(),
                               squares.data_ptr())
    count = batch * frames * n_bins
    mean = sums / count
    return mean, (squares / count - mean.square()).clamp_min(0.0)


def first_level(x: Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d, pool: nn.Conv2d,
                down: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """``x`` ``(B, T, F)`` (the encoder's input, already mapped to [-1, 1]) through ``conv``,
    ReLU and ``norm``: the skip ``pool`` of it ``(B, 2, T)`` and the convolution ``down`` of
    it ``(B, 8, T/2, F/2)``, as the modules compute them. ``norm`` in training mode uses the
    batch's statistics and updates its running ones as ``nn.BatchNorm2d`` does."""
    x = x.contiguous()
    if norm.training or not norm.track_running_stats:
        mean, var = _batch_statistics(x, conv)
        if norm.training and norm.track_running_stats:
            _update_running_statistics(norm, mean, var, x.numel())
        batch_statistics = True
    else:
        mean, var = norm.running_mean.double(), norm.running_var.double()
        batch_statistics = False
    invstd = (var + norm.eps).rsqrt()
    return _FirstLevel.apply(x, conv.weight, conv.bias, norm.weight, norm.bias,
                             pool.weight[:, :, 0], pool.bias, down.weight, down.bias,
                             mean.float(), invstd.float(), batch_statistics)


@torch.no_grad()
def _update_running_statistics(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor,
                               count: int) -> None:
    """``nn.BatchNorm2d``'s update in training mode: the unbiased variance, the momentum or,
    with ``momentum=None``, the cumulative average."""
    norm.num_batches_tracked.add_(1)
    factor = (1.0 / float(norm.num_batches_tracked) if norm.momentum is None
              else norm.momentum)
    unbiased = var * count / max(count - 1, 1)
    norm.running_mean.mul_(1 - factor).add_(mean.to(norm.running_mean.dtype), alpha=factor)
    norm.running_var.mul_(1 - factor).add_(unbiased.to(norm.running_var.dtype), alpha=factor)


def _contiguous(*tensors: Tensor) -> list[Tensor]:
    return [t.detach().float().contiguous() for t in tensors]


class _FirstLevel(torch.autograd.Function):
    """Outputs ``(skip (B, 2, T), down (B, 8, T/2, F/2))``; gradients for every parameter,
    none for ``x``. ``mean`` and ``invstd`` are the normalisation's; with
    ``batch_statistics`` they are functions of the batch, which the backward pass accounts
    for as batch norm's does."""

    @staticmethod
    def forward(ctx, x, w0, b0, gamma, beta, pool_weight, pool_bias, down_weight, down_bias,
                mean, invstd, batch_statistics):
        w0, b0, gamma, beta, pw, pb, wd, bd = _contiguous(
            w0, b0, gamma, beta, pool_weight, pool_bias, down_weight, down_bias)
        a = gamma * invstd
        shift = beta - mean * a
        batch, frames, n_bins = x.shape
        skip = torch.empty(batch, SKIP_CHANNELS, frames)
        down = torch.empty(batch, CHANNELS, frames // 2, n_bins // 2)
        _library().hp_level0_forward(
            x.data_ptr(), w0.data_ptr(), b0.data_ptr(), a.data_ptr(), shift.data_ptr(),
            pw.data_ptr(), pb.data_ptr(), wd.data_ptr(), bd.data_ptr(), batch, frames, n_bins,
            torch.get_num_threads(), skip.data_ptr(), down.data_ptr())
        ctx.save_for_backward(x, w0, b0, pw, wd, mean, invstd, a, shift)
        ctx.batch_statistics = batch_statistics
        return skip, down

    @staticmethod
    def backward(ctx, grad_skip, grad_down):
        x, w0, b0, pw, wd, mean, invstd, a, shift = ctx.saved_tensors
        batch, frames, n_bins = x.shape
        grad_skip = (torch.zeros(batch, SKIP_CHANNELS, frames) if grad_skip is None
                     else grad_skip.float().contiguous())
        grad_down = (torch.zeros(batch, CHANNELS, frames // 2, n_bins // 2) if grad_down is None
                     else grad_down.float().contiguous())
        threads = torch.get_num_threads()
        double = {"dtype": torch.float64}
        sum_gh, sum_ghx = torch.empty(CHANNELS, **double), torch.empty(CHANNELS, **double)
        grad_pw = torch.empty(SKIP_CHANNELS, CHANNELS, n_bins, **double)
        grad_wd = torch.empty(CHANNELS, CHANNELS, 2, 2, **double)
        library = _library()
        library.hp_level0_backward_sums(
            x.data_ptr(), w0.data_ptr(), b0.data_ptr(), mean.data_ptr(), invstd.data_ptr(),
            a.data_ptr(), shift.data_ptr(), pw.data_ptr(), wd.data_ptr(), grad_down.data_ptr(),
            grad_skip.data_ptr(), batch, frames, n_bins, threads, sum_gh.data_ptr(),
            sum_ghx.data_ptr(), grad_pw.data_ptr(), grad_wd.data_ptr())
        count = batch * frames * n_bins
        if ctx.batch_statistics:
            m1, m2 = (sum_gh / count).float(), (sum_ghx / count).float()
        else:
            m1 = m2 = torch.zeros(CHANNELS)
        grad_w0 = torch.empty(CHANNELS, 1, 3, 3, **double)
        grad_b0 = torch.empty(CHANNELS, **double)
        library.hp_level0_backward_conv(
            x.data_ptr(), w0.data_ptr(), b0.data_ptr(), mean.data_ptr(), invstd.data_ptr(),
            a.data_ptr(), m1.data_ptr(), m2.data_ptr(), pw.data_ptr(), wd.data_ptr(),
            grad_down.data_ptr(), grad_skip.data_ptr(), batch, frames, n_bins, threads,
            grad_w0.data_ptr(), grad_b0.data_ptr())
        return (None, grad_w0.float(), grad_b0.float(), sum_ghx.float(), sum_gh.float(),
                grad_pw.float(), grad_skip.sum((0, 2)), grad_wd.float(),
                grad_down.sum((0, 2, 3)), None, None, None)
