"""Shared runs and Tables 1-3: configs per scale, reuse of finished runs, table contents."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import SR, harmonic
from hearproto.baselines.probe import linear_probe
from hearproto.baselines.trainer import BaselineConfig
from hearproto.data import prepare_dataset, registry
from hearproto.runner import runs as runs_module
from hearproto.runner.experiments import write_provenance
from hearproto.runner.paper import STAGE_LABELS, paper_table1, paper_table3
from hearproto.runner.runs import HELDOUT_SPLITS, run_config
from hearproto.runner import tables as tables_module
from hearproto.runner.tables import (FLOORS, PAPERS_UNSUPERVISED, TABLE3_METHODS, UNSEEN, data_splits, headline_note,
                                     headline_table, headline_view, table1, table1_note, table2,
                                     table3, write_tables)
from hearproto.training import RESUMABLE, TrainConfig, read_checkpoint


@pytest.fixture(autouse=True)
def homes(tmp_path, monkeypatch, data_home):
    monkeypatch.setenv("HEARPROTO_RUNS", str(tmp_path / "runs"))
    # the 16 kHz tones need the speakers front end; everything else is the real ci scale
    settings = copy.deepcopy(runs_module.SCALE_SETTINGS)
    settings["ci"]["data"]["preset"] = "speakers"
    monkeypatch.setattr(runs_module, "SCALE_SETTINGS", settings)


def test_run_config_per_method_and_scale(tmp_path):
    ours = run_config("ours-unsupervised", "speakers", "small", seed=2)
    assert isinstance(ours, TrainConfig) and ours.mode == "unsupervised" and ours.seed == 2
    folder = tmp_path / "runs" / "small" / "speakers"
    assert ours.out.startswith(str(folder / "ours-unsupervised-seed2-"))
    assert ours.limit_per_class == 8 and ours.stage_epochs == 2
    # the same settings give the same folder; another setting or data folder another one
    assert run_config("ours-unsupervised", "speakers", "small", seed=2, device="cpu").out == ours.out
    assert run_config("ours-unsupervised", "speakers", "small", seed=2, root="/x").out != ours.out
    apnet = run_config("apnet", "instruments", "paper", runs_dir=tmp_path / "elsewhere")
    assert isinstance(apnet, BaselineConfig) and apnet.model == "apnet" and apnet.lr == 1e-4
    assert apnet.limit_per_class is None and apnet.out.startswith(str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="unknown method"):
        run_config("kmeans", "speakers", "ci")
    with pytest.raises(ValueError, match="unknown scale"):
        run_config("direct", "speakers", "huge")


def test_paper_numbers_are_labelled_by_dataset():
    assert paper_table1("instruments", "supervised").set_index("stage").loc["ce", "OA"] == 98.9
    assert paper_table3("speakers").set_index("method").loc["APNet", "OA"] == 97.8
    assert paper_table1("folder", "supervised").empty


def test_tables_train_once_and_carry_provenance(tones, tmp_path):
    table, rows = table3("folder", "ci", root=str(tones), device="cpu", progress=False)
    assert list(table["method"]) == ["Direct Classification", "APNet", "Ours supervised",
                                     FLOORS["probe"]]
    assert (table["seeds"] == 1).all() and table[["OA", "AA"]].stack().between(0, 100).all()
    assert table["OA ci95"].isna().all() and (table["clips"] == 3).all()  # one seed: no interval
    train, test = (prepare_dataset("folder", root=str(tones)).split(s, crop_frames=None)
                   for s in ("train", "test"))
    assert table.loc[3, "OA"] == linear_probe(train, test)["OA"]  # on the runs' own split
    assert pd.isna(table.loc[0, "L_rec"]) and table.loc[2, "L_rec"] > 0
    assert not any(c.startswith("paper") for c in table.columns)  # no counterpart in the paper
    assert (rows["split"] == "test").all() and rows["commit"].str.len().min() >= 7
    assert json.loads(rows.loc[2, "config"])["stage_epochs"] == 1

    last = Path(rows.loc[2, "checkpoint"])  # ours supervised, last.pt
    stamp = last.stat().st_mtime_ns
    ablation, ablation_rows = table1("folder", "ci", root=str(tones), device="cpu",
                                     progress=False)
    assert last.stat().st_mtime_ns == stamp  # the finished run was reused, not retrained
    assert list(ablation["mode"]) == ["unsupervised"] * 5 + ["supervised"] * 5
    assert list(ablation["stage"])[-1] == "+ cross-entropy"
    assert (ablation_rows["split"] == "val").all()

    clustering, _ = table2("folder", "ci", root=str(tones), device="cpu", progress=False)
    assert list(clustering["method"]) == ["Autoencoder + K-means", "APNet + K-means",
                                          PAPERS_UNSUPERVISED, "Ours unsupervised",
                                          FLOORS["kmeans"]]
    free = Path(run_config("ours-unsupervised-free", "folder", "ci", root=str(tones)).out)
    # the paper's assignment: no cross-entropy stage, no held clusters
    assert read_checkpoint(free / "last.pt")["config"]["held_stages"] == []
    assert not (free / "stages" / "ce.pt").exists() and (free / "stages" / "filters.pt").exists()

    folder = tmp_path / "results" / "ci" / "folder"
    written = write_tables("table3", table, rows, folder)
    assert [p.name for p in written] == ["table3.csv", "table3.md", "table3_runs.csv"]
    assert len(pd.read_csv(folder / "table3_runs.csv")) == 3
    assert "±" not in (folder / "table3.md").read_text()
    assert {"OA ci95", "seeds", "clips"} <= set(pd.read_csv(folder / "table3.csv").columns)
    assert "; 1 seed, no interval (seed 0)" in headline_note("folder", "ci", rows, [0])


def test_held_out_sources_add_the_unseen_bank_column(tmp_path, monkeypatch):
    """A generated dataset whose clips come from two sources: Tables 2 and 3 add, per method,
    the test OA of the first seed's run on each held-out source and their mean, and the same
    for the floor, while the headline cells stay those of the random split."""
    def render(out_dir: Path, limit_per_class=None, seed=0, progress=True):
        rng, rows = np.random.default_rng(0), []
        for label, f0 in (("low", 150.0), ("mid", 600.0), ("high", 2400.0)):
            (out_dir / label).mkdir()
            for i in range(12):
                sf.write(out_dir / label / f"{i}.wav",
                         harmonic(f0 * rng.uniform(0.97, 1.03), 0.6, rng), SR)
                rows.append({"path": f"{label}/{i}.wav", "label": label,
                             "lineage": "ab"[i % 2], "bank": "ab"[i % 2]})
        return rows

    monkeypatch.setattr(registry, "_renderer", lambda name: render)
    monkeypatch.setattr(tables_module, "unseen_splits",
                        lambda dataset, scale: ("heldout-a", "heldout-b"))
    root = str(tmp_path / "gen")
    table, rows = table3("speakers", "ci", root=root, device="cpu", progress=False)
    splits = data_splits(rows)
    assert list(splits) == ["random"] * 3 + ["heldout-a"] * 3 + ["heldout-b"] * 3
    assert (rows.loc[splits == "heldout-a", "clips"] == 18).all()  # every clip of source a
    ours = rows["method"] == "Ours supervised"
    by_method = table.set_index("method")
    assert by_method.loc["Ours supervised", "OA"] == rows.loc[ours & (splits == "random"), "OA"].item()
    for source in "ab":
        assert by_method.loc["Ours supervised", f"unseen {source} OA"] == \
            rows.loc[ours & (splits == f"heldout-{source}"), "OA"].item()
    assert by_method[UNSEEN].round(6).equals(
        by_method[["unseen a OA", "unseen b OA"]].mean(axis=1).round(6))
    held_out = prepare_dataset("speakers", root=root, split="heldout-b", limit_per_class=5)
    train, test = (held_out.split(s, crop_frames=None) for s in ("train", "test"))
    assert by_method.loc[FLOORS["probe"], "unseen b OA"] == linear_probe(train, test)["OA"]
    assert UNSEEN in headline_view(table).columns
    note = headline_note("speakers", "ci", rows, [0])
    assert "(6 clips)" in note and "mean over a, b" in note

    clustering, clustering_rows = table2("speakers", "ci", root=root, device="cpu",
                                         progress=False)
    # the paper's free assignment is trained on the random split only (HELDOUT_METHODS)
    unseen = clustering.set_index("method")[UNSEEN]
    assert unseen.drop(PAPERS_UNSUPERVISED).notna().all() and pd.isna(unseen[PAPERS_UNSUPERVISED])
    assert len(clustering_rows) == 4 + 2 * 3


def test_the_unseen_bank_mean_needs_a_run_on_every_held_out_lineage():
    """A method trained without only some of the lineages gets their columns but no mean: a
    mean over fewer lineages than another method's would be over other test clips."""
    def row(method, split, oa):
        return {"method": method, "OA": oa, "config": json.dumps({"split": split})}

    runs = pd.DataFrame([row("Ours", "random", 90.0), row("Direct", "random", 88.0),
                         row("Ours", "heldout-a", 40.0), row("Ours", "heldout-b", 60.0),
                         row("Direct", "heldout-a", 30.0)])
    table = pd.DataFrame({"method": ["Ours", "Direct", "Probe"], "OA": [90.0, 88.0, 40.0],
                          "clips": [10, 10, 10]})
    by_method = tables_module.with_unseen(table, runs).set_index("method")
    assert list(by_method.columns) == ["OA", UNSEEN, "clips", "unseen a OA", "unseen b OA"]
    assert by_method.loc["Ours", UNSEEN] == 50.0
    assert by_method.loc["Direct", "unseen a OA"] == 30.0
    assert pd.isna(by_method.loc["Direct", UNSEEN]) and pd.isna(by_method.loc["Probe", UNSEEN])
    paragraph = tables_module.unseen_markdown(by_method.reset_index(), 0, "the probe")
    assert "Ours: a 40.0, b 60.0; Direct: a 30.0, b —." in paragraph
    assert "Probe" not in paragraph and "nan" not in paragraph
    assert tables_module.unseen_markdown(table, 0, "the probe") is None


