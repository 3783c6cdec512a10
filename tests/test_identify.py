"""Identify and explain any sound: the prototypes' ranking agrees with the evaluation's, long
files are windowed and summarised by their frame-weighted errors, short clips are extended,
the explanation's files and numbers agree with the identification, and bad input gets one
line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import harmonic, write_tones
from hearproto import cli
from hearproto.data.cache import ENCODER_FRAMES
from hearproto.errors import AudioError, CheckpointError
from hearproto.frontend import LogMel
from hearproto.identification import explain, identify, load_model
from hearproto.training import TrainConfig, evaluate_checkpoint, load_checkpoint, train

SR = 16_000
pytestmark = pytest.mark.usefixtures("data_home")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A supervised run on three separable tone classes (speakers front end) and its data."""
    base = tmp_path_factory.mktemp("identify")
    root = write_tones(base / "tones")
    out = base / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEARPROTO_DATA", str(base / "home"))
        train(TrainConfig.from_recipe(
            "paper", dataset="folder", root=str(root), out=str(out), mode="supervised",
            epochs=8, stage_epochs=1, preset="speakers", compile=False, batch_size=8, lr=3e-3,
            seed=0, threads=1), progress=False)
    return out / "last.pt", root


def test_identify_ranks_as_the_evaluation_does(trained):
    """On every test clip (no longer than the crop: one window), the best prototype is the
    evaluation's choice, the errors are the model's, and the probabilities are the softmax of
    -beta times them."""
    checkpoint, root = trained
    scores = evaluate_checkpoint(checkpoint, "test", "cpu", per_clip=True)
    model, payload = load_checkpoint(checkpoint)
    from hearproto.training import checkpoint_dataset
    from hearproto.training.evaluation import evaluation_split

    data = checkpoint_dataset(checkpoint, payload, TrainConfig.from_dict(payload["config"]))
    test = evaluation_split(data, "test")
    for i, path in enumerate(test.paths):
        found = identify(data.root / path, checkpoint, top=3)
        assert len(found.windows) == 1 and found.summary == found.windows[0].candidates
        assert found.best.prototype == scores["per_clip"]["prototype"][i]
        assert found.best.name == payload["classes"][scores["per_clip"]["predicted"][i]]
        frames = torch.from_numpy(np.array(test.frames(i), dtype=np.float32))[None]
        with torch.no_grad():
            errors = model.eval().errors(frames)[0][0]
        np.testing.assert_allclose(found.errors, errors.numpy(), rtol=1e-4, atol=1e-7)
        expected = torch.softmax(-model.beta * errors, 0)
        assert [c.probability for c in found.summary] == pytest.approx(
            expected[[c.prototype for c in found.summary]].tolist(), rel=1e-4)
        assert [c.L_rec for c in found.summary] == sorted(c.L_rec for c in found.summary)


