"""The spectral transformations: identities, the true pitch scaling, filter shapes and
bounds, gradients, batching, and chunked reconstruction errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck
from torch.nn import functional as nnf

from hearproto.frontend import LogMel, PRESETS
from hearproto.kernels import use_backend
from hearproto.kernels import reconstruction_error
from hearproto.transforms import (SOFTPLUS_BETA, MelBins, filter_params_from_raw, gain, gain_from_raw, high_filter, low_filter, mel_bin_constants, pitch_from_raw, pitch_shift, pitch_source_index, reconstruct, spectral_filters)

F = 128
SMALL = dict(B=2, K=3, T=4, F=10)


def mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def small_constants() -> MelBins:
    return MelBins.from_range(SMALL["F"], 0.0, 8000.0)


def random_inputs(B=2, K=3, T=4, n_bins=10, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype).to(device)

    return dict(
        x=rand(B, T, n_bins),
        prototypes=rand(K, n_bins),
        pitch=0.6 + rand(B, K, T),  # s in (0.6, 1.6)
        gain=gain_from_raw(torch.randn(B, K, T, generator=gen, dtype=dtype)).to(device),
        filters=filter_params_from_raw(
            torch.randn(B, K, T, 4, generator=gen, dtype=dtype)).to(device),
    )


# --------------------------------------------------------------------------------------------
# Constants


@pytest.mark.parametrize("preset", ["speakers", "instruments"])
def test_mel_bins_match_the_front_end(preset):
    frontend = PRESETS[preset]
    constants = mel_bin_constants(frontend)
    centres = frontend.mel_frequencies()
    np.testing.assert_allclose(constants.centres_hz.numpy(), centres, rtol=1e-12)
    np.testing.assert_allclose(constants.weight.numpy(), centres / (700 + centres), rtol=1e-12)
    # the source index is the bin of mel(hz / s), on the bins' equal mel spacing
    s = 1.7
    mels = mel(centres)
    expected = (mel(centres / s) - mels[0]) / (mels[1] - mels[0])
    got = pitch_source_index(torch.tensor(s, dtype=torch.float64), constants)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Identities


def test_gain_identity_and_broadcast():
    protos = torch.randn(3, F)
    out = gain(protos, torch.zeros(2, 3, 5))
    assert out.shape == (2, 3, 5, F)
    assert torch.equal(out, protos[None, :, None].expand(2, 3, 5, F))
    assert torch.equal(gain_from_raw(torch.zeros(4)), torch.zeros(4))
    g = torch.randn(2, 3, 5)
    torch.testing.assert_close(gain(protos, g), protos[None, :, None] + g[..., None])
    assert float(gain_from_raw(torch.tensor(1e3))) == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pitch_identity_is_bit_exact(dtype):
    constants = mel_bin_constants(PRESETS["instruments"])
    protos = torch.randn(6, F, dtype=dtype)
    s = pitch_from_raw(torch.zeros(2, 6, 7, dtype=dtype))
    assert torch.equal(s, torch.ones_like(s))
    expected = protos[None, :, None].expand(2, 6, 7, F)
    assert torch.equal(pitch_shift(protos, s, constants), expected)
    full = torch.randn(2, 6, 7, F, dtype=dtype)
    assert torch.equal(pitch_shift(full, s, constants), full)
    assert pitch_shift(protos, s, constants).dtype == dtype
    # the identity is no dead end: s still gets a gradient there (the networks start at it)
    s = s.clone().requires_grad_()
    (pitch_shift(protos, s, constants) * torch.randn(2, 6, 7, F, dtype=dtype)).sum().backward()
    assert (s.grad != 0).all()


def test_filters_identity_at_zero_gain():
    params = torch.zeros(2, 3, 5, 4)
    params[..., 0] = torch.randn(2, 3, 5)  # cutoffs do not matter when G = 0
    params[..., 2] = torch.randn(2, 3, 5)
    assert torch.equal(high_filter(params[..., 0:2], F), torch.zeros(2, 3, 5, F))
    assert torch.equal(low_filter(params[..., 2:4], F), torch.zeros(2, 3, 5, F))
    assert torch.equal(spectral_filters(params, F), torch.zeros(2, 3, 5, F))
    assert torch.equal(filter_params_from_raw(torch.zeros(2, 3, 5, 4)), torch.zeros(2, 3, 5, 4))


def test_reconstruct_at_raw_zero_is_the_prototypes():
    constants = mel_bin_constants(PRESETS["speakers"])
    protos = torch.rand(4, F)
    zeros = torch.zeros(2, 4, 3)
    out = reconstruct(protos, pitch=pitch_from_raw(zeros), gain=gain_from_raw(zeros),
                      filters=filter_params_from_raw(torch.zeros(2, 4, 3, 4)),
                      constants=constants)
    assert torch.equal(out, protos[None, :, None].expand(2, 4, 3, F))
    assert torch.equal(reconstruct(protos), protos[None, :, None])
    x = torch.rand(2, 3, F)
    expected = (x[:, None] - protos[None, :, None]).square().mean((-2, -1))
    torch.testing.assert_close(reconstruction_error(x, protos), expected)


@pytest.mark.parametrize("preset", ["instruments", "speakers"])
def test_our_order_of_transformations_gives_the_papers_eq5(preset):
    """reconstruct applies pitch, gain, filters; Eq. 5 applies gain, pitch, low, high. The two
    agree: the pitch shift interpolates linearly with weights summing to one (borders
    clamped), so it carries a constant gain through, and the filters come after the pitch in
    both and add, so their order does not matter."""
    torch.manual_seed(0)
    constants = mel_bin_constants(PRESETS[preset])
    n_bins = PRESETS[preset].n_mels
    protos = torch.rand(3, n_bins, dtype=torch.float64)
    raw = torch.randn(2, 3, 5, dtype=torch.float64) * 3
    s, g = pitch_from_raw(raw), gain_from_raw(raw.flip(-1))
    filters = filter_params_from_raw(torch.randn(2, 3, 5, 4, dtype=torch.float64) * 3)
    ours = reconstruct(protos, pitch=s, gain=g, filters=filters, constants=constants)
    gained = protos[None, :, None, :] + g[..., None]  # T_gain(P_k) first, per time step
    paper = pitch_shift(gained, s, constants)
    paper = paper + low_filter(filters[..., 2:4], n_bins)
    paper = paper + high_filter(filters[..., 0:2], n_bins)
    torch.testing.assert_close(ours, paper, rtol=0, atol=1e-12)
    assert (s - 1).abs().max() > 0.1 and g.abs().max() > 0.1  # transformations that act


# --------------------------------------------------------------------------------------------
# Pitch shift: a true frequency scaling


SHIFTS = (0.5, 0.8, 1.25, 2.0)


def sine_frame(frontend_name: str, hz: float) -> torch.Tensor:
    logmel = LogMel.from_frontend(PRESETS[frontend_name])
    sr = PRESETS[frontend_name].sample_rate
    t = np.arange(8192) / sr
    frames = logmel(0.5 * np.sin(2 * np.pi * hz * t))
    return frames[frames.shape[0] // 2]  # (F,)


@pytest.mark.parametrize("preset, hz", [("speakers", 1000.0), ("instruments", 1500.0)])
def test_pitch_moves_a_sine_peak_to_s_times_its_frequency(preset, hz):
    constants = mel_bin_constants(PRESETS[preset])
    centres = constants.centres_hz.numpy()
    frame = sine_frame(preset, hz)
    assert abs(int(frame.argmax()) - int(np.abs(centres - hz).argmin())) <= 1
    s = torch.tensor(SHIFTS).view(1, 1, -1)
    shifted = pitch_shift(frame[None], s, constants)[0, 0]  # (len(SHIFTS), F)
    for i, factor in enumerate(SHIFTS):
        target = int(np.abs(centres - factor * hz).argmin())
        assert abs(int(shifted[i].argmax()) - target) <= 1, (factor, target)


@pytest.mark.parametrize("hz", [300.0, 1000.0, 2500.0])
def test_pitch_moves_a_mel_bump_to_s_times_its_frequency(hz):
    constants = mel_bin_constants(PRESETS["speakers"])
    centres = constants.centres_hz.numpy()
    mels = mel(centres)
    bump = torch.tensor(np.exp(-0.5 * ((mels - mel(hz)) / (1.5 * (mels[1] - mels[0]))) ** 2))
    s = torch.tensor((*SHIFTS, 1 / math.e + 1e-6, math.e - 1e-6), dtype=torch.float64)
    shifted = pitch_shift(bump[None], s.view(1, 1, -1), constants)[0, 0]
    for i, factor in enumerate(s.tolist()):
        if not centres[0] < factor * hz < centres[-1]:
            continue
        target = int(np.abs(centres - factor * hz).argmin())
        assert abs(int(shifted[i].argmax()) - target) <= 1, (factor, target)


def test_pitch_shift_is_monotone():
    constants = mel_bin_constants(PRESETS["instruments"])
    increasing = torch.rand(F, dtype=torch.float64).cumsum(0)
    s = torch.linspace(1 / math.e, math.e, 25, dtype=torch.float64)
    out = pitch_shift(increasing[None], s.view(1, 1, -1), constants)[0, 0]  # (25, F)
    assert (out.diff(dim=-1) >= 0).all()  # still increasing in frequency
    assert (out.diff(dim=0) <= 0).all()  # a higher s reads lower bins
    # the source index grows with f and falls with s
    index = pitch_source_index(s, constants)
    assert (index.diff(dim=-1) > 0).all() and (index.diff(dim=0) < 0).all()


@pytest.mark.parametrize("factor", [0.6, 0.8, 1.25, 1.6])
def test_pitch_shift_there_and_back_restores_a_smooth_prototype(factor):
    constants = mel_bin_constants(PRESETS["speakers"])
    centres = constants.centres_hz.numpy()
    bins = torch.arange(F, dtype=torch.float64)
    smooth = torch.sin(2 * math.pi * bins / 64) + 0.5 * torch.cos(2 * math.pi * bins / 45)
    there = pitch_shift(smooth[None], torch.full((1, 1, 1), factor, dtype=torch.float64),
                        constants)
    back = pitch_shift(there[0, :, 0], torch.full((1, 1, 1), 1 / factor, dtype=torch.float64),
                       constants)[0, 0, 0]
    inside = (centres * max(factor, 1 / factor) < centres[-1]) & (
        centres / max(factor, 1 / factor) > centres[0])
    assert inside.sum() > F // 2
    err = (back - smooth)[torch.from_numpy(inside)].abs().max()
    assert err < 0.02
    # the border is clamped: far beyond it, the output is the edge value
    for s in (1 / math.e, math.e):
        far = pitch_shift(smooth[None], torch.full((1, 1, 1), s, dtype=torch.float64),
                          constants)[0, 0, 0]
        index = pitch_source_index(torch.tensor(s, dtype=torch.float64), constants)
        below, above = index <= 0, index >= F - 1
        assert below.any() or above.any()
        assert torch.equal(far[below], smooth[0].expand(int(below.sum())))
        assert torch.equal(far[above], smooth[-1].expand(int(above.sum())))


def test_pitch_table_and_full_input_agree():
    constants = small_constants()
    inp = random_inputs()
    protos, s = inp["prototypes"], inp["pitch"]
    full = protos[None, :, None].expand(2, 3, 4, SMALL["F"]).contiguous()
    torch.testing.assert_close(pitch_shift(protos, s, constants),
                               pitch_shift(full, s, constants), rtol=0, atol=0)
    # s broadcast over the batch and over time
    one = pitch_shift(protos, s[:1, :, :1], constants)
    assert one.shape == (1, 3, 1, SMALL["F"])
    expanded = pitch_shift(protos, s[:1, :, :1].expand(1, 3, 4), constants)
    torch.testing.assert_close(one.expand(1, 3, 4, SMALL["F"]), expanded, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Filters


def test_filters_shape_monotonicity_and_bound():
    gen = torch.Generator().manual_seed(3)
    raw = 3 * torch.randn(5, 6, 7, 4, generator=gen, dtype=torch.float64)
    params = filter_params_from_raw(raw)
    c_h, g_h, c_l, g_l = params.unbind(-1)
    high = high_filter(params[..., 0:2], F)
    low = low_filter(params[..., 2:4], F)
    assert high.shape == low.shape == (5, 6, 7, F)
    # monotone: a gain G >= 0 gives high non-decreasing, low non-increasing in f
    assert (high.diff(dim=-1)[g_h > 0] >= 0).all()
    assert (high.diff(dim=-1)[g_h < 0] <= 0).all()
    assert (low.diff(dim=-1)[g_l > 0] <= 0).all()
    assert (low.diff(dim=-1)[g_l < 0] >= 0).all()

    # bound: softplus is increasing, the argument is largest at f = 1 (high) or f = 0 (low):
    # |high| <= |G_h| softplus(1 + 2 c_h), |low| <= |G_l| softplus(1 - 2 c_l), both attained.
    def sp(v):
        return nnf.softplus(v, beta=SOFTPLUS_BETA)

    high_max = g_h.abs() * sp(1 + 2 * c_h)
    low_max = g_l.abs() * sp(1 - 2 * c_l)
    torch.testing.assert_close(high.abs().amax(-1), high_max)
    torch.testing.assert_close(low.abs().amax(-1), low_max)
    torch.testing.assert_close(high[..., -1].abs(), high_max)
    torch.testing.assert_close(low[..., 0].abs(), low_max)
    # with |c|, |G| < 0.25 from the raw map: |filter| < 0.25 softplus(1.5), the sum < twice that
    bound = 0.25 * float(sp(torch.tensor(1.5, dtype=torch.float64)))
    assert bound == pytest.approx(0.375, abs=1e-7)
    assert high.abs().max() < bound and low.abs().max() < bound
    assert spectral_filters(params, F).abs().max() < 2 * bound
    torch.testing.assert_close(spectral_filters(params, F), high + low)


def test_filter_formula():
    params = torch.tensor([[[[0.1, 0.2, -0.05, -0.15]]]], dtype=torch.float64)
    f = torch.linspace(0, 1, 9, dtype=torch.float64)
    high = 0.2 * torch.log1p(torch.exp(10 * 2 * (f - 0.5 + 0.1))) / 10
    low = -0.15 * torch.log1p(torch.exp(-10 * 2 * (f - 0.5 - 0.05))) / 10
    torch.testing.assert_close(high_filter(params[..., :2], 9)[0, 0, 0], high)
    torch.testing.assert_close(low_filter(params[..., 2:], 9)[0, 0, 0], low)


# --------------------------------------------------------------------------------------------
# Gradients


def test_gradcheck_each_transformation():
    constants = small_constants()
    inp = {k: v.requires_grad_() for k, v in random_inputs().items()}
    protos, s, g, filt = inp["prototypes"], inp["pitch"], inp["gain"], inp["filters"]
    n = SMALL["F"]
    full = (torch.rand(2, 3, 4, n, dtype=torch.float64)).requires_grad_()
    assert gradcheck(lambda p, s_: pitch_shift(p, s_, constants), (protos, s))
    assert gradcheck(lambda m, s_: pitch_shift(m, s_, constants), (full, s))
    assert gradcheck(gain, (protos, g))
    assert gradcheck(gain, (full, g))
    assert gradcheck(lambda p: high_filter(p, n), (filt[..., :2],))
    assert gradcheck(lambda p: low_filter(p, n), (filt[..., 2:],))
    assert gradcheck(lambda p: spectral_filters(p, n), (filt,))
    for raw_map in (gain_from_raw, pitch_from_raw, filter_params_from_raw):
        assert gradcheck(raw_map, (torch.randn(2, 3, dtype=torch.float64, requires_grad=True),))
    assert gradcheck(lambda *a: reconstruct(*a, constants=constants), (protos, s, g, filt))


@pytest.mark.parametrize("k_chunk", [None, 1, 2])
def test_gradcheck_reconstruction_error(k_chunk):
    constants = small_constants()
    inp = {k: v.requires_grad_() for k, v in random_inputs().items()}

    def fn(x, p, s, g, filt):
        return reconstruction_error(x, p, s, g, filt, constants=constants, k_chunk=k_chunk)

    assert gradcheck(fn, tuple(inp.values()))


# --------------------------------------------------------------------------------------------
# Batching and chunking


def test_batch_items_are_independent():
    constants = small_constants()
    inp = random_inputs(B=3)
    everything = reconstruct(inp["prototypes"], inp["pitch"], inp["gain"], inp["filters"],
                             constants)
    errors = reconstruction_error(**inp, constants=constants)
    for b in range(3):
        one = reconstruct(inp["prototypes"], inp["pitch"][b:b + 1], inp["gain"][b:b + 1],
                          inp["filters"][b:b + 1], constants)
        torch.testing.assert_close(everything[b:b + 1], one, rtol=0, atol=0)
        item = {k: (v if k == "prototypes" else v[b:b + 1]) for k, v in inp.items()}
        torch.testing.assert_close(errors[b:b + 1],
                                   reconstruction_error(**item, constants=constants))
    # and each prototype alone
    for k in range(3):
        alone = reconstruct(inp["prototypes"][k:k + 1], inp["pitch"][:, k:k + 1],
                            inp["gain"][:, k:k + 1], inp["filters"][:, k:k + 1], constants)
        torch.testing.assert_close(everything[:, k:k + 1], alone, rtol=0, atol=0)


@pytest.mark.parametrize("k_chunk", [1, 3, 4, 16])
@pytest.mark.parametrize("transforms", ["all", "none", "gain"])
def test_chunked_error_equals_unchunked(k_chunk, transforms):
    constants = mel_bin_constants(PRESETS["speakers"])
    inp = random_inputs(B=3, K=10, T=6, n_bins=F, dtype=torch.float32, seed=1)
    if transforms == "none":
        inp.update(pitch=None, gain=None, filters=None)
    elif transforms == "gain":
        inp.update(pitch=None, filters=None)
    leaves = {k: v.requires_grad_() for k, v in inp.items() if v is not None}

    def run(chunk):
        err = reconstruction_error(**inp, constants=constants, k_chunk=chunk)
        weights = torch.linspace(0.5, 1.5, err.numel()).view_as(err)
        grads = torch.autograd.grad((err * weights).sum(), list(leaves.values()))
        return err, grads

    err_full, grads_full = run(None)
    err_chunk, grads_chunk = run(k_chunk)
    assert err_full.shape == (3, 10)
    torch.testing.assert_close(err_chunk, err_full, rtol=1e-6, atol=1e-9)
    for name, a, b in zip(leaves, grads_chunk, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()),
                                   msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        torch.testing.assert_close(
            reconstruction_error(**inp, constants=constants, k_chunk=k_chunk), err_full,
            rtol=1e-6, atol=1e-9)


def test_chunking_keeps_one_chunk_of_activations():
    """Bytes saved for backward: with checkpointed chunks only the inputs are kept."""
    constants = mel_bin_constants(PRESETS["speakers"])
    inp = random_inputs(B=2, K=16, T=8, n_bins=F, dtype=torch.float32)
    for v in inp.values():
        v.requires_grad_()

    def saved_bytes(k_chunk):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            reconstruction_error(**inp, constants=constants, k_chunk=k_chunk)
        return total

    full_size = 2 * 16 * 8 * F * 4  # one float32 (B, K, T, F) tensor
    assert saved_bytes(None) > 5 * full_size
    assert saved_bytes(4) < full_size


def test_bad_arguments():
    constants = small_constants()
    protos = torch.rand(3, SMALL["F"] + 1)
    with pytest.raises(ValueError):
        pitch_shift(protos, torch.ones(1, 3, 1), constants)
    with pytest.raises(ValueError):
        reconstruct(torch.rand(3, SMALL["F"]), pitch=torch.ones(1, 3, 1))
    with pytest.raises(ValueError):
        reconstruction_error(torch.rand(1, 2, SMALL["F"]), torch.rand(3, SMALL["F"]), k_chunk=0)


# --------------------------------------------------------------------------------------------
# Devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    """Each device against one reference, the CPU's torch path in float64, compared on the
    CPU (float32 through the fused kernels: C on the CPU, Triton on CUDA)."""
    constants = mel_bin_constants(PRESETS["speakers"])
    base = random_inputs(B=2, K=5, T=6, n_bins=F, dtype=torch.float64, seed=4)
    x = base.pop("x")  # an input without gradient, as in training

    def run(device: str, cast: torch.dtype, backend: str) -> list[Tensor]:
        leaves = {k: v.detach().to(device, cast).requires_grad_() for k, v in base.items()}
        with use_backend(backend):
            err = reconstruction_error(x.to(device, cast), **leaves,
                                       constants=constants.to(device, cast), k_chunk=2)
        assert err.device.type == device and err.dtype == cast
        grads = torch.autograd.grad(err.sum(), list(leaves.values()))
        return [t.detach().cpu().double() for t in (err, *grads)]

    reference = run("cpu", torch.float64, "torch")
    # float32: each per-time gradient is a sum over the F bins of terms that cancel, so its
    # rounding error scales with F times the largest term, not with the result; with a few
    # ulps per term from the GPU's exp, log and division, 8 F eps of the largest gradient
    # (1.2e-4 of it). Measured on an H200 (2026-11-28): 1.1e-5 of it.
    eps = torch.finfo(torch.float32).eps
    tolerance = ({"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64
                 else {"rtol": 1e-4, "atol": 8 * F * eps})
    for device in ("cpu", "cuda"):
        for got, want in zip(run(device, dtype, "auto"), reference):
            torch.testing.assert_close(got, want, rtol=tolerance["rtol"],
                                       atol=tolerance["atol"] * float(want.abs().max()))
    s_one = torch.ones(2, 5, 6, device="cuda", dtype=dtype)
    prototypes = base["prototypes"].detach().to("cuda", dtype)
    assert torch.equal(pitch_shift(prototypes, s_one, constants),
                       prototypes[None, :, None].expand(2, 5, 6, F))


def test_compiled_error_matches_eager():
    """The torch.compile'd chunks give the eager values and gradients (or fall back)."""
    from hearproto.frontend import PRESETS
    from hearproto.kernels import reconstruction_error
    from hearproto.transforms import mel_bin_constants

    torch.manual_seed(0)
    constants = mel_bin_constants(PRESETS["speakers"])
    x = torch.rand(2, 8, 128)
    inputs = [torch.rand(5, 128), torch.exp(0.1 * torch.randn(2, 5, 8)),
              0.1 * torch.randn(2, 5, 8), 0.1 * torch.randn(2, 5, 8, 4)]
    results = []
    for compiled in (False, True):
        leaves = [t.clone().requires_grad_() for t in inputs]
        errors = reconstruction_error(x, leaves[0], *leaves[1:], constants=constants, k_chunk=2,
                                      compiled=compiled)
        errors.sum().backward()
        results.append((errors.detach(), [t.grad for t in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for eager, fused in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(eager, fused, rtol=1e-4, atol=1e-6)
