"""Shipped runs (weights/): written from a run folder, unpacked back to checkpoints that score
as the originals, checked by sha256, never trained further, and used by the runs cache
instead of training unless told to retrain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hearproto.baselines.probe import linear_probe
from hearproto.baselines.trainer import BaselineConfig, evaluate_baseline, train_baseline
from hearproto.data import prepare_dataset
from hearproto.errors import CheckpointError, DatasetError
from hearproto.runner import runs
from hearproto.runner.shipped import (budget_of, default_keep, ensure_unpacked, is_unpacked,
                                      ship_run, shipped_files, shipped_runs_table, shipped_scores,
                                      unpack_run)
from hearproto.runner import tables
from hearproto.runner.tables import evaluate_rows
from hearproto.training import (TrainConfig, evaluate_checkpoint, load_checkpoint,
                                read_checkpoint, train)

pytestmark = pytest.mark.usefixtures("data_home")


def ours(root: Path, out: Path) -> TrainConfig:
    """Our model through three one-epoch stages (three stage checkpoints and last.pt)."""
    return TrainConfig.from_recipe(
        "paper", dataset="folder", root=str(root), out=str(out), mode="supervised", epochs=3,
        stage_epochs=1, preset="speakers", compile=False, batch_size=8, lr=3e-3, k_chunk=2,
        seed=0, eval_batch_size=16, threads=1)


@pytest.fixture
def run(tones, tmp_path) -> Path:
    out = tmp_path / "runs" / "ci" / "folder" / "ours-supervised-seed0-abcd1234"
    train(ours(tones, out), progress=False)
    return out


def test_a_shipped_run_unpacks_to_checkpoints_that_score_as_the_originals(run, tmp_path):
    weights = tmp_path / "weights"
    sidecar = ship_run(run, "ci", "folder", root=weights, half=None)
    tensors_file, sidecar_file = shipped_files(run, "ci", "folder", weights)
    assert json.loads(sidecar_file.read_text())["sha256"] == sidecar["sha256"]
    assert set(sidecar["checkpoints"]) == {"last.pt", "stages/raw.pt", "stages/gain.pt",
                                           "stages/pitch.pt"}
    # a tensor is stored once: the pitch decoder does not change before its stage
    stored = load_file(str(tensors_file))
    references = [e["tensor"] for c in sidecar["checkpoints"].values() for e in c["weights"].values()]
    assert len(stored) < len(references)
    assert sidecar["commits"] and sidecar["data"]["split_hash"] and sidecar["minutes"] >= 0

    copy = tmp_path / "copy" / run.name
    assert unpack_run(copy, "ci", "folder", root=weights)
    assert is_unpacked(copy) and (copy / "metrics.csv").read_text() == (run / "metrics.csv").read_text()
    for name in ("last.pt", "stages/gain.pt"):
        a = evaluate_checkpoint(run / name, split="val")
        b = evaluate_checkpoint(copy / name, split="val")
        assert (a["OA"], a["AA"], a["stage"]) == (b["OA"], b["AA"], b["stage"])
        assert b["L_rec"] == pytest.approx(a["L_rec"], rel=0.005)
        original, unpacked = load_checkpoint(run / name)[0], load_checkpoint(copy / name)[0]
        for key, tensor in original.state_dict().items():
            assert unpacked.state_dict()[key].dtype == tensor.dtype
            torch.testing.assert_close(unpacked.state_dict()[key], tensor, rtol=1e-3, atol=1e-3)
    # the training clips' paths travel compressed and come back whole
    seen = read_checkpoint(run / "last.pt")["data"]["train_paths"]
    assert "train_paths" not in sidecar["data"] and len(seen) > 10
    assert read_checkpoint(copy / "last.pt")["data"]["train_paths"] == seen


def test_a_damaged_shipped_file_is_refused(run, tmp_path):
    weights = tmp_path / "weights"
    ship_run(run, "ci", "folder", root=weights, half=True)
    tensors_file, _ = shipped_files(run, "ci", "folder", weights)
    data = bytearray(tensors_file.read_bytes())
    data[-1] ^= 0xFF
    tensors_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 .* damaged or was replaced"):
        unpack_run(tmp_path / "copy" / run.name, "ci", "folder", root=weights)


def test_an_unfinished_run_is_not_shipped(tones, tmp_path):
    out = tmp_path / "runs" / "ci" / "folder" / "ours-supervised-seed0-abcd1234"
    config = ours(tones, out)
    config.max_minutes = 1e-4  # stops after one epoch, on its time budget
    train(config, progress=False)
    with pytest.raises(CheckpointError, match="has not finished \\(time budget"):
        ship_run(out, "ci", "folder", root=tmp_path / "weights")


def test_an_unpacked_run_is_not_trained_further(run, tones, tmp_path):
    weights = tmp_path / "weights"
    ship_run(run, "ci", "folder", root=weights, half=True)
    copy = tmp_path / "copy" / run.name
    unpack_run(copy, "ci", "folder", root=weights)
    config = ours(tones, copy)
    config.epochs = 5
    with pytest.raises(CheckpointError, match="holds a shipped run"):
        train(config, progress=False)


def test_the_runs_cache_unpacks_shipped_runs_unless_retraining(run, tones, tmp_path,
                                                               monkeypatch):
    weights = tmp_path / "weights"
    monkeypatch.setenv("HEARPROTO_WEIGHTS", str(weights))
    ship_run(run, "ci", "folder", half=True)
    config = ours(tones, tmp_path / "cache" / "ci" / "folder" / run.name)
    calls = []
    monkeypatch.setattr(runs, "train", lambda *a, **k: calls.append(a))
    assert runs.ensure_run(config, progress=False) == Path(config.out)
    assert is_unpacked(config.out) and calls == []
    monkeypatch.setenv("HEARPROTO_RETRAIN", "1")
    runs.ensure_run(config, progress=False)
    assert len(calls) == 1 and not Path(config.out).exists()  # the unpacked copy made way


def test_a_run_shipped_from_other_data_is_trained_again(run, tones, tmp_path, monkeypatch):
    """A shipped run keeps its folder name when a built-in dataset is rebuilt (the data are not
    in the name): the runs cache and train_runs use it only where its split hash is the data's
    here, and train the run afresh otherwise."""
    weights = tmp_path / "weights"
    monkeypatch.setenv("HEARPROTO_WEIGHTS", str(weights))
    ship_run(run, "ci", "folder", half=True)
    config = ours(tones, tmp_path / "cache" / "ci" / "folder" / run.name)
    assert runs.shipped_current(config)
    _, sidecar_file = shipped_files(run, "ci", "folder")
    other = ours(tones, config.out)
    other.lr = 1e-2  # another setting than the shipped run's: another run
    assert not runs.shipped_current(other)
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["data"]["split_hash"] = "another"
    sidecar_file.write_text(json.dumps(sidecar))
    assert not runs.shipped_current(config)
    calls = []
    monkeypatch.setattr(runs, "train", lambda *a, **k: calls.append(a))
    runs.ensure_run(config, progress=False)
    assert len(calls) == 1 and not is_unpacked(config.out)


def test_a_folder_unpacked_from_an_earlier_shipping_is_unpacked_again(run, tmp_path):
    """ensure_unpacked leaves a folder unpacked from the sidecar weights/ holds now, and
    unpacks again one whose sidecar was since replaced (a run shipped anew)."""
    weights = tmp_path / "weights"
    ship_run(run, "ci", "folder", root=weights, half=True)
    copy = tmp_path / "cache" / run.name
    assert ensure_unpacked(copy, "ci", "folder", root=weights)
    stamp = (copy / "last.pt").stat().st_mtime_ns
    assert ensure_unpacked(copy, "ci", "folder", root=weights)
    assert (copy / "last.pt").stat().st_mtime_ns == stamp
    ship_run(run, "ci", "folder", root=weights, half=False, overwrite=True)
    assert ensure_unpacked(copy, "ci", "folder", root=weights)
    assert json.loads((copy / "shipped.json").read_text())["dtype"] == "float32"
    assert not ensure_unpacked(tmp_path / "cache" / "direct-seed0-00000000", "ci", "folder",
                               root=weights)


def test_train_runs_leaves_alone_the_runs_weights_ships_from_these_data(tones, tmp_path,
                                                                        monkeypatch):
    """Runs shipped on one machine are not repeated on the next: train_runs skips a run that
    weights/ ships from the same settings and data, and trains it with HEARPROTO_RETRAIN=1."""
    monkeypatch.setenv("HEARPROTO_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HEARPROTO_RUNS", str(tmp_path / "runs"))
    train = dict(device="cpu", root=str(tones), progress=False, report=lambda line: None)
    first = runs.train_runs("ci", ["folder"], ["direct"], [0], **train)
    ship_run(first[0]["out"], "ci", "folder", keep="evaluated")
    shutil.rmtree(first[0]["out"])
    lines = []
    again = runs.train_runs("ci", ["folder"], ["direct"], [0], **{**train, "report": lines.append})
    assert again[0]["done"] and again[0]["stop_reason"] == "shipped in weights/"
    assert "weights/ ships it" in lines[0] and not Path(first[0]["out"]).exists()
    status = runs.runs_status("ci", ["folder"], ["direct"], [0], root=str(tones))
    assert list(status["state"]) == ["shipped in weights/"]
    # its training is counted as it was trained, so that the status totals every run's
    assert status.loc[0, "epochs"] == first[0]["epochs"]
    assert status.loc[0, "minutes"] == round(float(first[0]["minutes"]), 1)
    monkeypatch.setenv("HEARPROTO_RETRAIN", "1")
    retrained = runs.train_runs("ci", ["folder"], ["direct"], [0], **train)
    assert retrained[0]["stop_reason"] != "shipped in weights/"
    assert (Path(first[0]["out"]) / "last.pt").is_file()


@pytest.fixture
def direct(tones, tmp_path) -> Path:
    out = tmp_path / "runs" / "ci" / "folder" / "direct-seed0-abcd1234"
    train_baseline(BaselineConfig(model="direct", dataset="folder", root=str(tones),
                                  out=str(out), epochs=2, batch_size=8, preset="speakers",
                                  threads=1), progress=False)
    return out


def test_a_baseline_ships_its_best_checkpoint(direct, tmp_path):
    weights = tmp_path / "weights"
    sidecar = ship_run(direct, "ci", "folder", root=weights, half=True)
    assert set(sidecar["checkpoints"]) == {"last.pt", "best.pt"}
    copy = tmp_path / "copy" / direct.name
    unpack_run(copy, "ci", "folder", root=weights)
    a = evaluate_baseline(direct / "best.pt", split="val")
    b = evaluate_baseline(copy / "best.pt", split="val")
    assert (a["OA"], a["AA"]) == (b["OA"], b["AA"])


def test_keeping_the_evaluated_checkpoint_ships_only_it(run, direct, tmp_path):
    weights = tmp_path / "weights"
    everything = ship_run(run, "ci", "folder", root=weights, half=True)
    ours_only = ship_run(run, "ci", "folder", root=weights, half=True, keep="evaluated",
                         overwrite=True)
    assert list(ours_only["checkpoints"]) == ["last.pt"]
    assert ours_only["bytes"] < everything["bytes"]
    assert list(ship_run(direct, "ci", "folder", root=weights, half=True,
                         keep="evaluated")["checkpoints"]) == ["best.pt"]
    copy = tmp_path / "copy" / run.name
    unpack_run(copy, "ci", "folder", root=weights)
    assert sorted(p.name for p in copy.rglob("*.pt")) == ["last.pt"]
    a, b = (evaluate_checkpoint(r / "last.pt", split="val") for r in (run, copy))
    assert (a["OA"], a["AA"]) == (b["OA"], b["AA"])


def test_a_run_shipped_as_rows_gives_its_scores_to_the_tables(direct, tones, tmp_path):
    weights = tmp_path / "weights"
    sidecar = ship_run(direct, "ci", "folder", root=weights, keep="scores")
    tensors_file, _ = shipped_files(direct, "ci", "folder", weights)
    assert not tensors_file.exists() and sidecar["bytes"] == 0 and sidecar["checkpoints"] == {}
    copy = tmp_path / "copy" / direct.name
    assert unpack_run(copy, "ci", "folder", root=weights) and is_unpacked(copy)
    assert not list(copy.rglob("*.pt"))
    rows = evaluate_rows([(copy / "best.pt", {"method": "Direct"})], "test")
    expected = evaluate_baseline(direct / "best.pt", split="test")
    assert rows.loc[0, ["OA", "AA", "clips"]].tolist() == [expected["OA"], expected["AA"],
                                                          expected["clips"]]
    assert rows.loc[0, "seed"] == 0 and rows.loc[0, "epochs"] is not None
    stored = shipped_scores(copy / "best.pt", "test")["contents"]["data"]["train_paths"]
    assert stored == read_checkpoint(direct / "best.pt")["data"]["train_paths"]
    with pytest.raises(CheckpointError, match="without its val scores"):
        evaluate_rows([(copy / "best.pt", {})], "val")
    # the floor beside it is computed on the data its stored scores name
    floor = tables._floor_scores(rows.iloc[0], "probe", None)
    train, test = (prepare_dataset("folder", root=str(tones), frontend="speakers", progress=False)
                   .split(s, crop_frames=None) for s in ("train", "test"))
    assert floor["OA"] == linear_probe(train, test)["OA"]


def test_the_tables_read_the_scores_stored_at_shipping(run, tmp_path, monkeypatch):
    """Each shipped run stores the scores the tables read (the evaluated checkpoint on test,
    every stage checkpoint on val); the tables take them from an unpacked copy instead of
    evaluating it, with the provenance of the evaluation that made them."""
    weights = tmp_path / "weights"
    sidecar = ship_run(run, "ci", "folder", root=weights, half=True)
    assert {(e["checkpoint"], e["split"]) for e in sidecar["scores"]} == {
        ("last.pt", "test"), ("stages/raw.pt", "val"), ("stages/gain.pt", "val"),
        ("stages/pitch.pt", "val")}
    expected = {(name, split): evaluate_checkpoint(run / name, split=split)
                for name, split in (("last.pt", "test"), ("stages/gain.pt", "val"))}
    copy = tmp_path / "copy" / run.name
    unpack_run(copy, "ci", "folder", root=weights)

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(tables, "evaluate_checkpoint", refuse)
    for (name, split), scores in expected.items():
        row = evaluate_rows([(copy / name, {"method": "ours"})], split).iloc[0]
        assert (row["OA"], row["AA"], row["L_rec"], row["stage"]) == (
            scores["OA"], scores["AA"], scores["L_rec"], scores["stage"])
        assert row["commit"] == sidecar["scores"][0]["commit"]
    with pytest.raises(AssertionError, match="evaluated again"):  # no stored train scores
        evaluate_rows([(copy / "last.pt", {})], "train")
    with pytest.raises(AssertionError, match="evaluated again"):  # the run itself: evaluated
        evaluate_rows([(run / "last.pt", {})], "test")
    # stored scores hold for the data they were made on only, as checkpoints do
    marker = copy / "shipped.json"
    facts = json.loads(marker.read_text())
    facts["data"]["split_hash"] = "another split"
    marker.write_text(json.dumps(facts))
    with pytest.raises(DatasetError, match="other files or another split"):
        evaluate_rows([(copy / "last.pt", {})], "test")


def test_the_shipped_runs_table_gives_each_run_its_budget_and_time(run, direct, tmp_path):
    weights = tmp_path / "weights"
    ship_run(run, "ci", "folder", root=weights, half=True)
    ship_run(direct, "ci", "folder", root=weights, keep="scores")
    table = shipped_runs_table("ci", root=weights).set_index("method")
    assert list(table.index) == ["direct", "ours-supervised"]
    assert table.loc["ours-supervised", "budget"] == "1 epoch per stage"
    assert table.loc["direct", "budget"] == "2 epochs, patience 20"
    assert table.loc["direct", "kept"] == "scores" and table.loc["direct", "MB"] == 0
    assert table.loc["ours-supervised", "epochs"] == 3 and table.loc["ours-supervised", "MB"] > 0
    assert table.loc["ours-supervised", "trained on"].endswith(", 1 thread)")
    sidecar = json.loads(shipped_files(run, "ci", "folder", weights)[1].read_text())
    assert table.loc["ours-supervised", "sha256"] == sidecar["sha256"][:12]
    assert table.loc["direct", "sha256"] == ""  # rows only: no file to check
    assert len(table.loc["ours-supervised", "trained at"]) in (0, 10)  # a git checkout or not
    assert budget_of({"stage_steps": 150, "ce_stage_steps": 2700, "mode": "supervised"}) == \
        "150 steps per transformation stage, 2700 of cross-entropy"
    assert budget_of({"model": "apnet", "steps": 400, "epochs": 1000}) == "400 steps"
    assert shipped_runs_table("full", root=tmp_path / "none").empty


def test_default_keep():
    assert default_keep("ours-supervised", 0) == default_keep("ours-unsupervised", 0) == "all"
    assert default_keep("ours-supervised", 1) == default_keep("direct", 0) == "evaluated"
    assert default_keep("ours-unsupervised-free", 0) == "evaluated"  # no page reads its stages
    assert default_keep("apnet", 0) == "scores"
    assert default_keep("ours-supervised", 0, "heldout-freepats") == "scores"
    with pytest.raises(ValueError, match="keep='some'"):
        ship_run(Path("nowhere"), "ci", "folder", keep="some")


WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
WEIGHTS_BUDGET_BYTES = 60_000_000  # the book's shipped runs, all of them


def test_the_shipped_weights_are_whole_and_within_budget():
    """weights/ as committed: safetensors and JSON only, within the budget, every sidecar
    with its provenance and a safetensors file of the sha256 it names (none for a run kept
    as table rows)."""
    import hashlib

    files = [p for p in WEIGHTS.rglob("*") if p.is_file()]
    assert files, "weights/ ships no run"
    assert {p.suffix for p in files} <= {".safetensors", ".json"}
    assert sum(p.stat().st_size for p in files) <= WEIGHTS_BUDGET_BYTES
    sidecars = [p for p in files if p.suffix == ".json"]
    for sidecar_file in sidecars:
        sidecar = json.loads(sidecar_file.read_text())
        assert sidecar["commits"] and sidecar["trained_on"] and sidecar["minutes"] > 0
        assert sidecar["data"]["split_hash"] and sidecar["config"]["seed"] == sidecar["seed"]
        tensors_file = sidecar_file.with_suffix(".safetensors")
        if sidecar["keep"] == "scores":
            assert not tensors_file.exists() and sidecar["scores"]
        else:
            assert hashlib.sha256(tensors_file.read_bytes()).hexdigest() == sidecar["sha256"]
    assert {p.with_suffix(".json") for p in files if p.suffix == ".safetensors"} <= set(sidecars)


def test_float16_is_chosen_checkpoint_by_checkpoint(run, tmp_path, monkeypatch):
    from hearproto.runner import shipped

    # as if float16 moved the last checkpoint's validation scores, and no stage's
    monkeypatch.setattr(shipped, "_float16_moves_scores",
                        lambda run, name, packs, device, scored=None: name == "last.pt")
    weights = tmp_path / "weights"
    sidecar = ship_run(run, "ci", "folder", root=weights, half=None)
    assert sidecar["dtype"] == "mixed"
    assert {n: c["stored"] for n, c in sidecar["checkpoints"].items()} == {
        "last.pt": "float32", "stages/raw.pt": "float16", "stages/gain.pt": "float16",
        "stages/pitch.pt": "float16"}
    stored = load_file(str(shipped_files(run, "ci", "folder", weights)[0]))
    for name, checkpoint in sidecar["checkpoints"].items():
        dtypes = {stored[e["tensor"]].dtype for e in checkpoint["weights"].values()
                  if e["dtype"] == "float32"}
        assert dtypes == {getattr(torch, checkpoint["stored"])}, name
    copy = tmp_path / "copy" / run.name
    unpack_run(copy, "ci", "folder", root=weights)
    original, unpacked = load_checkpoint(run / "last.pt")[0], load_checkpoint(copy / "last.pt")[0]
    for key, tensor in original.state_dict().items():  # float32 kept: bit for bit
        assert torch.equal(unpacked.state_dict()[key], tensor), key


def test_the_float16_check_gives_the_tables_their_validation_scores(run, tmp_path):
    """The float16 check scores every checkpoint in float32 on the validation split; the
    sidecar's validation scores are those, as an evaluation of the run's own checkpoints
    gives them (not computed a second time)."""
    sidecar = ship_run(run, "ci", "folder", root=tmp_path / "weights", half=None)
    stored = [e for e in sidecar["scores"] if e["split"] == "val"]
    assert {e["checkpoint"] for e in stored} == {"stages/raw.pt", "stages/gain.pt",
                                                 "stages/pitch.pt"}
    for entry in stored:
        again = evaluate_checkpoint(run / entry["checkpoint"], "val", "cpu")
        assert {k: entry["scores"][k] for k in ("OA", "AA", "L_rec", "clips")} == \
            {k: again[k] for k in ("OA", "AA", "L_rec", "clips")}
