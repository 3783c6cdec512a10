"""The baselines of Tables 2 and 3: networks, training, resume, evaluation and CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import pytest
import torch

from hearproto import cli
from hearproto.errors import SettingError
from hearproto.baselines.apnet import APNet
from hearproto.baselines.autoencoder import ConvAutoencoder
from hearproto.baselines.direct import DirectClassifier
from hearproto.baselines.trainer import (
    BaselineConfig,
    evaluate_baseline,
    load_baseline,
    train_baseline,
)


pytestmark = pytest.mark.usefixtures("data_home")


def config(root: Path, out: Path, **changes) -> BaselineConfig:
    values = dict(model="direct", dataset="folder", root=str(root), out=str(out),
                  preset="speakers", epochs=12, patience=50, batch_size=8, lr=3e-3,
                  device="cpu", seed=0, eval_batch_size=16)
    values.update(changes)
    return BaselineConfig(**values)


def metric_rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_direct_classifier_shapes_and_batch_consistency():
    torch.manual_seed(0)
    model = DirectClassifier(5, n_mels=32).eval()
    x = torch.rand(3, 37, 32)  # any length: padded to a multiple of 16 inside
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert together.shape == (3, 5)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 16"):
        DirectClassifier(5, n_mels=40)


def test_autoencoder_shapes_range_and_features_ignore_padding():
    torch.manual_seed(0)
    model = ConvAutoencoder(n_mels=32).eval()
    x = torch.rand(2, 40, 32)
    with torch.no_grad():
        rec = model.reconstruct(x)
        features = model.features(x)
    assert rec.shape == x.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert features.shape == (2, 32 * 2)  # 32 channels x 32 / 16 bins
    loss, parts = model.loss(x)
    assert float(parts["rec"]) == pytest.approx(float((rec - x).square().mean()), rel=1e-5)


LAYOUT_MODELS = {
    "autoencoder": lambda **kw: ConvAutoencoder(n_mels=32, **kw),
    "direct": lambda **kw: DirectClassifier(3, n_mels=32, **kw),
    "apnet": lambda **kw: APNet(3, n_mels=32, frames=32, n_prototypes=5, **kw),
}


@pytest.mark.parametrize("name", LAYOUT_MODELS)
def test_channels_last_baselines_compute_what_the_default_layout_does(name, tmp_path):
    """The channels-last weights are a layout, not a model: same outputs, losses and
    gradients as the default layout, and a state saved contiguously (as safetensors must)
    loads back into it."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    fast = LAYOUT_MODELS[name](channels_last=True)
    plain = LAYOUT_MODELS[name](channels_last=False)
    plain.load_state_dict(fast.state_dict())
    convs = [(a, b) for a, b in zip(fast.modules(), plain.modules())
             if isinstance(a, torch.nn.modules.conv._ConvNd)]
    assert convs and all(a.weight.is_contiguous(memory_format=torch.channels_last)
                         and b.weight.is_contiguous() for a, b in convs)
    # one input channel: both layouts are the same strides
    assert all(not a.weight.is_contiguous() for a, _ in convs if a.weight.shape[1] > 1)
    # in float64: batch norm over a few tiny maps magnifies float32's rounding to 1e-3
    x, y = torch.rand(4, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    fast64, plain64 = fast.double(), plain.double()
    assert all(a.weight.is_contiguous(memory_format=torch.channels_last)
               for a, _ in convs)  # .double() keeps the layout
    losses = [model.loss(x, y)[0] for model in (fast64, plain64)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    for loss in losses:
        loss.backward()
    for (parameter, a), b in zip(fast64.named_parameters(), plain64.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=parameter)
    fast64.eval(), plain64.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast64(x), plain64(x), rtol=1e-10, atol=1e-12)
    fast, x = fast.float(), x.float()
    save_file({k: v.contiguous() for k, v in fast.state_dict().items()}, tmp_path / "w.st")
    loaded = LAYOUT_MODELS[name](channels_last=True).eval()
    loaded.load_state_dict(load_file(tmp_path / "w.st"))
    assert all(a.weight.is_contiguous(memory_format=torch.channels_last)
               for a in loaded.modules() if isinstance(a, torch.nn.modules.conv._ConvNd))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fast(x))


def test_direct_classification_learns_separable_classes(tones, tmp_path):
    out = tmp_path / "direct"  # 80 steps: batch norm forgets its initial running variance (0.9^steps)
    summary = train_baseline(config(tones, out, epochs=40, batch_size=8, lr=1e-3), progress=False)
    assert summary["epochs"] == 40 and (out / "best.pt").is_file()
    scores = evaluate_baseline(out / "best.pt", split="test", device="cpu")
    assert scores["OA"] == 100.0 and scores["L_rec"] is None
    assert scores["model"] == "Direct Classification" and scores["clips"] == 6


