"""The encoder's fused first level (hearproto.kernels.encoder) against the modules it stands
for, run in float64 on the torch path: outputs, every parameter's gradient and the batch
norm's running statistics, in training and in evaluation mode."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from hearproto.kernels import cpu, use_backend
from hearproto.kernels.encoder import SOURCE, first_level_applies
from hearproto.model import Encoder

pytestmark = pytest.mark.skipif(
    not first_level_applies(torch.zeros(1, 16, 16), *Encoder(16).levels[0][::2]),
    reason="no C compiler: the fused first level is not built here")


def _encoder(n_mels: int, momentum: float | None = 0.1, seed: int = 0) -> Encoder:
    """An encoder whose batch norms have scales and shifts away from 1 and 0."""
    torch.manual_seed(seed)
    encoder = Encoder(n_mels).train()
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
                module.momentum = momentum
    return encoder


def _outputs_and_grads(encoder: Encoder, x: torch.Tensor, backend: str
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The bottleneck and skips, and the gradients of a loss that weighs every output
    element differently (a plain sum would hide errors that cancel)."""
    with use_backend(backend):
        bottleneck, skips = encoder(x)
    outputs = [bottleneck, *skips]
    g = torch.Generator().manual_seed(1)
    loss = sum((out * torch.randn(out.shape, generator=g).to(out.dtype)).sum()
               for out in outputs)
    return outputs, list(torch.autograd.grad(loss, list(encoder.parameters())))


FIRST_LEVEL = ("output 1", "gradient of levels.0.", "gradient of pools.0.",
               "gradient of downs.0.0.")


def _compare(fused: Encoder, reference: Encoder, x: torch.Tensor,
             first_level_only: bool = False) -> None:
    """The fused float32 numbers stay as close to the float64 ones as the modules' own
    float32 numbers do (the deep batch norms amplify float32 rounding in small batches).
    ``first_level_only``: the first skip and the first level's gradients only (in maps too
    small for the deeper levels to be well conditioned)."""
    plain = copy.deepcopy(fused)
    outputs, grads = _outputs_and_grads(fused, x, "fused")
    plain_outputs, plain_grads = _outputs_and_grads(plain, x, "torch")
    ref_outputs, ref_grads = _outputs_and_grads(reference, x.double(), "torch")
    names = [f"output {i}" for i in range(len(outputs))]
    names += [f"gradient of {name}" for name, _ in fused.named_parameters()]
    for name, ours, plain32, exact in zip(names, outputs + grads, plain_outputs + plain_grads,
                                          ref_outputs + ref_grads):
        if first_level_only and not name.startswith(FIRST_LEVEL):
            continue
        scale = exact.abs().max().item()
        allowed = 4 * (plain32.double() - exact).abs().max().item() + 1e-5 * scale
        error = (ours.double() - exact).abs().max().item()
        assert error <= allowed, f"{name}: off by {error:.3g} (float32 modules: {allowed:.3g})"


@pytest.mark.parametrize("shape", [(4, 32, 128), (3, 48, 64), (2, 16, 16)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_mode_matches_the_modules(shape, momentum):
    fused = _encoder(shape[2], momentum)
    reference = copy.deepcopy(fused).double()
    x = torch.rand(shape)
    for step in range(2):  # the second step normalises with running statistics moved once
        _compare(fused, reference, x + 0.1 * step, first_level_only=shape[1] == 16)
    norm, ref_norm = fused.levels[0][2], reference.levels[0][2]
    assert int(norm.num_batches_tracked) == int(ref_norm.num_batches_tracked) == 2
    torch.testing.assert_close(norm.running_mean.double(), ref_norm.running_mean,
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(norm.running_var.double(), ref_norm.running_var,
                               rtol=1e-5, atol=1e-7)


def test_evaluation_mode_matches_the_modules():
    """Running statistics as constants: the outputs, and gradients without the batch terms."""
    fused = _encoder(64)
    with torch.no_grad():
        fused(torch.rand(8, 32, 64))  # running statistics away from their start
    fused.eval()
    reference = copy.deepcopy(fused).double()
    _compare(fused, reference, torch.rand(3, 32, 64))
    assert int(fused.levels[0][2].num_batches_tracked) == 1  # evaluation does not count


def test_the_fused_level_is_used_where_it_applies_only(monkeypatch):
    encoder = _encoder(32)
    conv, _, norm = encoder.levels[0]
    x = torch.rand(2, 16, 32)
    assert first_level_applies(x, conv, norm)
    assert not first_level_applies(x.double(), conv, norm)
    assert not first_level_applies(x.requires_grad_(), conv, norm)
    with torch.no_grad():  # x's own gradient is not asked for there
        assert first_level_applies(x, conv, norm)
    with use_backend("torch"):
        assert not first_level_applies(x.detach(), conv, norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not first_level_applies(x.detach(), conv, norm)
    calls = []
    monkeypatch.setattr("hearproto.model.first_level", lambda *args: calls.append(args))
    with use_backend("torch"):
        encoder(x.detach())
    assert not calls  # the modules ran (the stand-in would have returned None and failed)


def test_without_a_compiler_the_modules_run(tmp_path, monkeypatch):
    """One warning names the kernel, and the encoder gives the modules' numbers."""
    encoder = _encoder(32)
    x = torch.rand(2, 16, 32)
    with use_backend("torch"):
        expected = encoder.eval()(x)[0]
    monkeypatch.setattr(cpu, "_LIBRARIES", {})
    monkeypatch.setattr(cpu, "_cache_dir", lambda: tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(cpu.shutil, "which", lambda name: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = encoder(x)[0]
    assert any(SOURCE.name in str(w.message) for w in caught)
    torch.testing.assert_close(got, expected)