def _seed_rows(values: dict[str, list[float]]) -> pd.DataFrame:
    """Runs rows of Table 3's methods: per method label, one OA per seed."""
    return pd.DataFrame([{"method": method, "seed": seed, "OA": oa, "AA": oa, "L_rec": None,
                          "clips": 330, "train_minutes": 1.0, "trained_on": "cpu"}
                         for method, seeds in values.items() for seed, oa in enumerate(seeds)])


def test_headline_cells_are_the_mean_and_the_half_width_of_its_95_interval(tmp_path):
    """Three seeds: mean ± t_{0.975, 2} s / sqrt(3) (t = 4.302653); one seed: the value alone,
    and the note says so."""
    runs = _seed_rows({"Direct Classification": [70.0, 75.0, 80.0], "APNet": [60.0],
                       "Ours supervised": [80.0, 81.0, 82.0]})
    table = headline_table(runs, TABLE3_METHODS, ("OA", "AA", "L_rec"))
    assert list(table["seeds"]) == [3, 1, 3] and list(table["clips"]) == [330] * 3
    assert table.loc[0, "OA"] == 75.0
    assert table.loc[0, "OA ci95"] == pytest.approx(4.302653 * 5 / 3 ** 0.5, rel=1e-6)
    assert pd.isna(table.loc[1, "OA ci95"])
    shown = headline_view(table)
    assert list(shown["OA"]) == ["75.0 ± 12.4", "60.0", "81.0 ± 2.5"]
    assert list(shown["L_rec"]) == ["—"] * 3
    note = headline_note("instruments", "small", runs, [0, 1, 2])
    assert ("the mean over seeds 0, 1, 2 ± the half-width of its 95 % confidence interval "
            "(Student t); APNet: 1 seed, no interval.") in note
    write_tables("table3", table, runs, tmp_path)
    markdown = (tmp_path / "table3.md").read_text()
    assert "| Direct Classification |       3 | 75.0 ± 12.4 |" in markdown
    assert pd.read_csv(tmp_path / "table3.csv").loc[0, "OA ci95"] == table.loc[0, "OA ci95"]


