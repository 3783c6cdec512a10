"""The prototype model: size, identity at start, shapes, initialisation, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from hearproto.frontend import PRESETS
from hearproto.model import TRANSFORMATIONS, PrototypeModel
from hearproto.training.initialisation import init_prototypes


def full_model(k: int = 5, preset: str = "speakers") -> PrototypeModel:
    torch.manual_seed(0)
    model = PrototypeModel(k, PRESETS[preset])
    for name in TRANSFORMATIONS:
        model.activate(name)
    return model


def test_parameter_count_matches_the_paper():
    model = PrototypeModel(128, PRESETS["speakers"])
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 545_800) / 545_800 < 0.02, count


def test_every_transformation_starts_as_the_identity():
    model = full_model()
    model.eval()
    x = torch.rand(3, 40, 128)
    with torch.no_grad():
        errors, params = model.errors(x)
        model.active_mask.zero_()
        raw_errors, _ = model.errors(x)
    torch.testing.assert_close(errors, raw_errors, atol=1e-4, rtol=1e-3)
    assert (params.pitch - 1).abs().max() < 1e-3
    assert params.gain.abs().max() < 1e-3 and params.filters.abs().max() < 1e-3


def test_the_decoders_run_in_a_fixed_order(monkeypatch):
    """The encoder's gradient sums the decoders' in the order they ran: iterating the set of
    active names (whose order changes with Python's hash seed) made runs differ from one
    process to the next."""
    model = full_model(k=2)
    ran = []
    for name, decoder in model.decoders.items():
        forward = decoder.forward
        monkeypatch.setattr(decoder, "forward",
                            lambda *a, _name=name, _forward=forward: ran.append(_name) or _forward(*a))
    model.transformations(torch.rand(2, 16, 128))
    assert ran == ["gain", "pitch", "filters"]


def test_shapes_and_time_padding():
    model = full_model(k=4)
    x = torch.rand(2, 37, 128)  # not a multiple of 16: padded for the encoder, cropped back
    errors, params = model.errors(x)
    assert errors.shape == (2, 4)
    assert params.pitch.shape == params.gain.shape == (2, 4, 37)
    assert params.filters.shape == (2, 4, 37, 4)
    recon = model.reconstructions(x)
    assert recon.shape == (2, 4, 37, 128)
    manual = (recon - x[:, None]).square().mean(dim=(-2, -1))
    torch.testing.assert_close(errors, manual, rtol=1e-5, atol=1e-6)
    one = model.reconstructions(x, prototypes=torch.tensor([2]))
    torch.testing.assert_close(one[:, 0], recon[:, 2])


def test_whole_clips_are_read_as_training_reads_them():
    # training tiles a clip shorter than its crop; a whole clip whose length is not a
    # multiple of 16 is extended the same way, never with frames of zeros
    model = full_model(k=3)
    model.eval()
    torch.manual_seed(2)
    x = torch.rand(2, 37, 128)
    tiled = torch.cat([x, x, x], dim=1)[:, :48]
    with torch.no_grad():
        params = model.transformations(x)
        expected = model.transformations(tiled).crop(37)
        zero_padded = model.transformations(torch.nn.functional.pad(x, (0, 0, 0, 11))).crop(37)
    for got, want in zip((params.pitch, params.gain, params.filters),
                         (expected.pitch, expected.gain, expected.filters)):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(params.gain, zero_padded.gain)


def test_raw_prototypes_reconstruct_every_frame_with_the_prototype():
    model = PrototypeModel(3, PRESETS["speakers"])
    x = torch.rand(2, 20, 128)
    errors, params = model.errors(x)
    assert params.pitch is None and params.gain is None and params.filters is None
    expected = (model.prototypes[None, :, None, :] - x[:, None]).square().mean(dim=(-2, -1))
    torch.testing.assert_close(errors, expected)
    assert model.reconstructions(x).shape == (2, 3, 20, 128)


def test_gradients_reach_prototypes_encoder_and_active_decoders_only():
    model = PrototypeModel(4, PRESETS["speakers"])
    model.activate("gain")
    errors, _ = model.errors(torch.rand(2, 32, 128))
    errors.min(1).values.mean().backward()
    assert model.prototypes.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoders["gain"].parameters())
    assert all(p.grad is None for p in model.decoders["pitch"].parameters())


def test_active_transformations_are_state():
    model = PrototypeModel(2, PRESETS["speakers"])
    model.activate("pitch")
    restored = PrototypeModel(2, PRESETS["speakers"])
    restored.load_state_dict(model.state_dict())
    assert restored.active == {"pitch"}
    with pytest.raises(ValueError, match="unknown transformation"):
        model.activate("reverb")


def test_batch_consistency():
    model = full_model(k=3)
    model.eval()
    x = torch.rand(4, 32, 128)
    with torch.no_grad():
        together = model.errors(x)[0]
        alone = torch.cat([model.errors(x[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)


def test_target_errors_equal_the_chosen_column_with_the_same_gradients():
    model = full_model(k=4)
    for decoder in model.decoders.values():  # transformations far from the identity
        torch.nn.init.normal_(decoder.head.weight, std=0.1)
    model.eval()
    x = torch.rand(3, 32, 128)
    targets = torch.tensor([2, 0, 2])
    chosen = model.errors(x, k_chunk=3)[0].gather(1, targets[:, None])[:, 0]
    grads_all = torch.autograd.grad(chosen.sum(), [model.prototypes, *model.encoder.parameters()])
    fast = model.target_errors(x, targets)
    grads_fast = torch.autograd.grad(fast.sum(), [model.prototypes, *model.encoder.parameters()])
    torch.testing.assert_close(fast, chosen)
    for a, b in zip(grads_all, grads_fast):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert grads_fast[0][[1, 3]].abs().sum() == 0  # prototypes no clip chose get nothing


def test_initialisation_from_data():
    rng = np.random.default_rng(0)
    means = np.concatenate([rng.normal(c, 0.01, size=(10, 128)) for c in (0.2, 0.5, 0.8)])
    labels = np.repeat(np.arange(3), 10)
    model = PrototypeModel(3, PRESETS["speakers"])
    assert init_prototypes(model, means, labels, seed=0) is None  # supervised: no clusters
    expected = torch.tensor(np.stack([means[labels == c].mean(0) for c in range(3)]), dtype=torch.float32)
    assert (model.prototypes - expected).abs().mean() < 0.02  # class means + 0.01 N noise
    clusters = init_prototypes(model, means, None, seed=0)  # k-means++: a centre per cluster
    levels = sorted(model.prototypes.mean(1).tolist())
    assert levels == pytest.approx([0.2, 0.5, 0.8], abs=0.02)
    # each clip's cluster is the centre it is nearest to: one cluster per level
    assert adjusted_rand_score(labels, clusters) == 1.0
    with pytest.raises(ValueError, match="at least 5 training clips"):
        init_prototypes(PrototypeModel(5, PRESETS["speakers"]), means[:4], None, seed=0)


def test_level_kmeans_initialisation_follows_shape_not_loudness():
    # three spectral shapes, each at three loudness levels: by plain distance the levels
    # dominate; with the level removed, each prototype is one shape
    rng = np.random.default_rng(0)
    f = np.linspace(0, 1, 128)
    shapes = [0.2 * np.sin(2 * np.pi * f * n) for n in (1, 2, 3)]
    means, labels = [], []
    for label, shape in enumerate(shapes):
        for level in (0.2, 0.5, 0.8):
            means.append(shape + level + rng.normal(0, 0.01, size=(5, 128)))
            labels += [label] * 5
    means, labels = np.concatenate(means), np.array(labels)
    model = PrototypeModel(3, PRESETS["speakers"])
    clusters = init_prototypes(model, means, None, seed=0, method="level-kmeans")
    assert adjusted_rand_score(labels, clusters) == 1.0  # the clips' clusters: the shapes
    centred = model.prototypes.detach().numpy()
    centred = centred - centred.mean(1, keepdims=True)
    matched = sorted(int(np.argmax([c @ s for s in shapes])) for c in centred)
    assert matched == [0, 1, 2]  # one prototype per shape
    assert model.prototypes.mean().item() == pytest.approx(0.5, abs=0.02)  # the average level
    # cepstral: every coefficient is standardised, so noise in the unused ones must be small
    means = np.concatenate([shape + level + rng.normal(0, 0.001, size=(5, 128))
                            for shape in shapes for level in (0.2, 0.5, 0.8)])
    stds = np.full_like(means, 0.1)  # the same deviation everywhere: the means decide
    clusters = init_prototypes(model, means, None, seed=0, method="cepstral", clip_stds=stds)
    assert adjusted_rand_score(labels, clusters) == 1.0  # cepstra ignore the level too
    cluster_means = torch.tensor(np.stack([means[clusters == c].mean(0) for c in range(3)]),
                                 dtype=torch.float32)
    assert (model.prototypes - cluster_means).abs().mean() < 0.02  # + 0.01 N noise
    with pytest.raises(ValueError, match="needs clip_stds"):
        init_prototypes(model, means, None, seed=0, method="cepstral")
    init_prototypes(model, means, None, seed=0, method="kmeans++")
    with pytest.raises(ValueError, match="method must be one of"):
        init_prototypes(model, means, None, seed=0, method="random")


def test_beta_parametrisations_round_trip():
    for parametrisation in ("softplus", "log"):
        model = PrototypeModel(3, PRESETS["speakers"], beta_parametrisation=parametrisation)
        for value in (0.018, 1.0, 2500.0):
            model.set_beta(value)
            assert float(model.beta.detach()) == pytest.approx(value, rel=1e-5)
    assert float(PrototypeModel(3, PRESETS["speakers"]).beta.detach()) == pytest.approx(0.01815, rel=1e-3)
    with pytest.raises(ValueError, match="beta_parametrisation"):
        PrototypeModel(3, PRESETS["speakers"], beta_parametrisation="tanh")
    with pytest.raises(ValueError, match="positive"):
        model.set_beta(0.0)


def test_errors_on_strided_frames_estimate_the_whole_error():
    torch.manual_seed(0)
    model = PrototypeModel(4, PRESETS["speakers"])
    for name in ("gain", "pitch"):
        model.activate(name)
    model.eval()
    x = torch.rand(2, 64, 128)
    whole = model.errors(x, k_chunk=None)[0]
    parts = torch.stack([model.errors(x, k_chunk=None, frames=slice(o, None, 4))[0]
                         for o in range(4)])
    torch.testing.assert_close(parts.mean(0), whole)  # the four phases average to the whole
    targets = torch.tensor([1, 3])
    torch.testing.assert_close(model.target_errors(x, targets, frames=slice(2, None, 4)),
                               parts[2].gather(1, targets[:, None])[:, 0])


def test_recalibrated_norms_match_the_data_and_evaluation_matches_training():
    model = PrototypeModel(3, PRESETS["speakers"])
    model.activate("gain")
    torch.manual_seed(1)
    batches = [0.3 + 0.2 * torch.rand(16, 32, 128) for _ in range(4)]
    for norm in model.modules():  # running statistics far from the data's
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.running_mean.fill_(5.0)
    untouched = model.decoders["pitch"].ups[0][0][2].running_mean.clone()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.recalibrate_norms(iter(batches))
    assert not model.training
    # the first norm sees conv -> ReLU of the input: its statistic is the plain mean over all
    # clips, time steps and frequencies (equal batches: the mean of the batch means)
    first = model.encoder.levels[0]
    with torch.no_grad():
        pre = torch.cat([first[1](first[0]((2 * b - 1).unsqueeze(1))) for b in batches])
    torch.testing.assert_close(first[2].running_mean, pre.mean(dim=(0, 2, 3)), rtol=1e-4,
                               atol=1e-6)
    # only the norms in use change (pitch is off), and no weight moves
    torch.testing.assert_close(model.decoders["pitch"].ups[0][0][2].running_mean, untouched)
    after = model.state_dict()
    for key, value in weights.items():
        if "running" not in key and "num_batches" not in key:
            torch.testing.assert_close(after[key], value)
    # one large batch: evaluation now normalises as training did (up to n / (n - 1))
    big = 0.3 + 0.2 * torch.rand(64, 32, 128)
    model.recalibrate_norms([big])
    with torch.no_grad():
        evaluated = model.errors(big)[0]
        model.train()
        trained = model.errors(big)[0]
    torch.testing.assert_close(evaluated, trained, rtol=0.05, atol=1e-5)
    with pytest.raises(ValueError, match="at least one batch"):
        model.recalibrate_norms([])


def _pool_and_reference(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """frequency_pool's output and gradients, and those of the convolution it stands for."""
    from hearproto.model import frequency_pool

    torch.manual_seed(0)
    pool = torch.nn.Conv2d(3, 2, (1, 12)).to(dtype)
    h = torch.randn(4, 3, 10, 12, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(4, 2, 10, dtype=dtype)
    results = []
    for fn in (lambda: frequency_pool(h, pool), lambda: pool(h).squeeze(-1)):
        out = fn()
        results.append([out, *torch.autograd.grad(out, (h, pool.weight, pool.bias), grad_out)])
    return results[0], results[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frequency_pool_is_the_convolution_it_replaces(dtype):
    ours, reference = _pool_and_reference(dtype)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    for name, a, b in zip(("output", "dh", "dweight", "dbias"), ours, reference):
        torch.testing.assert_close(a, b, **tolerance, msg=lambda m: f"{name}: {m}")


def test_frequency_pool_gradients_pass_gradcheck():
    from hearproto.model import _FrequencyPool

    torch.manual_seed(0)
    h = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_FrequencyPool.apply, (h, weight))


def test_frequency_pool_under_bf16_autocast_gives_float32_gradients():
    from hearproto.model import frequency_pool

    torch.manual_seed(0)
    pool = torch.nn.Conv2d(3, 2, (1, 12))
    h = torch.randn(4, 3, 10, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frequency_pool(h, pool)
    dh, dweight = torch.autograd.grad(out.float().square().sum(), (h, pool.weight))
    reference = pool(h).squeeze(-1)
    rh, rweight = torch.autograd.grad(reference.square().sum(), (h, pool.weight))
    assert dh.dtype == dweight.dtype == torch.float32
    torch.testing.assert_close(out.float(), reference, rtol=0.02, atol=0.05)
    torch.testing.assert_close(dweight, rweight, rtol=0.05, atol=0.5)
    torch.testing.assert_close(dh, rh, rtol=0.05, atol=0.1)
