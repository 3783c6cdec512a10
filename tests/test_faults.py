"""Faults a user meets, one test each (issue 16): kills at any point of a run, concurrent runs,
changed data, diverged models, numeric class names, clips too short or silent at their bit
depth, damaged files and checkpoints, bad settings, stale temporaries. Every refusal is one
line on stderr, without a traceback, and a non-zero exit."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from conftest import ROOT, SR, harmonic, write_tones
from hearproto import cli
from hearproto.data import prepare_dataset
from hearproto.data.cache import ENCODER_FRAMES, MIN_FRAMES
from hearproto.errors import DatasetError, RunLocked, TrainingDiverged
from hearproto.files import OWNER_FILE
from hearproto.training import TrainConfig, load_checkpoint, train
from hearproto.training.runloop import exclusive

pytestmark = pytest.mark.usefixtures("data_home")

#: metrics.csv columns that are wall-clock times, which differ between two runs.
TIMING_COLUMNS = ("epoch_seconds", "elapsed_seconds")


def config(root: Path, out: Path, **changes) -> TrainConfig:
    """A quick run on a tiny dataset (21 training clips, 2 steps per epoch)."""
    values = dict(dataset="folder", root=str(root), out=str(out), mode="supervised", epochs=4,
                  preset="speakers", compile=False, patience=1, batch_size=8, lr=3e-3,
                  k_chunk=2, seed=0, eval_batch_size=16, threads=1)
    values.update(changes)
    return TrainConfig.from_recipe("paper", **values)


def cli_train(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "folder", "--root", str(root), "--out", str(out),
            "--batch-size", "8", "--device", "cpu", "--preset", "speakers", "--no-compile",
            "--threads", "1", *extra]


def refusal(capsys) -> str:
    """The one error line of a refused command (warnings may precede it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("hearproto: error:")]
    assert len(errors) == 1, err
    return errors[0]