def test_table1_reads_a_run_without_stage_checkpoints_from_its_metrics(tones):
    """A run shipped without its stages (seeds 1 and 2 keep last.pt only): its OA at each
    stage's end, as metrics.csv recorded it, is what scoring the stage's checkpoint gives;
    the raw prototypes have no epoch, so no value."""
    runs_module.train_runs("ci", ["folder"], ["ours-unsupervised", "ours-supervised"], [1],
                           device="cpu", root=str(tones), progress=False, report=lambda _: None)
    scored, _ = table1("folder", "ci", root=str(tones), device="cpu", progress=False,
                       seeds=(0, 1))
    for mode in ("unsupervised", "supervised"):  # as unpacked: stages/ without checkpoints
        stages = Path(run_config(f"ours-{mode}", "folder", "ci", 1, str(tones)).out) / "stages"
        for checkpoint in stages.glob("*.pt"):
            checkpoint.unlink()
    read, rows = table1("folder", "ci", root=str(tones), device="cpu", progress=False,
                        seeds=(0, 1))
    raw = read["stage"] == STAGE_LABELS["raw"]
    assert (read.loc[raw, "OA other seeds"] == "—").all()
    assert (read.loc[~raw, "OA other seeds"] == scored.loc[~raw, "OA other seeds"]).all()
    assert "as recorded in its metrics at each stage's end" in table1_note(rows, 0, (0, 1))
    assert "has not reached the stage" not in table1_note(rows, 0, (0, 1))