def test_a_long_file_is_windowed_and_summarised_by_frame_weighted_errors(trained, tmp_path):
    checkpoint, _ = trained
    rng = np.random.default_rng(5)
    wave = np.concatenate([harmonic(150.0, 10.0, rng), harmonic(2400.0, 8.5, rng)])
    sf.write(tmp_path / "long.wav", wave, SR, subtype="FLOAT")  # the same samples as wave
    found = identify(tmp_path / "long.wav", checkpoint, top=3)
    crop = found.crop_frames  # folder's: 256 frames of 32 ms
    assert found.frames > 2 * crop and len(found.windows) == -(-found.frames // crop)
    assert found.windows[0].start == 0 and found.windows[-1].stop == found.frames
    assert all(w.stop - w.start == crop for w in found.windows)
    assert found.windows[0].candidates[0].name == "low"
    assert found.windows[-1].candidates[0].name == "high"
    model, payload = load_model(checkpoint)[:2]
    frames = LogMel.from_frontend(model.frontend)(torch.from_numpy(wave.astype(np.float32)))
    expected = sum((w.stop - w.start) * model.errors(frames[None, w.start:w.stop])[0][0]
                   for w in found.windows) / sum(w.stop - w.start for w in found.windows)
    np.testing.assert_allclose(found.errors, expected.detach().numpy(), rtol=1e-4, atol=1e-7)


def test_a_clip_of_five_frames_is_extended_and_identified(trained, tmp_path):
    checkpoint, _ = trained
    sf.write(tmp_path / "blip.wav", harmonic(2400.0, 1.0, np.random.default_rng(6))[:4 * 512],
             SR)
    found = identify(tmp_path / "blip.wav", checkpoint)
    assert found.frames == 5 and found.extended and found.windows[0].stop == ENCODER_FRAMES
    assert found.best.name == "high"


def test_a_waveform_is_identified_as_its_file(trained, tmp_path):
    checkpoint, _ = trained
    wave = harmonic(600.0, 0.8, np.random.default_rng(7))
    sf.write(tmp_path / "mid.wav", wave, SR, subtype="FLOAT")
    from_file = identify(tmp_path / "mid.wav", checkpoint)
    from_wave = identify(wave, checkpoint, sample_rate=SR)
    assert from_wave.source == "waveform" and from_file.best.name == "mid"
    np.testing.assert_allclose(from_wave.errors, from_file.errors, rtol=1e-6)
    with pytest.raises(ValueError, match="sample_rate"):
        identify(wave, checkpoint)


def test_the_cli_lists_the_top_prototypes_as_a_table_and_as_json(trained, tmp_path, capsys):
    checkpoint, root = trained
    clip = sorted((root / "mid").glob("*.wav"))[0]
    assert cli.main(["identify", str(clip), "--model", str(checkpoint), "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert str(clip) in text and "probability" in text and "mid" in text
    assert cli.main(["identify", str(clip), "--model", str(checkpoint.parent), "--json"]) == 0
    [found] = json.loads(capsys.readouterr().out)
    assert found["summary"][0]["name"] == identify(clip, checkpoint).best.name
    assert len(found["summary"]) == 3 and found["mode"] == "supervised"


def test_a_reader_that_stops_early_ends_the_command_quietly(trained):
    """``hearproto identify ... --json | head``: where the reader has gone before the command
    writes (a pipe whose reading end is closed, so that every write fails as it would), the
    command ends with the shell's code for a closed pipe and nothing on stderr."""
    checkpoint, root = trained
    clip = sorted((root / "mid").glob("*.wav"))[0]
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "hearproto", "identify", str(clip),
                               "--model", str(checkpoint), "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 141


def test_bad_input_gets_one_line_each_and_the_good_files_go_on(trained, tmp_path, capsys):
    checkpoint, root = trained
    sf.write(tmp_path / "silent.wav", np.zeros(SR, dtype=np.float32), SR)
    (tmp_path / "text.wav").write_text("not audio")
    good = sorted((root / "low").glob("*.wav"))[0]
    files = [tmp_path / "missing.wav", tmp_path / "text.wav", tmp_path / "silent.wav", good]
    assert cli.main(["identify", *map(str, files), "--model", str(checkpoint)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3
    assert "missing.wav: no such audio file" in errors[0]
    assert "text.wav: not a readable audio file" in errors[1]
    assert "silent.wav: silent" in errors[2]
    assert str(good) in captured.out
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["identify", str(good), "--model", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err
    assert cli.main(["identify", str(good), "--model", "nothing-like-this"]) == 2
    assert "neither a shipped model" in capsys.readouterr().err


def test_a_baseline_checkpoint_is_refused_in_one_line(tones, tmp_path, capsys):
    from hearproto.baselines.trainer import BaselineConfig, train_baseline

    out = tmp_path / "direct"
    train_baseline(BaselineConfig(model="direct", dataset="folder", root=str(tones),
                                  out=str(out), epochs=1, batch_size=8, preset="speakers",
                                  threads=1), progress=False)
    with pytest.raises(CheckpointError, match="not our model"):
        identify(sorted((tones / "low").glob("*.wav"))[0], out / "best.pt")
    assert cli.main(["identify", str(sorted((tones / "low").glob("*.wav"))[0]),
                     "--model", str(out / "best.pt")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_narrow_band_file_is_warned_of(trained, tmp_path):
    checkpoint, _ = trained  # speakers front end: 16 kHz
    sf.write(tmp_path / "phone.wav", harmonic(300.0, 0.8, np.random.default_rng(8))[::4], 4_000)
    with pytest.warns(UserWarning, match=r"recorded at 4000 Hz, heard at 16000 Hz"):
        identify(tmp_path / "phone.wav", checkpoint)


def test_explain_writes_what_each_transformation_did(trained, tmp_path):
    """The explanation's files exist and are levelled, its errors are the identification's,
    its curves are in range and in the units named, and a folder with files is kept."""
    checkpoint, root = trained
    clip = sorted((root / "high").glob("*.wav"))[0]
    record = explain(clip, tmp_path / "why", checkpoint, iterations=4)
    found = identify(clip, checkpoint)
    listed = json.loads((tmp_path / "why" / "explain.json").read_text())
    assert listed == json.loads(json.dumps(record))
    best, runner = record["prototypes"]
    assert (best["prototype"], runner["prototype"]) == tuple(
        c.prototype for c in found.summary[:2])
    assert best["L_rec"]["reconstruction"] == pytest.approx(found.summary[0].L_rec, rel=1e-3)
    assert set(best["files"]) == {"reconstruction", "prototype", "without_gain",
                                  "without_pitch", "without_filters"}
    for entry in (best, runner):
        for variant, file in entry["files"].items():
            wave, rate = sf.read(tmp_path / "why" / file)
            assert rate == SR and 20 * np.log10(np.abs(wave).max()) == pytest.approx(-3.0, abs=0.1)
        curves = entry["curves"]
        frames = found.windows[0].stop
        assert all(len(v) == frames for v in curves.values())
        assert max(map(abs, curves["gain_db"])) <= 0.5 * 170 + 1e-6
        assert max(map(abs, curves["pitch_semitones"])) <= 12 / np.log(2) + 1e-6
        assert 0 < min(curves["low_knee_hz"]) and max(curves["high_knee_hz"]) < SR / 2
    assert (tmp_path / "why" / "explain.png").stat().st_size > 10_000
    assert (tmp_path / "why" / "input.wav").is_file()
    with pytest.raises(FileExistsError, match="--force"):
        explain(clip, tmp_path / "why", checkpoint, iterations=4)
    explain(clip, tmp_path / "why", checkpoint, iterations=4, force=True)


def test_a_shipped_model_is_found_by_name_and_unpacked_apart(tmp_path, data_home, capsys):
    """``speakers`` is the shipped supervised run, unpacked into the data home's shipped/
    folder; its identification is that model's errors on the clip."""
    from hearproto.identification import SHIPPED_MODELS, _shipped_run
    from hearproto.runner.shipped import weights_dir

    if not list((weights_dir() / "full" / "speakers").glob("ours-supervised-seed0-*.json")):
        pytest.skip("weights/ ships no speakers model here")
    wave = harmonic(220.0, 1.5, np.random.default_rng(9))
    sf.write(tmp_path / "voice.wav", wave, SR, subtype="FLOAT")
    found = identify(tmp_path / "voice.wav", "speakers", top=5)
    run = _shipped_run("speakers")
    assert run.is_relative_to(data_home / "shipped") and SHIPPED_MODELS["speakers"][0] == "speakers"
    model, payload = load_checkpoint(run / "last.pt")
    frames = LogMel.from_frontend(model.frontend)(torch.from_numpy(wave))
    errors = model.eval().errors(frames[None])[0][0]
    np.testing.assert_allclose(found.errors, errors.detach().numpy(), rtol=1e-4, atol=1e-7)
    assert found.best.name == payload["classes"][int(errors.argmin())]
    assert sum(c.probability for c in found.summary) <= 1 + 1e-6
    assert cli.main(["identify", str(tmp_path / "voice.wav"), "--model", "speakers",
                     "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["model"] == "speakers (shipped)"
    assert [c["name"] for c in listed["summary"]] == [c.name for c in found.summary[:3]]