def metrics_without_timings(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    keep = [i for i, name in enumerate(rows[0]) if name not in TIMING_COLUMNS]
    return [[row[i] for i in keep] for row in rows]


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same weights, state and metrics (timings aside)."""
    pa, pb = load_checkpoint(a / "last.pt")[1], load_checkpoint(b / "last.pt")[1]
    assert pa["state"]["epoch"] == pb["state"]["epoch"] and pa["stage"] == pb["stage"]
    for name, tensor in pa["model"].items():
        torch.testing.assert_close(tensor, pb["model"][name], rtol=1e-5, atol=1e-6, msg=name)
    assert metrics_without_timings(a / "metrics.csv") == metrics_without_timings(b / "metrics.csv")


# --------------------------------------------------------------------------------------------
# Kills at any point: the run resumes to the same weights and metrics

#: Run in a subprocess: train config (JSON, argv[3]) and SIGKILL itself at the N-th (argv[2])
#: event of a kind (argv[1]): an optimiser step; a rename that ends an atomic write (the file
#: complete, not yet in place); half-way through a checkpoint's bytes; half-way through
#: metrics.csv's rows.
KILLER = r"""
import io, json, os, signal, sys
import torch
from hearproto.training import TrainConfig, train
from hearproto.training.runloop import RunLoop

kind, target, config = sys.argv[1], int(sys.argv[2]), TrainConfig.from_dict(json.loads(sys.argv[3]))
count = 0

def due():
    global count
    count += 1
    return count == target

def die():
    os.kill(os.getpid(), signal.SIGKILL)

callback = None
if kind == "step":
    callback = lambda step: die() if due() else None
elif kind == "rename":
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith((".pt", ".csv", ".json")) and due():
            die()
        real_replace(src, dst)
    os.replace = replace
elif kind == "checkpoint":
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if due():
            buffer = io.BytesIO()
            real_save(obj, buffer)
            with open(f, "wb") as handle:
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
            die()
        real_save(obj, f, *args, **kwargs)
    torch.save = save
elif kind == "metrics":
    real_write = RunLoop._write_metrics
    def write(self):
        if due():
            with open(self.out / ".metrics-killed.csv", "w") as handle:
                handle.write(",".join(self.columns) + "\n1,ra")
            die()
        real_write(self)
    RunLoop._write_metrics = write
train(config, progress=False, callback=callback)
"""


@pytest.mark.parametrize("kind, when", [
    ("step", 4),  # in epoch 2, between two checkpoints
    ("rename", 3),  # the first epoch's metrics.csv written, not yet in place
    ("rename", 6),  # the second epoch's last.pt written, not yet in place
    ("checkpoint", 2),  # half of the second last.pt on disk
    ("metrics", 4),  # half of the third epoch's metrics.csv on disk
])
def test_a_run_killed_anywhere_resumes_to_the_same_weights_and_metrics(tones, tmp_path, kind,
                                                                       when):
    prepare_dataset("folder", root=tones, frontend="speakers", progress=False)  # no data writes below
    straight = tmp_path / "straight"
    train(config(tones, straight), progress=False)

    killed = tmp_path / "killed"
    settings = json.dumps(config(tones, killed).__dict__)
    result = subprocess.run([sys.executable, "-c", KILLER, kind, str(when), settings],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    train(config(tones, killed), progress=False)  # resume
    assert_same_run(straight, killed)
    leftovers = [p.name for p in killed.rglob(".*") if p.name != ".lock"]
    assert leftovers == [], leftovers


def test_concurrent_trainings_into_one_folder_one_is_refused(tones, tmp_path, capsys):
    """A second training into a folder another process is training into is refused, naming
    that process; the first one's metrics have each epoch once."""
    prepare_dataset("folder", root=tones, frontend="speakers", progress=False)
    out = tmp_path / "shared"
    first = subprocess.Popen([sys.executable, "-m", "hearproto.cli",
                              *cli_train(tones, out, "--epochs", "12")], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the first run holds the lock
            if (out / ".lock").is_file():
                with open(out / ".lock") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        fcntl.flock(handle, fcntl.LOCK_UN)
                    except BlockingIOError:
                        break
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.02)
        assert cli.main(cli_train(tones, out, "--epochs", "12", "--seed", "2")) == 2
        assert f"in use by another run (pid {first.pid})" in refusal(capsys)
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    epochs = [row[0] for row in metrics_without_timings(out / "metrics.csv")[1:]]
    assert epochs == [str(e) for e in range(1, len(epochs) + 1)] and len(epochs) >= 2
    # in one process, the lock names its holder too, and goes with it
    with exclusive(tmp_path / "held"):
        with pytest.raises(RunLocked, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            train(config(tones, tmp_path / "held", epochs=1), progress=False)
    assert train(config(tones, tmp_path / "held", epochs=1), progress=False)["epochs"] == 1


# --------------------------------------------------------------------------------------------
# Silent corruption


def test_resuming_on_other_files_with_the_same_class_names_is_refused(tones, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(cli_train(tones, out, "--epochs", "1")) == 0
    other = shutil.copytree(tones, tmp_path / "other")  # the same classes, fewer files
    for label in ("low", "mid", "high"):
        (other / label / "0.wav").unlink()
    capsys.readouterr()
    assert cli.main(cli_train(other, out, "--epochs", "2")) == 2
    line = refusal(capsys)
    assert "other data" in line and line.endswith("--override SETTING)")
    assert load_checkpoint(out / "last.pt")[1]["state"]["epoch"] == 1


def test_a_diverged_run_stops_and_is_never_scored(tones, tmp_path, capsys):
    out = tmp_path / "diverged"
    train(config(tones, out, epochs=1), progress=False)
    with pytest.raises(TrainingDiverged, match="in epoch 2; last.pt keeps epoch 1.*smaller "
                                               "learning rate"):
        train(config(tones, out, epochs=3, lr=1e30), progress=False, overrides=["lr"])
    model, payload = load_checkpoint(out / "last.pt")
    assert payload["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    # from the command line: one line, exit 2, and no row in --results
    assert cli.main(cli_train(tones, tmp_path / "n", "--epochs", "3", "--lr", "1e30")) == 2
    assert "the training loss became nan in epoch 1; nothing was saved" in refusal(capsys)
    payload["model"]["prototypes"][0, 0] = float("nan")
    torch.save(payload, out / "nan.pt")
    results = tmp_path / "r.csv"
    assert cli.main(["evaluate", "--checkpoint", str(out / "nan.pt"), "--json",
                     "--results", str(results)]) == 2
    assert "weights that are not finite (prototypes)" in refusal(capsys)
    assert not results.exists()


def test_json_scores_never_hold_nan(tones, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train(config(tones, out, epochs=1), progress=False)
    import hearproto.training as training

    real = training.evaluate_checkpoint
    monkeypatch.setattr(training, "evaluate_checkpoint",
                        lambda *a, **k: {**real(*a, **k), "L_rec": float("inf")})
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out / "last.pt"), "--json"]) == 0
    text = capsys.readouterr().out
    scores = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert scores["L_rec"] is None and scores["null_reasons"] == {"L_rec": "not finite (inf)"}


def test_evaluating_on_other_files_is_refused_unless_resplit(tones, tmp_path, capsys):
    out = tmp_path / "ref"
    train(config(tones, out, epochs=1), progress=False)
    old = prepare_dataset("folder", root=tones, frontend="speakers", progress=False).table
    shrunk = shutil.copytree(tones, tmp_path / "shrunk")
    for path in old.loc[old["split"] == "test", "path"]:  # the new test clips: old training ones
        (shrunk / path).unlink()
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out / "last.pt"), "--root", str(shrunk)]) == 2
    assert "trained on other files or another split" in refusal(capsys)

    # --resplit scores the new split and counts its clips the checkpoint was trained on
    new = prepare_dataset("folder", root=shrunk, frontend="speakers", progress=False).table
    trained = set(old.loc[old["split"] == "train", "path"])
    expected = len(set(new.loc[new["split"] == "test", "path"]) & trained)
    assert expected > 0  # the case the check is for
    tested = len(new[new["split"] == "test"])
    with pytest.warns(UserWarning, match=f"{expected} of {tested} test clips .* were training "
                                         "clips of this checkpoint"):
        assert cli.main(["evaluate", "--checkpoint", str(out / "last.pt"), "--root",
                         str(shrunk), "--resplit", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seen_in_training"] == expected
    # the folder it was trained on, moved, is still accepted
    moved = shutil.copytree(tones, tmp_path / "moved")
    assert cli.main(["evaluate", "--checkpoint", str(out / "last.pt"), "--root", str(moved),
                     "--json"]) == 0
    assert "seen_in_training" not in json.loads(capsys.readouterr().out)


def test_numeric_class_names_play_the_class_named(tmp_path, capsys):
    root = write_tones(tmp_path / "numbers", names=("1", "2", "3"))
    out = tmp_path / "num"
    train(config(root, out, epochs=1), progress=False)
    play = ["play", "--checkpoint", str(out / "last.pt"), "--seconds", "0.2"]
    capsys.readouterr()
    assert cli.main([*play, "--prototype", "1", "--out", str(tmp_path / "p1.wav")]) == 0
    assert "prototype 0, class 1" in capsys.readouterr().out
    assert cli.main([*play, "--class", "3", "--out", str(tmp_path / "c3.wav")]) == 0
    assert "prototype 2, class 3" in capsys.readouterr().out
    assert cli.main([*play, "--index", "2", "--out", str(tmp_path / "i2.wav")]) == 0
    assert "prototype 2, class 3" in capsys.readouterr().out
    np.testing.assert_array_equal(sf.read(tmp_path / "c3.wav")[0], sf.read(tmp_path / "i2.wav")[0])
    assert cli.main([*play, "--class", "4", "--out", str(tmp_path / "c4.wav")]) == 2
    assert "--class '4' is not a class of this model (1, 2, 3)" in refusal(capsys)


def test_clips_without_two_frames_are_skipped_and_short_ones_extended(tmp_path, capsys):
    """Under MIN_FRAMES frames a file is skipped and counted; from MIN_FRAMES to 15 frames it
    is kept, stored extended to ENCODER_FRAMES by repeating it from its start, and counted."""
    root = write_tones(tmp_path / "short")
    rng = np.random.default_rng(1)
    sf.write(root / "low" / "ten_ms.wav", harmonic(150.0, 0.01, rng), SR)
    sf.write(root / "mid" / "one_sample.wav", harmonic(600.0, 0.6, rng)[:1], SR)
    whole = root / "high" / "0.wav"
    (root / "high" / "truncated.wav").write_bytes(whole.read_bytes()[:44 + 2 * 8])  # 8 samples
    # the shortest clip kept: MIN_FRAMES frames exactly; and one of 5 frames
    sf.write(root / "high" / "just_long_enough.wav",
             harmonic(2400.0, 1.0, rng)[:(MIN_FRAMES - 1) * 512], SR)
    sf.write(root / "high" / "five_frames.wav", harmonic(2400.0, 1.0, rng)[:4 * 512], SR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    message = next(str(w.message) for w in caught if "unusable" in str(w.message))
    for name in ("ten_ms.wav", "one_sample.wav", "truncated.wav"):
        assert f"{name} (too short" in message
    assert "just_long_enough" not in message and "five_frames" not in message
    assert data.table["frames"].min() == ENCODER_FRAMES
    assert data.info()["skipped_by_kind"] == {"too short": 3}
    assert data.info()["extended"] == 2
    five = data.table.index[data.table["path"] == "high/five_frames.wav"][0]
    frames = np.asarray(data.store.clip(five))
    np.testing.assert_array_equal(frames[5:10], frames[:5])  # repeated from its start
    assert frames.shape[0] == ENCODER_FRAMES
    assert cli.main(["data", "info", "folder", "--root", str(root), "--preset", "speakers"]) == 0
    assert "3 file(s) skipped (3 too short), 2 short clip(s) extended" in capsys.readouterr().out
    assert cli.main(["data", "prepare", "folder", "--root", str(root), "--preset",
                     "speakers"]) == 0
    assert "2 clip(s) under 16 frames (480 ms) extended" in capsys.readouterr().out


def test_silence_is_judged_at_the_file_bit_depth(tmp_path):
    """Stereo channels that cancel but for one 16-bit step are silent; a quiet real sound
    (-70 dBFS) in the same format is not."""
    root = write_tones(tmp_path / "quiet")
    rng = np.random.default_rng(2)
    tone = harmonic(600.0, 0.6, rng)
    step = 2.0 ** -15
    residue = np.stack([tone, -tone + step * rng.integers(0, 2, len(tone))], axis=1)
    sf.write(root / "mid" / "cancelled.wav", residue, SR, subtype="PCM_16")
    quiet = tone / np.sqrt(np.mean(tone ** 2)) * 10 ** (-70 / 20)
    sf.write(root / "mid" / "quiet.wav", quiet, SR, subtype="PCM_16")
    cancelled_rms = np.sqrt(np.mean(sf.read(root / "mid" / "cancelled.wav")[0].mean(1) ** 2))
    assert cancelled_rms > 1e-5  # above the old, fixed threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    message = next(str(w.message) for w in caught if "unusable" in str(w.message))
    assert "cancelled.wav (silent" in message and "quiet.wav" not in message
    assert "mid/quiet.wav" in set(data.table["path"])


# --------------------------------------------------------------------------------------------
# Crashes and messages


def test_metrics_csv_emptied_or_deleted_is_rebuilt_from_the_checkpoint(tones, tmp_path):
    straight = tmp_path / "straight"
    train(config(tones, straight, epochs=3), progress=False)
    for damage in ("emptied", "deleted"):
        out = tmp_path / damage
        train(config(tones, out, epochs=2), progress=False)
        if damage == "emptied":
            (out / "metrics.csv").write_text("")
        else:
            (out / "metrics.csv").unlink()
        train(config(tones, out, epochs=3), progress=False)
        assert_same_run(straight, out)


def test_a_dataset_without_usable_audio_says_so(tmp_path, capsys):
    root = tmp_path / "bad"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        (root / label / "x.wav").write_bytes(b"")
        (root / label / "y.wav").write_bytes(os.urandom(2000))
    assert cli.main(["data", "prepare", "folder", "--root", str(root)]) == 2
    assert f"no usable audio in {root}: all 4 file(s) skipped" in refusal(capsys)


def test_random_bytes_are_not_a_readable_audio_file(tmp_path):
    root = write_tones(tmp_path / "noise")
    (root / "low" / "random.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    message = next(str(w.message) for w in caught if "unusable" in str(w.message))
    assert "random.wav (not a readable audio file" in message
    assert "pipe" not in message and "does not exist" not in message


def test_foreign_and_unsafe_checkpoints_are_refused_without_torch_advice(tones, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    train(config(tones, out, epochs=1), progress=False)
    payload = load_checkpoint(out / "last.pt")[1]
    del payload["model"]
    torch.save(payload, tmp_path / "no_model.pt")
    torch.save({"model": pd.Timestamp("2026-01-01"), "format": 1, "config": {}},
               tmp_path / "pickled.pt")
    for name, expected in (("no_model.pt", "not a hearproto checkpoint (no model)"),
                           ("pickled.pt", "hearproto loads no such file")):
        for command in (["evaluate"], ["play", "--prototype", "0", "--out", str(tmp_path / "p.wav")]):
            assert cli.main([*command, "--checkpoint", str(tmp_path / name)]) == 2
            line = refusal(capsys)
            assert expected in line and "weights_only" not in line, line


def test_a_truncated_last_checkpoint_says_how_to_recover(tones, tmp_path, capsys):
    out = tmp_path / "run"
    run = cli_train(tones, out, "--recipe", "paper", "--set", "stage_epochs=1")
    assert cli.main([*run, "--epochs", "3"]) == 0
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    assert cli.main([*run, "--epochs", "4"]) == 2
    line = refusal(capsys)
    assert "truncated" in line and "start afresh" in line
    stages = sorted((out / "stages").glob("*.pt"))
    assert stages and "resume from the last stage saved" in line
    # the advice works: a stage checkpoint in last.pt's place resumes
    stage = line.split("copy ")[1].split(" to ")[0]
    shutil.copy(stage, last)
    assert cli.main([*run, "--epochs", "4"]) == 0


@pytest.mark.parametrize("seconds", ["inf", "1e5", "nan", "0", "0.05", "61"])
def test_play_seconds_are_bounded(tones, tmp_path, capsys, seconds):
    out = tmp_path / "run"
    if not (out / "last.pt").exists():
        train(config(tones, out, epochs=1), progress=False)
    capsys.readouterr()
    assert cli.main(["play", "--checkpoint", str(out / "last.pt"), "--prototype", "0",
                     "--seconds", seconds, "--out", str(tmp_path / "x.wav")]) == 2
    line = refusal(capsys)
    assert "seconds must be between 0.1 and 60" in line and line.endswith("(--seconds)")
    assert not (tmp_path / "x.wav").exists()


def test_outputs_need_their_folder_and_force(tones, tmp_path, capsys):
    out = tmp_path / "run"
    train(config(tones, out, epochs=1), progress=False)
    play = ["play", "--checkpoint", str(out / "last.pt"), "--prototype", "0", "--seconds", "0.2"]
    capsys.readouterr()
    assert cli.main([*play, "--out", str(tmp_path / "typo" / "x.wav")]) == 2
    assert f"the folder {tmp_path / 'typo'} does not exist" in refusal(capsys)
    assert not (tmp_path / "typo").exists()
    assert cli.main([*play, "--out", str(tmp_path / "x.wav")]) == 0
    assert cli.main([*play, "--out", str(tmp_path / "x.wav")]) == 2
    assert "exists; add --force" in refusal(capsys)
    assert cli.main([*play, "--out", str(tmp_path / "x.wav"), "--force"]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(out / "last.pt"), "--results",
                     str(tmp_path / "typo" / "r.csv")]) == 2
    assert "does not exist; create it first" in refusal(capsys)


@pytest.mark.parametrize("flag, value", [
    ("--max-minutes", "0"), ("--max-minutes", "-1"), ("--max-minutes", "nan"), ("--lr", "0"),
    ("--lr=-1e-3", None), ("--threads", "0"), ("--prototypes", "0"), ("--epochs", "0"),
    ("--device", "tpu")])
def test_bad_settings_are_refused_in_one_line_naming_the_flag(tones, tmp_path, capsys, flag,
                                                              value):
    args = ["train", "--dataset", "folder", "--root", str(tones), "--out", str(tmp_path / "b"),
            "--preset", "speakers", "--no-compile", flag] + ([value] if value else [])
    assert cli.main(args) == 2
    line = refusal(capsys)
    assert line.endswith(f"({flag.split('=')[0]})") and "must be" in line
    assert not (tmp_path / "b").exists()  # refused before anything is written


def test_one_class_is_refused(tmp_path):
    root = write_tones(tmp_path / "one")
    for name in ("mid", "high"):
        shutil.rmtree(root / name)
    with pytest.raises(DatasetError, match="one class \\(low\\): identification needs two"):
        train(config(root, tmp_path / "o", epochs=1), progress=False)


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_stale_temporary_folders_are_removed_on_the_next_run(tones, data_home):
    """What a killed `data prepare` leaves (a temporary feature folder, a half-generated
    dataset) goes at the next run; a live process's temporary stays."""
    features = data_home / "features"
    stale, live = features / ".folder-1234-abcd", features / ".folder-5678-efgh"
    generated = data_home / ".speakers-limit2-wxyz"
    for folder, pid in ((stale, _dead_pid()), (live, os.getpid()), (generated, _dead_pid())):
        folder.mkdir(parents=True)
        (folder / OWNER_FILE).write_text(f"{socket.gethostname()} {pid}\n")
        (folder / "features.f32").write_bytes(b"half")
    prepare_dataset("folder", root=tones, frontend="speakers", progress=False)
    assert not stale.exists() and live.exists()
    # a built-in dataset's call removes its own, even one refused (here: another size asked)
    root = data_home / "speakers-limit2"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"name": "speakers", "seed": 0,
                                                   "limit_per_class": 2}))
    with pytest.raises(DatasetError, match="holds another generated dataset"):
        prepare_dataset("speakers", root=root, limit_per_class=3, progress=False)
    assert not generated.exists()


def test_a_dangling_symlink_is_reported_like_any_skipped_file(tones):
    (tones / "low" / "gone.wav").symlink_to(tones / "nowhere.wav")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare_dataset("folder", root=tones, frontend="speakers", progress=False)
    message = next(str(w.message) for w in caught if "unusable" in str(w.message))
    assert "low/gone.wav (a symbolic link to" in message and "which does not exist" in message
    assert data.info()["skipped_by_kind"] == {"unreadable": 1}


def test_debug_shows_the_traceback(tmp_path, capsys):
    missing = ["evaluate", "--checkpoint", str(tmp_path / "none.pt")]
    assert cli.main(missing) == 2
    assert refusal(capsys).endswith("none.pt: no such checkpoint")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        cli.main([*missing, "--debug"])