def test_table1_shows_the_other_seeds_whose_runs_exist(tones):
    """Seed 1's runs exist (its supervised run without the cross-entropy stage), seed 2's do
    not: the column lists seed 1 at each stage, — where it lacks one; nothing is trained."""
    runs_module.train_runs("ci", ["folder"], ["ours-unsupervised", "ours-supervised"], [1],
                           device="cpu", root=str(tones), progress=False, report=lambda _: None)
    supervised = Path(run_config("ours-supervised", "folder", "ci", 1, str(tones)).out)
    (supervised / "stages" / "ce.pt").unlink()
    table, rows = table1("folder", "ci", root=str(tones), device="cpu", progress=False,
                         seeds=(0, 1, 2))
    assert list(table.columns[:4]) == ["mode", "stage", "OA", "OA other seeds"]
    assert len(table) == 10 and sorted(rows["seed"].unique()) == [0, 1]
    assert table["OA other seeds"].iloc[-1] == "—"  # supervised + cross-entropy, seed 1
    assert table["OA other seeds"].iloc[:-1].str.fullmatch(r"\d+\.\d").all()
    assert not Path(run_config("ours-supervised", "folder", "ci", 2, str(tones)).out).exists()
    assert table1_note(rows, 0, (0, 1, 2)) == (
        "`OA other seeds`: the validation OA of seeds 1 at the same stage, in that order; seeds 2 "
        "have no runs here; — where a run of seeds 1 has not reached the stage.")
    alone, alone_rows = table1("folder", "ci", root=str(tones), device="cpu", progress=False)
    assert "OA other seeds" not in alone.columns  # ci's seeds: 0 alone
    assert table1_note(alone_rows, 0, (0,)) == "One seed (0), so no spread over seeds."


def test_provenance_records_what_made_the_tables(tones, tmp_path):
    from hearproto.runner.experiments import NotebookRun

    notebook = tmp_path / "nb.ipynb"
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["hearproto"] = {"wall_seconds": 12.5, "git_commit": "abc"}
    nbformat.write(nb, notebook)
    path = write_provenance(tmp_path / "results", "folder",
                            {"scale": "ci", "dataset": "folder", "data_root": str(tones)},
                            [NotebookRun("ablation", notebook, executed=True, seconds=12.5)])
    provenance = json.loads(path.read_text())
    assert provenance["dataset"]["files"] == 15 and provenance["dataset"]["classes"] == 3
    assert len(provenance["dataset"]["split_hash"]) >= 8
    assert provenance["notebooks"]["ablation"]["wall_seconds"] == 12.5
    assert provenance["torch"] and provenance["device_name"].startswith(("cpu", "cuda"))
    assert provenance["seeds"]["tables2_3"] == [0]
    # a later call for one notebook keeps the others' entries
    write_provenance(tmp_path / "results", "folder",
                     {"scale": "ci", "dataset": "folder", "data_root": str(tones)},
                     [NotebookRun("timbre", notebook, executed=True, seconds=3.0)])
    notebooks = json.loads(path.read_text())["notebooks"]
    assert set(notebooks) == {"ablation", "timbre"}


def test_train_runs_resumes_a_run_its_budget_cut(tones):
    """A time budget cuts a run after an epoch; the next call resumes it, in the same folder,
    to the end of its schedule."""
    lines = []
    first = runs_module.train_runs("ci", ["folder"], ["ours-supervised"], [0], max_minutes=1e-4,
                                   device="cpu", root=str(tones), progress=False,
                                   report=lines.append)
    assert not first[0]["done"] and first[0]["stop_reason"].startswith("time budget")
    assert first[0]["epochs"] == 1 and lines[0].startswith("folder ours-supervised seed 0: time budget")
    second = runs_module.train_runs("ci", ["folder"], ["ours-supervised"], [0], device="cpu",
                                    root=str(tones), progress=False, report=lines.append)
    assert second[0]["done"] and second[0]["out"] == first[0]["out"]
    assert second[0]["stop_reason"] == "curriculum complete" and second[0]["epochs"] > 1


