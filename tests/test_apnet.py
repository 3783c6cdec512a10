"""APNet baseline: shapes, the latent distance, the similarity, a tiny training run, decoding."""

from __future__ import annotations

import pytest
import torch

from hearproto.baselines.apnet import CLASSIFIER_LR_SCALE, APNet, APNetOutput

TINY = dict(n_mels=16, frames=32, n_prototypes=6, channels=4)


def tiny(n_classes: int = 3, seed: int = 0, **kw) -> APNet:
    torch.manual_seed(seed)
    return APNet(n_classes, **{**TINY, **kw})


def two_bands(per_class: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: energy in the low mel bins; class 1: in the high ones (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.05 * torch.rand(2 * per_class, 32, 16, generator=g)
    x[:per_class, :, :6] += 0.7
    x[per_class:, :, 10:] += 0.7
    return x.clamp(0, 1), torch.tensor([0] * per_class + [1] * per_class)


def test_shapes_of_every_output():
    model = tiny()
    x = torch.rand(5, 32, 16)
    out = model(x)
    assert isinstance(out, APNetOutput)
    assert out.logits.shape == (5, 3)
    assert out.reconstruction.shape == (5, 32, 16)
    assert out.distances.shape == (5, 6) and out.similarities.shape == (5, 6)
    assert model.logits(x).shape == (5, 3)
    assert model.features(x).shape == (5, 6)
    assert model.reconstruct(x).shape == (5, 32, 16)
    torch.testing.assert_close(model.logits(x), out.logits)
    torch.testing.assert_close(model.features(x), out.similarities)
    torch.testing.assert_close(model.reconstruct(x), out.reconstruction)
    # whole clips of other lengths go through fit_length
    assert model(torch.rand(2, 50, 16)).reconstruction.shape == (2, 32, 16)
    assert model.features(torch.rand(2, 7, 16)).shape == (2, 6)


def test_fit_length_crops_and_tiles():
    model = tiny()
    x = torch.arange(2 * 40 * 16, dtype=torch.float32).reshape(2, 40, 16)
    torch.testing.assert_close(model.fit_length(x), x[:, :32])
    short = x[:, :10]
    tiled = model.fit_length(short)
    assert tiled.shape == (2, 32, 16)
    for t in range(32):
        torch.testing.assert_close(tiled[:, t], short[:, t % 10])
    torch.testing.assert_close(model.fit_length(x[:, :32]), x[:, :32])
    torch.testing.assert_close(model.fit_length(x[:, :16]), torch.cat([x[:, :16]] * 2, 1))


def test_latent_distance_matches_naive_loops():
    model = tiny(channels=2, n_prototypes=3, n_mels=8, frames=8)
    z = torch.randn(2, 2, 2, 2)  # (B, C, T/4, F/4)
    d = model._distance(z)
    p = model.prototypes.detach()
    naive = torch.zeros(2, 3, 2)
    for b in range(2):
        for m in range(3):
            for f in range(2):
                total, norms = 0.0, 0.0
                for c in range(2):
                    for t in range(2):
                        total += float(z[b, c, t, f] - p[m, c, t, f]) ** 2
                        norms += float(z[b, c, t, f]) ** 2 + float(p[m, c, t, f]) ** 2
                naive[b, m, f] = total / norms  # relative to the squared norms
    torch.testing.assert_close(d, naive, atol=1e-5, rtol=1e-5)
    # scale-free: scaling latents and prototypes together leaves it unchanged; in [0, 2]
    with torch.no_grad():
        model.prototypes.mul_(7.0)
    torch.testing.assert_close(model._distance(7.0 * z), naive, atol=1e-5, rtol=1e-5)
    assert model._distance(-z[:, None].expand(-1, 3, -1, -1, -1)[:, 0]).max() <= 2 + 1e-6
    # forward's distances are d averaged over frequency
    x = torch.rand(2, 8, 8)
    zx, _, _ = model._encode(2 * x[:, None] - 1)
    torch.testing.assert_close(model(x).distances, model._distance(zx).mean(-1))


def test_similarity_weights_start_uniform_and_similarity_in_unit_interval():
    model = tiny()
    weights = torch.softmax(model.frequency_weights, -1)
    torch.testing.assert_close(weights, torch.full((6, 4), 0.25))
    assert model.prototypes.min() >= 0 and model.prototypes.max() <= 1
    with torch.no_grad():
        model.prototypes.copy_(torch.rand_like(model.prototypes) * 0.1)
        s = model.features(torch.rand(4, 32, 16))
    assert (s > 0).all() and (s <= 1).all()
    # a latent equal to a prototype has similarity exactly 1
    z = model.prototypes.detach()[:1]
    assert model._similarity(model._distance(z))[0, 0].item() == pytest.approx(1.0)


def test_init_prototypes_are_latents_of_distinct_clips():
    model = tiny(n_prototypes=4)
    x = torch.rand(10, 32, 16)
    x[3] = x[7]  # a duplicate: k-means++ never picks both copies (distance 0)
    model.init_prototypes(x, torch.Generator().manual_seed(0))
    z, _, _ = model._encode(2 * x[:, None] - 1)
    d = (model.prototypes.detach()[:, None] - z[None]).square().flatten(2).mean(-1)  # (M, N)
    nearest = d.argmin(1)
    assert d.min(1).values.max() < 1e-3  # each prototype sits on a clip's latent (+ noise)
    assert len(set(nearest.tolist())) == 4
    assert not {3, 7} <= set(nearest.tolist())
    # fewer clips than prototypes: clips are reused, nothing fails
    model.init_prototypes(x[:2], torch.Generator().manual_seed(0))
    assert torch.isfinite(model.prototypes).all()
    # the same generator seed gives the same prototypes
    a = tiny(n_prototypes=4)
    b = tiny(n_prototypes=4)
    a.init_prototypes(x, torch.Generator().manual_seed(1))
    b.init_prototypes(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.prototypes, b.prototypes)


def test_training_decreases_the_loss_and_separates_two_bands():
    # The recommended settings (AdamW, no weight decay, clipping at 0.5) with a larger learning
    # rate: at lr 1e-4 APNet needs thousands of steps. The similarities separate the bands
    # within ~30 steps; the bias-free classifier on top of them needs ~20 more to align.
    torch.set_num_threads(1)
    model = tiny(n_classes=2, seed=0)
    x, y = two_bands()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0)
    first, _ = model.loss(x, y)
    for _ in range(60):
        total, terms = model.loss(x, y)
        optimiser.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimiser.step()
    last, terms = model.loss(x, y)
    assert set(terms) == {"ce", "proto", "rec"}
    assert last.item() < 0.5 * first.item()
    accuracy = (model.logits(x).argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.9, (accuracy, terms)


def test_loss_terms_follow_their_definitions():
    model = tiny(alpha=2.0, beta=1.0, gamma=1.0)
    x, y = torch.rand(3, 32, 16), torch.tensor([0, 1, 2])
    total, terms = model.loss(x, y)
    out = model(x)
    rec = ((2 * x - 1) - (2 * out.reconstruction - 1)).pow(2).sum((1, 2)).mean()
    d = out.distances
    proto = d.min(0).values.mean() + d.min(1).values.mean()
    ce = torch.nn.functional.cross_entropy(out.logits, y)
    assert float(terms["rec"]) == pytest.approx(rec.item(), rel=1e-4)
    assert float(terms["proto"]) == pytest.approx(proto.item(), rel=1e-4)
    assert float(terms["ce"]) == pytest.approx(ce.item(), rel=1e-4)
    assert total.item() == pytest.approx(2 * ce.item() + proto.item() + rec.item(), rel=1e-4)


def test_reconstruction_and_decoded_prototypes_in_unit_interval():
    model = tiny()
    rec = model.reconstruct(torch.rand(3, 40, 16))
    assert rec.min() >= 0 and rec.max() <= 1
    for masks_from in (None, torch.rand(4, 20, 16)):
        protos = model.decode_prototypes(masks_from)
        assert protos.shape == (6, 32, 16)
        assert torch.isfinite(protos).all() and protos.min() >= 0 and protos.max() <= 1
    # a prototype equal to an example clip's latent decodes like that clip's reconstruction
    x = torch.rand(2, 32, 16)
    z, _, _ = model._encode(2 * x[:, None] - 1)
    with torch.no_grad():
        model.prototypes[:2] = z
    torch.testing.assert_close(model.decode_prototypes(x)[:2], model.reconstruct(x))


def expected_parameters(n_classes: int, n_mels: int, frames: int, m: int,
                        c: int = 32, k: int = 5) -> int:
    convs = (1 * c * k * k + c) + 2 * (c * c * k * k + c)  # encoder
    deconvs = 2 * (c * c * k * k + c) + (c * 1 * k * k + 1)  # decoder
    prototypes = m * c * (frames // 4) * (n_mels // 4)
    return convs + deconvs + prototypes + m * (n_mels // 4) + m * n_classes + 1  # + log_sharpness


@pytest.mark.parametrize("n_classes, frames, count", [(33, 256, 6_664_262), (128, 192, 5_035_362)])
def test_parameter_count(n_classes, frames, count):
    model = APNet(n_classes, n_mels=128, frames=frames, n_prototypes=100)
    total = sum(p.numel() for p in model.parameters())
    assert total == expected_parameters(n_classes, 128, frames, 100) == count


def test_rejects_sizes_not_divisible_by_four():
    with pytest.raises(ValueError):
        APNet(2, n_mels=18, frames=32)
    with pytest.raises(ValueError):
        APNet(2, n_mels=16, frames=30)


def test_the_classifier_reads_standardised_similarities_at_a_faster_rate():
    model = tiny()
    x = torch.rand(6, 32, 16)
    out = model(x)  # training mode: batch statistics
    s = out.similarities
    standard = (s - s.mean(0)) / torch.sqrt(s.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(out.logits, standard @ model.classifier.weight.T)
    groups = model.parameter_groups(1e-3)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-3 * CLASSIFIER_LR_SCALE)]
    assert groups[1]["params"] == [model.classifier.weight]
    every = [p for g in groups for p in g["params"]]
    assert len(every) == len(list(model.parameters())) == len({id(p) for p in every})
