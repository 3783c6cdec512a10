"""The fused reconstruction error on CUDA, in Triton.

Each program takes one (clip, prototype) pair and a block of ``BLOCK_T`` time steps, and holds a
``(BLOCK_T, F)`` tile in registers: it reads the clip's frames and the per-time parameters once
and gathers the prototype's two neighbouring bins from its row (cached: F floats). The forward
pass writes one partial sum per program; the backward pass recomputes the tile and reduces it
over F into the per-time gradients, and adds the prototypes' gradient into a ``(B, K, F)``
buffer with atomic adds (so its last bits depend on the order of the programs).

:data:`BACKWARD` chooses how the backward pass is split: ``blocks``, a program per pair and
time block (as the forward pass), or ``rows``, a program per pair looping over its time
blocks, so that the atomic adds into a pair's row of the prototypes' gradient come from one
program instead of T / BLOCK_T programs on different multiprocessors. ``rows`` is untimed
(no GPU since it was written): docs/scripts/triton_tiles.py --parts times both.

The inputs are float32 (the dispatcher, :func:`hearproto.kernels.fused_error`, converts fp16 and
bf16 inputs; the tiles are small next to the (B, K, T, F) work). Under ``TRITON_INTERPRET=1``
the kernels run on CPU tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only installs without the test extras
    triton = None

__all__ = ["available", "FusedError", "BLOCK_T", "NUM_WARPS", "BACKWARD", "BACKWARDS"]

#: Time steps per program (an (8, 128) tile: 1,024 elements) and warps per program: the
#: fastest of seven tiles on an H200 (docs/kernels.md; docs/scripts/triton_tiles.py).
BLOCK_T = 8
NUM_WARPS = 4
#: How the backward pass is split into programs (see the module's docstring).
BACKWARDS = ("blocks", "rows")
BACKWARD = "blocks"


def available() -> bool:
    """Triton importable and a CUDA device present."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _tile(x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, i, tb, pb_stride, bpl,
              K, T, F, HAS_PITCH: tl.constexpr, HAS_GAIN: tl.constexpr,
              HAS_FILTERS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """The residual tile r = reconstruction - x of pair ``i`` and time block ``tb``, and
        what the backward pass needs of it."""
        b = i // K
        k = i % K
        t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        f = tl.arange(0, BLOCK_F)
        t_ok = t < T
        f_ok = f < F
        mask = t_ok[:, None] & f_ok[None, :]
        bkt = i * T + t
        x = tl.load(x_ptr + (b * T + t[:, None]) * F + f[None, :], mask=mask, other=0.0)
        row = p_ptr + b * pb_stride + k * F
        top = (F - 1).to(tl.float32)
        fidx = tl.broadcast_to(f[None, :].to(tl.float32), (BLOCK_T, BLOCK_F))
        if HAS_PITCH:
            s = tl.load(s_ptr + bkt, mask=t_ok, other=1.0)
            w = tl.load(w_ptr + f, mask=f_ok, other=0.0)
            ratio = 1.0 / s - 1.0
            a = ratio[:, None] * w[None, :]
            # log1p(a) to a few ulps (log(1 + a) loses the low bits of small a): the reading
            # positions then agree with the torch path's, so both pick the same segment of the
            # piecewise-linear interpolation wherever a position is not within rounding of a
            # knot (at a knot the derivative in s is one-sided, and either side is correct)
            one_a = 1.0 + a
            rounded = one_a - 1.0  # a as 1 + a holds it; 0 where a is below half an ulp of 1
            exact = rounded == 0.0
            log1p_a = tl.where(exact, a, tl.log(one_a) * (a / tl.where(exact, 1.0, rounded)))
            v = fidx + bpl * log1p_a
            inside = ((v >= 0.0) & (v <= top)).to(tl.float32)
            duds = bpl * w[None, :] * (-1.0 / (s * s))[:, None] / (1.0 + a)
            u = tl.minimum(tl.maximum(v, 0.0), top)
        else:
            u = fidx
            inside = tl.zeros((BLOCK_T, BLOCK_F), tl.float32)
            duds = tl.zeros((BLOCK_T, BLOCK_F), tl.float32)
        lo = tl.minimum(tl.maximum(u.to(tl.int32), 0), F - 2)
        frac = u - lo.to(tl.float32)
        p0 = tl.load(row + lo, mask=mask, other=0.0)
        p1 = tl.load(row + lo + 1, mask=mask, other=0.0)
        r = p0 + frac * (p1 - p0) - x
        if HAS_GAIN:
            r += tl.load(g_ptr + bkt, mask=t_ok, other=0.0)[:, None]
        gh = tl.zeros((BLOCK_T,), tl.float32)
        gl = tl.zeros((BLOCK_T,), tl.float32)
        eh = tl.zeros((BLOCK_T, BLOCK_F), tl.float32)
        el = tl.zeros((BLOCK_T, BLOCK_F), tl.float32)
        if HAS_FILTERS:
            ch = tl.load(f_ptr + 4 * bkt, mask=t_ok, other=0.0)
            gh = tl.load(f_ptr + 4 * bkt + 1, mask=t_ok, other=0.0)
            cl = tl.load(f_ptr + 4 * bkt + 2, mask=t_ok, other=0.0)
            gl = tl.load(f_ptr + 4 * bkt + 3, mask=t_ok, other=0.0)
            # 10 z of each softplus_10 (z = +-2 (f_lin - 0.5 + c)), in the stable form
            # softplus_10(z) = (max(10 z, 0) + log(1 + exp(-|10 z|))) / 10, valid for any c
            f_lin = fidx / top
            yh = 20.0 * (f_lin + ch[:, None] - 0.5)
            yl = -20.0 * (f_lin + cl[:, None] - 0.5)
            eh = tl.exp(-tl.abs(yh))  # here: exp(-|10 z|), and the sigmoid below from it
            el = tl.exp(-tl.abs(yl))
            sph = 0.1 * (tl.maximum(yh, 0.0) + tl.log(1.0 + eh))
            spl = 0.1 * (tl.maximum(yl, 0.0) + tl.log(1.0 + el))
            r += gh[:, None] * sph + gl[:, None] * spl
            eh = tl.where(yh >= 0, 1.0 / (1.0 + eh), eh / (1.0 + eh))  # sigmoid(10 z)
            el = tl.where(yl >= 0, 1.0 / (1.0 + el), el / (1.0 + el))
        else:
            sph = eh
            spl = el
        if HAS_PITCH:
            r += 0.0 * s[:, None]  # a NaN pitch factor gives a NaN error, not a clamped one
        r = tl.where(mask, r, 0.0)
        return r, lo, frac, p1 - p0, inside * duds, eh, el, sph, spl, gh, gl, bkt, t_ok, mask

    @triton.jit
    def _forward(x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, out_ptr, pb_stride,
                 bpl, K, T, F, n_blocks, HAS_PITCH: tl.constexpr, HAS_GAIN: tl.constexpr,
                 HAS_FILTERS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        i = tl.program_id(0)
        tb = tl.program_id(1)
        r = _tile(x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, i, tb, pb_stride,
                  bpl, K, T, F, HAS_PITCH, HAS_GAIN, HAS_FILTERS, BLOCK_T, BLOCK_F)[0]
        tl.store(out_ptr + i * n_blocks + tb, tl.sum(tl.sum(r * r, axis=1), axis=0))

    @triton.jit
    def _backward(x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, grad_ptr, ds_ptr,
                  dg_ptr, df_ptr, dp_ptr, pb_stride, bpl, K, T, F, n_blocks,
                  HAS_PITCH: tl.constexpr, HAS_GAIN: tl.constexpr, HAS_FILTERS: tl.constexpr,
                  NEED_P: tl.constexpr, ROWS: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_F: tl.constexpr):
        i = tl.program_id(0)
        if ROWS:  # every time block of the pair, in turn
            for tb in range(0, n_blocks):
                _backward_block(x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, grad_ptr, ds_ptr,
                                dg_ptr, df_ptr, dp_ptr, i, tb, pb_stride, bpl, K, T, F,
                                HAS_PITCH, HAS_GAIN, HAS_FILTERS, NEED_P, BLOCK_T, BLOCK_F)
        else:
            _backward_block(x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, grad_ptr, ds_ptr,
                            dg_ptr, df_ptr, dp_ptr, i, tl.program_id(1), pb_stride, bpl, K, T,
                            F, HAS_PITCH, HAS_GAIN, HAS_FILTERS, NEED_P, BLOCK_T, BLOCK_F)

    @triton.jit
    def _backward_block(x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, grad_ptr, ds_ptr,
                        dg_ptr, df_ptr, dp_ptr, i, tb, pb_stride, bpl, K, T, F,
                        HAS_PITCH: tl.constexpr, HAS_GAIN: tl.constexpr,
                        HAS_FILTERS: tl.constexpr, NEED_P: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        """The gradients of pair ``i``'s time block ``tb``."""
        r, lo, frac, slope, dudv, sig_h, sig_l, sph, spl, gh, gl, bkt, t_ok, mask = _tile(
            x_ptr, p_ptr, s_ptr, g_ptr, f_ptr, w_ptr, i, tb, pb_stride, bpl, K,
            T, F, HAS_PITCH, HAS_GAIN, HAS_FILTERS, BLOCK_T, BLOCK_F)
        c = tl.load(grad_ptr + i) * 2.0 / (T * F).to(tl.float32)
        cr = c * r
        if HAS_PITCH:
            tl.store(ds_ptr + bkt, tl.sum(cr * slope * dudv, axis=1), mask=t_ok)
        if HAS_GAIN:
            tl.store(dg_ptr + bkt, tl.sum(cr, axis=1), mask=t_ok)
        if HAS_FILTERS:
            tl.store(df_ptr + 4 * bkt, 2.0 * gh * tl.sum(cr * sig_h, axis=1), mask=t_ok)
            tl.store(df_ptr + 4 * bkt + 1, tl.sum(cr * sph, axis=1), mask=t_ok)
            tl.store(df_ptr + 4 * bkt + 2, -2.0 * gl * tl.sum(cr * sig_l, axis=1), mask=t_ok)
            tl.store(df_ptr + 4 * bkt + 3, tl.sum(cr * spl, axis=1), mask=t_ok)
        if NEED_P:
            row = dp_ptr + i * F
            tl.atomic_add(row + lo, cr - cr * frac, mask=mask)
            tl.atomic_add(row + lo + 1, cr * frac, mask=mask)


def _launch_shape(x: Tensor) -> tuple[int, int]:
    frames, n_bins = x.shape[1], x.shape[2]
    return triton.cdiv(frames, BLOCK_T), triton.next_power_of_2(n_bins)


def _flags(s, g, filt) -> dict:
    return {"HAS_PITCH": s is not None, "HAS_GAIN": g is not None,
            "HAS_FILTERS": filt is not None, "BLOCK_T": BLOCK_T}


class FusedError(torch.autograd.Function):
    """``(B, K)`` errors; the arguments are those of :class:`hearproto.kernels.cpu.FusedError`
    (float32, contiguous), on a CUDA device (or the CPU under ``TRITON_INTERPRET=1``)."""

    @staticmethod
    def forward(ctx, x, protos, s, g, filt, weight, bins_per_log):
        batch, frames, n_bins = x.shape
        n_protos = protos.shape[1]
        n_blocks, block_f = _launch_shape(x)
        w = weight.to(device=x.device, dtype=torch.float32).contiguous()
        partial = torch.empty(batch * n_protos, n_blocks, device=x.device, dtype=torch.float32)
        stride = n_protos * n_bins if protos.shape[0] > 1 else 0
        dummy = x  # stands for an absent parameter; never read (its flag is off)
        _forward[(batch * n_protos, n_blocks)](
            x, protos, s if s is not None else dummy, g if g is not None else dummy,
            filt if filt is not None else dummy, w, partial, stride,
            float(bins_per_log), n_protos, frames, n_bins, n_blocks, BLOCK_F=block_f,
            num_warps=NUM_WARPS, **_flags(s, g, filt))
        ctx.save_for_backward(x, protos, s, g, filt)
        ctx.constants = (w, float(bins_per_log))
        return partial.sum(1).view(batch, n_protos) / (frames * n_bins)

    @staticmethod
    def backward(ctx, grad):
        x, protos, s, g, filt = ctx.saved_tensors
        w, bins_per_log = ctx.constants
        needs = ctx.needs_input_grad
        batch, frames, n_bins = x.shape
        n_protos = protos.shape[1]
        n_blocks, block_f = _launch_shape(x)
        ds = torch.empty_like(s) if s is not None else None
        dg = torch.empty_like(g) if g is not None else None
        dfilt = torch.empty_like(filt) if filt is not None else None
        dp = torch.zeros(batch, n_protos, n_bins, device=x.device) if needs[1] else None
        dummy = x
        stride = n_protos * n_bins if protos.shape[0] > 1 else 0
        if BACKWARD not in BACKWARDS:
            raise ValueError(f"BACKWARD must be one of {BACKWARDS}, got {BACKWARD!r}")
        rows = BACKWARD == "rows"
        _backward[(batch * n_protos,) if rows else (batch * n_protos, n_blocks)](
            x, protos, s if s is not None else dummy, g if g is not None else dummy,
            filt if filt is not None else dummy, w,
            grad.to(torch.float32).contiguous(), ds if ds is not None else dummy,
            dg if dg is not None else dummy, dfilt if dfilt is not None else dummy,
            dp if dp is not None else dummy, stride, bins_per_log, n_protos, frames, n_bins,
            n_blocks, NEED_P=dp is not None, ROWS=rows, BLOCK_F=block_f, num_warps=NUM_WARPS,
            **_flags(s, g, filt))
        if dp is not None and protos.shape[0] == 1:
            dp = dp.sum(0, keepdim=True)
        return (None, dp, ds if needs[2] else None, dg if needs[3] else None,
                dfilt if needs[4] else None, None, None)