def test_planned_runs_put_the_first_seed_first_and_shards_share_them_out():
    runs = runs_module.planned_runs("full", ["instruments", "speakers"], seeds=(0, 1, 2))
    methods = len(runs_module.METHODS)
    seeded = len(runs_module.SEEDED_METHODS)
    heldout_methods = len(runs_module.HELDOUT_METHODS)
    assert len(runs) == 2 * methods + 2 * 2 * seeded + 3 * heldout_methods  # 3 lineages, seed 0
    assert {r.method for r in runs if r.seed > 0} == set(runs_module.SEEDED_METHODS)
    assert {r.seed for r in runs[:2 * methods]} == {0} and runs[0].split == "random"
    heldout = [r for r in runs if r.split != "random"]
    assert runs[-len(heldout):] == heldout  # the other seeds before the held-out column
    assert {r.split for r in heldout} == set(runs_module.HELDOUT_SPLITS["instruments"])
    assert {(r.dataset, r.seed) for r in heldout} == {("instruments", 0)}
    assert str(heldout[0]) == f"instruments {heldout[0].method} seed 0 {heldout[0].split}"
    assert not [r for r in runs_module.planned_runs("ci", ["instruments"]) if r.split != "random"]
    shares = [runs[i - 1::3] for i in (1, 2, 3)]
    assert sorted(map(str, sum(shares, []))) == sorted(map(str, runs))  # disjoint, complete


def test_a_heldout_run_has_a_folder_of_its_own_and_random_runs_keep_theirs(tmp_path):
    plain = run_config("direct", "instruments", "full", seed=0)
    heldout = run_config("direct", "instruments", "full", seed=0, split="heldout-freepats")
    assert heldout.split == "heldout-freepats"
    assert Path(heldout.out).name.startswith("direct-seed0-heldout-freepats-")
    assert Path(plain.out).parent == Path(heldout.out).parent
    # the split joined the settings after the runs were named: random runs keep their name
    before = {k: v for k, v in asdict(plain).items() if k not in RESUMABLE and k != "split"}
    digest = hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8]
    assert runs_module.settings_digest(plain) == digest
    assert runs_module.settings_digest(heldout) != digest
    with pytest.raises(Exception, match="unknown split"):
        run_config("direct", "instruments", "full", split="bank")


def test_train_runs_skips_a_run_another_process_holds(tones):
    """Processes that train the same runs share them: a run whose folder is locked (another
    process trains it) is skipped, the next one trained."""
    from hearproto.training.runloop import exclusive

    held = Path(run_config("ours-supervised", "folder", "ci", 0, root=str(tones)).out)
    lines = []
    with exclusive(held):
        summaries = runs_module.train_runs("ci", ["folder"], ["ours-supervised", "direct"], [0],
                                           device="cpu", root=str(tones), progress=False,
                                           report=lines.append)
    assert [s["done"] for s in summaries] == [False, True]
    assert summaries[0]["stop_reason"] == "in use by another process"
    assert lines[0] == "folder ours-supervised seed 0: another process is training it, skipped"
    assert not (held / "last.pt").exists()


def test_other_seeds_train_only_the_seeded_methods(tones):
    """The autoencoder and APNet run for the first seed only: a table over two seeds reads
    one run of APNet and two of Direct Classification and ours."""
    table, rows = table3("folder", "ci", seeds=(0, 1), root=str(tones), device="cpu",
                         progress=False)
    assert sorted(rows.loc[rows["seed"] == 1, "method"]) == ["Direct Classification",
                                                             "Ours supervised"]
    assert table.set_index("method")["seeds"].to_dict() == {
        "Direct Classification": 2, "APNet": 1, "Ours supervised": 2, FLOORS["probe"]: 1}
    assert "APNet: 1 seed, no interval" in headline_note("folder", "ci", rows, [0, 1])


def test_runs_status_tells_done_training_and_not_started(tones):
    from hearproto.training.runloop import exclusive

    methods = ["direct", "ours-supervised", "autoencoder"]
    runs_module.train_runs("ci", ["folder"], ["direct"], [0], device="cpu", root=str(tones),
                           progress=False, report=lambda line: None)
    held = Path(run_config("ours-supervised", "folder", "ci", 0, root=str(tones)).out)
    status = runs_module.runs_status("ci", ["folder"], methods, [0], root=str(tones))
    assert list(status["state"]) == ["done", "not started", "not started"]
    assert status.loc[0, "epochs"] == 1 and status.loc[0, "minutes"] >= 0
    with exclusive(held):
        status = runs_module.runs_status("ci", ["folder"], methods, [0], root=str(tones))
    assert list(status["state"]) == ["done", "training now", "not started"]
    assert list(status["run"]) == [f"folder {m} seed 0" for m in methods]


