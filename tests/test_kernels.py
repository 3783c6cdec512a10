"""The fused reconstruction errors against the torch path in float64 (values and every
gradient), in each of the shapes the model uses; the Triton kernel under Triton's interpreter
when no GPU is here."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from hearproto import kernels
from hearproto.kernels import cpu, fused_available, fused_error, use_backend
from hearproto.kernels import reconstruction_error
from hearproto.transforms import MelBins

BINS = MelBins.from_range(40, 30.0, 8000.0)


def _inputs(batch=3, n_protos=5, frames=21, n_bins=40, per_clip=False, broadcast_k=False,
            seed=0):
    """Leaves of every argument, with pitch factors in (1/e, e) and filters in (-0.25, 0.25)
    as the model makes them, and prototypes of a real spread."""
    g = torch.Generator().manual_seed(seed)
    k_params = 1 if broadcast_k else n_protos
    x = torch.randn(batch, frames, n_bins, generator=g)
    protos = (torch.randn(batch, n_protos, 1, n_bins, generator=g) if per_clip
              else torch.randn(n_protos, n_bins, generator=g))
    pitch = torch.exp(torch.tanh(torch.randn(batch, k_params, frames, generator=g)))
    gain = 0.5 * torch.tanh(torch.randn(batch, k_params, frames, generator=g))
    filters = 0.25 * torch.tanh(torch.randn(batch, k_params, frames, 4, generator=g))
    return [t.requires_grad_() for t in (x, protos, pitch, gain, filters)]


def _errors_and_grads(args, backend, present=(True, True, True), dtype=torch.float32):
    x, protos, pitch, gain, filters = [t.detach().to(dtype).requires_grad_(t is not args[0])
                                       for t in args]
    chosen = [p if on else None for p, on in zip((pitch, gain, filters), present)]
    with use_backend(backend):
        errors = reconstruction_error(x, protos, *chosen, constants=BINS)
    weights = torch.linspace(-1.0, 2.0, errors.numel()).view(errors.shape)
    (errors * weights).sum().backward()
    grads = [protos.grad] + [p.grad if on else None for p, on in zip((pitch, gain, filters),
                                                                      present)]
    return errors.detach(), grads


def _assert_matches(fused, reference, rtol=2e-5, atol=2e-6):
    (errors, grads), (ref_errors, ref_grads) = fused, reference
    torch.testing.assert_close(errors.double(), ref_errors, rtol=rtol, atol=atol)
    for name, grad, ref in zip(("prototypes", "pitch", "gain", "filters"), grads, ref_grads):
        if ref is None:
            assert grad is None, name
            continue
        scale = float(ref.abs().max())
        torch.testing.assert_close(grad.double(), ref, rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


needs_cpu_kernel = pytest.mark.skipif(not fused_available("cpu"),
                                      reason="no C compiler for the fused CPU kernel")


@needs_cpu_kernel
@pytest.mark.parametrize("case", ["all", "per_clip", "broadcast_k", "one_prototype"])
def test_cpu_kernel_matches_the_torch_path(case):
    args = _inputs(per_clip=case == "per_clip", broadcast_k=case == "broadcast_k",
                   n_protos=1 if case == "one_prototype" else 5)
    reference = _errors_and_grads(args, "torch", dtype=torch.float64)
    _assert_matches(_errors_and_grads(args, "fused"), reference)


@needs_cpu_kernel
@pytest.mark.parametrize("present", [(False, False, False), (True, False, False),
                                     (False, True, False), (False, False, True),
                                     (True, True, False)])
def test_cpu_kernel_with_transformations_off(present):
    args = _inputs(seed=1)
    reference = _errors_and_grads(args, "torch", present, torch.float64)
    _assert_matches(_errors_and_grads(args, "fused", present), reference)


@needs_cpu_kernel
def test_cpu_kernel_identity_and_strided_frames():
    """At s = 1, no gain and no filters the error is the plain mean squared difference; frames
    sliced with a stride (training's error_stride) are read correctly."""
    x, protos, *_ = _inputs(frames=32, seed=2)
    x = x.detach()
    ones = torch.ones(3, 5, 32)
    with use_backend("fused"):
        errors = reconstruction_error(x, protos.detach(), ones, constants=BINS)
        strided = reconstruction_error(x[:, 1::4], protos.detach(), ones[:, :, 1::4],
                                       constants=BINS)
    direct = (protos.detach()[None, :, None] - x[:, None]).square().mean((-2, -1))
    torch.testing.assert_close(errors, direct, rtol=1e-5, atol=1e-6)
    direct = (protos.detach()[None, :, None] - x[:, None, 1::4]).square().mean((-2, -1))
    torch.testing.assert_close(strided, direct, rtol=1e-5, atol=1e-6)


@needs_cpu_kernel
def test_cpu_kernel_bf16_inputs_accumulate_in_float32():
    args = _inputs(seed=3)
    reference, _ = _errors_and_grads(args, "torch", dtype=torch.float64)
    x, protos, pitch, gain, filters = [t.detach().bfloat16() for t in args]
    with use_backend("fused"):
        errors = reconstruction_error(x, protos, pitch, gain, filters, BINS)
    assert errors.dtype == torch.bfloat16
    # bf16 rounding of the inputs (8 bits of mantissa), not of the sums
    torch.testing.assert_close(errors.double(), reference, rtol=2e-2, atol=1e-2)


def test_the_torch_path_takes_what_the_kernels_do_not():
    """float64, an input that needs a gradient, non-finite or out-of-range parameters: the torch
    path (so float64 gradient checks stay exact); `fused` then says why it cannot."""
    x, protos, pitch, gain, filters = [t.detach() for t in _inputs()]
    assert fused_error(x.double(), protos.double(), None, None, None, BINS) is None
    assert fused_error(x.requires_grad_(), protos, None, None, None, BINS) is None
    x.requires_grad_(False)
    far = filters.clone()
    far[0, 0, 0, 0] = 5.0
    assert fused_error(x, protos, pitch, gain, far, BINS) is None
    broken = pitch.clone()
    broken[1, 2, 3] = float("nan")
    assert fused_error(x, protos, broken, gain, filters, BINS) is None
    with use_backend("fused"), pytest.raises(RuntimeError, match="no fused kernel"):
        reconstruction_error(x.double(), protos.double(), constants=BINS)
    with use_backend("torch"):
        assert fused_error(x, protos, pitch, gain, filters, BINS) is None
    with pytest.raises(ValueError, match="backend must be one of"):
        with use_backend("cuda"):
            pass


def test_model_errors_agree_between_kernels():
    """PrototypeModel.errors and target_errors: the same numbers with either kernel."""
    from hearproto.frontend import FrontEnd
    from hearproto.model import TRANSFORMATIONS, PrototypeModel

    torch.manual_seed(0)
    model = PrototypeModel(4, FrontEnd(sample_rate=16_000, n_fft=512, n_mels=32))
    for name in TRANSFORMATIONS:
        model.activate(name)
    with torch.no_grad():
        model.prototypes.normal_()
    x = torch.randn(2, 48, 32)
    targets = torch.tensor([1, 3])
    results = {}
    for backend in ("torch", "fused"):
        with use_backend(backend), torch.no_grad():
            results[backend] = (model.errors(x)[0], model.target_errors(x, targets))
    torch.testing.assert_close(results["fused"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["fused"][1], results["torch"][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["fused"][1], results["fused"][0][[0, 1], targets])


def test_missing_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(cpu.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C compiler found"):
        cpu.build_library(tmp_path)


def test_backend_from_the_environment(monkeypatch):
    monkeypatch.setenv("HEARPROTO_KERNEL", "torch")
    assert kernels.backend() == "torch"
    monkeypatch.setenv("HEARPROTO_KERNEL", "fast")
    with pytest.raises(ValueError, match="HEARPROTO_KERNEL must be one of"):
        kernels.backend()


# -- the Triton kernel --------------------------------------------------------------------------

def _triton_module():
    """hearproto.kernels.cuda, compiled for the GPU if there is one, else under Triton's
    interpreter, which runs the kernels on CPU tensors (conftest.py sets TRITON_INTERPRET)."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU, and TRITON_INTERPRET was not set before triton was imported")
    from hearproto.kernels import cuda
    return cuda


@pytest.mark.parametrize("backward", ["blocks", "rows"])
@pytest.mark.parametrize("case", ["all", "per_clip", "broadcast_k", "pitch_off", "only_gain"])
def test_triton_kernel_matches_the_torch_path(case, backward, monkeypatch):
    cuda = _triton_module()
    monkeypatch.setattr(cuda, "BACKWARD", backward)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = _inputs(batch=2, n_protos=3, frames=19, n_bins=40, per_clip=case == "per_clip",
                   broadcast_k=case == "broadcast_k", seed=4)
    present = {"pitch_off": (False, True, True), "only_gain": (False, True, False)}.get(
        case, (True, True, True))
    reference = _errors_and_grads(args, "torch", present, torch.float64)

    x, protos, pitch, gain, filters = [t.detach().to(device) for t in args]
    n_protos = protos.shape[1] if protos.ndim == 4 else protos.shape[0]
    table = (protos[None] if protos.ndim == 2 else protos[:, :, 0]).contiguous()
    table.requires_grad_()
    leaves = [None if not on else p.expand(2, n_protos, *p.shape[2:]).contiguous()
              .requires_grad_() for p, on in zip((pitch, gain, filters), present)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the interpreter's own warnings
        errors = cuda.FusedError.apply(x, table, *leaves, BINS.weight.to(device),
                                       BINS.bins_per_log)
    weights = torch.linspace(-1.0, 2.0, errors.numel(), device=device).view(errors.shape)
    (errors * weights).sum().backward()
    proto_grad = table.grad if protos.ndim == 4 else table.grad[0]
    if protos.ndim == 4:
        proto_grad = proto_grad[:, :, None]
    grads = [proto_grad.cpu()]
    for leaf, original, on in zip(leaves, (pitch, gain, filters), present):
        if not on:
            grads.append(None)
            continue
        grad = leaf.grad.cpu()
        if original.shape[1] == 1:  # the expand's backward: summed over the prototypes
            grad = grad.sum(1, keepdim=True)
        grads.append(grad)
    _assert_matches((errors.detach().cpu(), grads), reference)


def test_triton_kernel_takes_any_cutoff_and_propagates_nan():
    """The Triton kernel uses the stable softplus (no range check, which would synchronise with
    the GPU): a cutoff of 5 gives the torch path's error; a NaN pitch factor gives NaN for its
    (clip, prototype) only."""
    cuda = _triton_module()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, protos, pitch, gain, filters = [t.detach() for t in _inputs(batch=2, n_protos=3,
                                                                    frames=5, seed=5)]
    filters[0, 1, 2, 0] = 5.0
    filters[1, 0, 3, 2] = -4.0
    with use_backend("torch"):
        reference = reconstruction_error(x.double(), protos.double(), pitch.double(),
                                         gain.double(), filters.double(), BINS)
    args = [t.to(device).contiguous() for t in (x, protos[None], pitch, gain, filters)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        errors = cuda.FusedError.apply(*args, BINS.weight.to(device), BINS.bins_per_log).cpu()
        torch.testing.assert_close(errors.double(), reference, rtol=2e-5, atol=2e-6)
        args[2][1, 2, 0] = float("nan")
        errors = cuda.FusedError.apply(*args, BINS.weight.to(device), BINS.bins_per_log).cpu()
    assert errors[1, 2].isnan() and errors.isnan().sum() == 1