def test_autoencoder_reconstruction_improves_and_kmeans_clusters(tones, tmp_path):
    out = tmp_path / "ae"
    train_baseline(config(tones, out, model="autoencoder", epochs=10), progress=False)
    rows = metric_rows(out)
    assert float(rows[-1]["val_L_rec"]) < 0.5 * float(rows[0]["val_L_rec"])
    scores = evaluate_baseline(out / "best.pt", split="test", device="cpu")
    assert scores["mode"] == "unsupervised" and scores["model"] == "Autoencoder + K-means"
    assert scores["OA"] >= 66.0 and scores["L_rec"] > 0


def test_killed_run_resumes_exactly(tones, tmp_path):
    straight = tmp_path / "straight"
    train_baseline(config(tones, straight, epochs=4), progress=False)
    resumed = tmp_path / "resumed"
    train_baseline(config(tones, resumed, epochs=2), progress=False)  # "killed" after 2
    train_baseline(config(tones, resumed, epochs=4), progress=False)
    a, _ = load_baseline(straight / "last.pt")
    b, _ = load_baseline(resumed / "last.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)
    assert [r["epoch"] for r in metric_rows(resumed)] == ["1", "2", "3", "4"]
    with pytest.raises(ValueError, match=r"model='direct' \(now 'apnet'\)"):
        train_baseline(config(tones, resumed, model="apnet"), progress=False)


def test_a_step_budget_ends_the_epoch_it_falls_in_and_a_larger_one_goes_on(tones, tmp_path):
    out = tmp_path / "steps"
    summary = train_baseline(config(tones, out, steps=3, epochs=50), progress=False)
    epochs_for_3 = summary["epochs"]
    assert summary["stop_reason"] == "step budget"
    state = torch.load(out / "last.pt", weights_only=True)["state"]
    assert state["steps"] >= 3 and state["steps"] - 3 < state["steps"] / epochs_for_3
    again = train_baseline(config(tones, out, steps=3, epochs=50), progress=False)
    assert again["epochs"] == epochs_for_3  # finished: nothing more to do
    longer = train_baseline(config(tones, out, steps=3 * state["steps"], epochs=50),
                            progress=False)
    assert longer["epochs"] > epochs_for_3 and longer["stop_reason"] == "step budget"
    with pytest.raises(SettingError, match="steps must be at least 1"):
        config(tones, out, steps=0)


def test_cli_trains_and_evaluates_apnet_and_its_kmeans(tones, tmp_path, capsys):
    out = tmp_path / "apnet"
    assert cli.main(["train", "--model", "apnet", "--dataset", "folder", "--root", str(tones),
                     "--out", str(out), "--epochs", "2", "--batch-size", "8", "--device", "cpu",
                     "--preset", "speakers"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--json"]) == 0
    classified = json.loads(capsys.readouterr().out)
    assert classified["model"] == "APNet" and classified["L_rec"] > 0
    table = tmp_path / "results.csv"
    assert cli.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--kmeans", "--json",
                     "--results", str(table)]) == 0
    clustered = json.loads(capsys.readouterr().out)
    row = pd.read_csv(table).iloc[0]
    assert row["model"] == "APNet + K-means" and row["OA"] == pytest.approx(clustered["OA"])
    assert row["epochs"] == 2 and row["trained_on"].startswith("cpu")
    assert json.loads(row["config"])["model"] == "apnet"
    assert clustered["model"] == "APNet + K-means" and clustered["mode"] == "unsupervised"
    assert clustered["L_rec"] == pytest.approx(classified["L_rec"])
    assert {"OA", "AA", "L_rec", "stage", "dataset", "mode"} <= set(clustered)
    wav = tmp_path / "apnet-prototype.wav"
    assert cli.main(["play", "--checkpoint", str(out / "best.pt"), "--prototype", "3",
                     "--out", str(wav), "--seconds", "0.5"]) == 0
    samples, rate = sf.read(wav)
    assert rate == 16_000 and abs(len(samples) - 8000) <= 512 and np.abs(samples).max() > 0
    assert cli.main(["play", "--checkpoint", str(out / "best.pt"), "--prototype", "100",
                     "--out", str(tmp_path / "x.wav")]) == 2
    assert cli.main(["train", "--model", "direct", "--mode", "unsupervised", "--dataset",
                     "folder", "--root", str(tones), "--out", str(tmp_path / "x")]) == 2