def test_experiments_train_tells_runs_held_elsewhere_from_runs_to_go_on_with(monkeypatch,
                                                                             capsys):
    """The closing line of `experiments train` in a process beside others: a run another
    process held is neither finished here nor for this command to go on with."""
    from hearproto import cli

    summaries = [{"run": "a", "done": True, "stop_reason": "step budget"},
                 {"run": "b", "done": False, "stop_reason": "in use by another process"},
                 {"run": "c", "done": False, "stop_reason": "time budget reached"}]
    monkeypatch.setattr(runs_module, "train_runs", lambda *args, **kwargs: summaries)
    assert cli.main(["experiments", "train", "--scale", "ci", "--datasets", "folder"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "1 of 3 runs finished; another process held b; run the same command again to go on "
        "with: c")


def test_train_runs_refuses_a_shard_out_of_range(tones):
    with pytest.raises(ValueError, match="shard 3/2"):
        runs_module.train_runs("ci", ["folder"], shard=(3, 2), root=str(tones))


def test_the_note_says_when_the_unseen_bank_column_awaits_its_runs(monkeypatch):
    """Where a scale does not report the held-out splits of a dataset that has them, the line
    above the table says the column is missing and why, instead of leaving it out unsaid."""
    rows = pd.DataFrame({"method": ["Ours supervised"], "seed": [0], "clips": [600],
                         "trained_on": ["cpu"], "config": [json.dumps({"split": "random"})]})
    monkeypatch.setitem(tables_module.HEADLINE_UNSEEN, "full", False)
    assert tables_module.unseen_splits("instruments", "full") == ()
    assert "unseen-bank column" in headline_note("instruments", "full", rows, [0])
    assert "unseen-bank column" not in headline_note("speakers", "full", rows, [0])
    assert "unseen-bank column" not in headline_note("instruments", "ci", rows, [0])
    monkeypatch.setitem(tables_module.HEADLINE_UNSEEN, "full", True)
    assert tables_module.unseen_splits("instruments", "full") == HELDOUT_SPLITS["instruments"]


def test_a_read_only_scale_names_the_runs_it_lacks_instead_of_training_them(tones, monkeypatch):
    """At a scale the book reads from weights/ (full), Table 3 reads the finished runs and
    trains none: a method without one keeps its row, empty, and the note names its runs."""
    runs_module.train_runs("ci", ["folder"], ["direct", "ours-supervised"], [0], device="cpu",
                           root=str(tones), progress=False, report=lambda line: None)
    monkeypatch.setattr(tables_module, "READ_ONLY_SCALES", ("ci",))
    monkeypatch.setattr(runs_module, "train", lambda *a, **k: pytest.fail("trained a run"))
    table, rows = table3("folder", "ci", root=str(tones), device="cpu", progress=False)
    by_method = table.set_index("method")
    assert by_method.loc["APNet", "seeds"] == 0 and pd.isna(by_method.loc["APNet", "OA"])
    assert by_method.loc["Ours supervised", "seeds"] == 1
    assert not pd.isna(by_method.loc["Ours supervised", "OA"])
    note = headline_note("folder", "ci", rows, [0])
    assert "Not trained yet, so not in the table: folder apnet seed 0" in note
    assert "Ours supervised" in headline_view(table)["method"].tolist()
    from hearproto.runner.claims import findings_markdown
    assert "APNet: no runs yet" in findings_markdown(table3=table)
    assert "nan" not in findings_markdown(table3=table)


def test_every_row_of_tables_2_and_3_says_how_it_departs_from_the_paper():
    notes = tables_module.departures("full")
    labels = [*TABLE3_METHODS.values(), *tables_module.TABLE2_METHODS.values(), *FLOORS.values()]
    assert set(labels) <= set(notes)
    assert "cluster labels as targets" in notes["Ours unsupervised"]
    assert notes["Direct Classification"].startswith("1500 optimiser steps")
    assert "10x the learning rate" in notes["APNet"]
    paper = tables_module.departures("paper")
    assert paper["Ours supervised"] == "the paper's recipe"
    assert paper["Ours unsupervised"] == "the paper's free assignment (Eq. 7)"
    assert "the paper's free assignment" in notes[PAPERS_UNSUPERVISED]
    assert "ours-unsupervised-free" not in runs_module.scale_methods("paper")  # the same run
    assert paper["Direct Classification"] == "as the paper"
