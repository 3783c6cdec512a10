"""Tables 1-3 of the paper, computed from the shared runs, with the paper's numbers beside ours.

Each ``tableN`` function trains what it needs (or reuses finished runs, see
:mod:`hearproto.runner.runs`), evaluates it, and returns two DataFrames:

* ``runs``: one row per evaluated checkpoint with its full provenance
  (:data:`hearproto.runner.results.RESULT_COLUMNS`);
* ``table``: the table as the paper prints it, with the paper's numbers in columns labelled
  with the paper's dataset, e.g. ``paper SOL OA``. Tables 2 and 3 give per method the mean over
  seeds (``OA``), the half-width of its 95 % Student t interval (``OA ci95``: t_{0.975, n-1} ·
  s / sqrt(n), empty with one seed), the number of seeds ``n`` (``seeds``) and the test clips
  (``clips``). Where the dataset has held-out splits (:data:`~hearproto.runner.runs.HELDOUT_SPLITS`:
  the built-in instruments' bank lineages), they add ``unseen-bank OA``, the mean over the
  held-out sources of the first seed's test OA on the source it never saw, and one
  ``unseen SOURCE OA`` column per source. Table 1 gives seed 0's stages and, where other seeds' runs exist, their
  validation OA at the same stage (``OA other seeds``).

:func:`write_tables` writes both, as ``tableN.csv`` / ``tableN.md`` and ``tableN_runs.csv``;
the Markdown of Tables 2 and 3 shows ``mean ± half-width`` (:func:`headline_view`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hearproto.baselines.trainer import BaselineConfig, evaluate_baseline
from hearproto.files import atomic_path
from hearproto.runner.claims import seed_half_width
from hearproto.runner.paper import (PAPER_DATASET, PAPERS_UNSUPERVISED, STAGE_LABELS, paper_table1,
                                    paper_table2, paper_table3)
from hearproto.provenance import describe_device, git_commit
from hearproto.runner.results import RESULT_COLUMNS, result_row, write_table
from hearproto.runner.runs import (HELDOUT_METHODS, HELDOUT_SPLITS, SCALE_SETTINGS,
                                   SEEDED_METHODS, RunSpec, ensure_run, holds_clusters,
                                   run_config, scale_methods, stage_checkpoint, unpack_shipped)
from hearproto.runner.shipped import is_finished, is_unpacked, shipped_scores
from hearproto.baselines.probe import kmeans_clustering, linear_probe
from hearproto.data.banks import lineage_title
from hearproto.data.splits import heldout_source
from hearproto.training import (TrainConfig, checkpoint_dataset, evaluate_checkpoint,
                                read_checkpoint, resolve_device, stages_for)
from hearproto.training.config import RunConfig

__all__ = ["HEADLINE_SEEDS", "HEADLINE_UNSEEN", "READ_ONLY_SCALES", "FLOORS", "PAPERS_UNSUPERVISED", "departures", "UNSEEN", "data_splits", "unseen_splits", "headline_note", "headline_table", "headline_view", "unseen_markdown",
           "with_spread", "evaluate_rows", "table1", "table1_note", "table2", "table3",
           "write_tables"]

#: Seeds behind the headline numbers of Tables 2 and 3, per scale. ``full`` reads what
#: weights/ ships: a method whose other seeds are not shipped yet has a row of one seed, and
#: the note above the table names the runs missing.
HEADLINE_SEEDS = {"ci": (0,), "small": (0, 1, 2), "full": (0, 1, 2), "paper": (0, 1, 2)}

TABLE2_METHODS = {"autoencoder": "Autoencoder + K-means", "apnet": "APNet + K-means",
                  "ours-unsupervised-free": PAPERS_UNSUPERVISED,
                  "ours-unsupervised": "Ours unsupervised"}
TABLE3_METHODS = {"direct": "Direct Classification", "apnet": "APNet",
                  "ours-supervised": "Ours supervised"}
#: The floors below Tables 3 and 2, on the same splits: what a single time-averaged log-Mel
#: frame per clip already gives, with labels and without.
FLOORS = {"probe": "Linear probe on mean log-Mels (floor)",
          "kmeans": "K-means on mean log-Mels (floor)"}


#: The column of Tables 2 and 3 that holds, per method, the mean test OA on held-out sources.
UNSEEN = "unseen-bank OA"


#: Whether Tables 2 and 3 report the held-out splits (the unseen-bank column), per scale:
#: none at ``ci`` (no runs are planned there); ``full`` reads the held-out runs weights/
#: ships, and its note names those not trained yet.
HEADLINE_UNSEEN = {"ci": False, "small": True, "full": True, "paper": True}

#: Scales whose Tables 2 and 3 never train a run: they read the runs finished here or shipped
#: in weights/ (the book builds in minutes), and name the others as not trained yet.
READ_ONLY_SCALES = ("full",)


def departures(scale: str) -> dict[str, str]:
    """Per row label of Tables 2 and 3, how that row's method departs from the paper's at
    ``scale``, in a few words (the Training page gives the reasons and the measured effects);
    the floors are not in the paper at all."""
    from hearproto.baselines.apnet import CLASSIFIER_LR_SCALE

    settings = SCALE_SETTINGS[scale]
    recipe = settings["ours"].get("recipe", "default")
    held = holds_clusters(scale)

    def budget(method: str) -> str:
        steps = settings[method].get("steps")
        return f"{steps} optimiser steps, a budget, not convergence" if steps else ""

    apnet = "; ".join(part for part in (
        f"its classifier reads batch-normalised similarities at {CLASSIFIER_LR_SCALE:g}x the "
        "learning rate", budget("apnet")) if part)
    notes = {
        "Ours supervised": ("the paper's recipe" if recipe == "paper" else
                            "our recipe: fixed-step stages, a faster and longer cross-entropy "
                            "stage, β calibrated"),
        "Ours unsupervised": ("cluster labels as targets: cepstral clusters held fixed, with a "
                              "cross-entropy on them (not the paper's free assignment, Eq. 7)"
                              if held else "the paper's free assignment (Eq. 7)"),
        PAPERS_UNSUPERVISED: ("the paper's free assignment (Eq. 7), no cross-entropy; our "
                              "recipe otherwise (cepstral initial clusters)"
                              if recipe != "paper" else "the paper's recipe"),
        "Direct Classification": budget("direct") or "as the paper",
        "APNet": apnet,
        "APNet + K-means": apnet,
        "Autoencoder + K-means": budget("autoencoder") or "as the paper",
    }
    notes.update({label: "not in the paper: a floor" for label in FLOORS.values()})
    return notes


def unseen_splits(dataset: str, scale: str) -> tuple[str, ...]:
    """The held-out splits Tables 2 and 3 report on ``dataset`` at ``scale``: the dataset's
    :data:`~hearproto.runner.runs.HELDOUT_SPLITS` where :data:`HEADLINE_UNSEEN` says so."""
    return HELDOUT_SPLITS.get(dataset, ()) if HEADLINE_UNSEEN[scale] else ()


def data_splits(runs: pd.DataFrame) -> pd.Series:
    """The data split each row's run was trained on (its config's ``split``; ``random`` for
    runs made before held-out splits existed, and rows without a config)."""
    if "config" not in runs:
        return pd.Series("random", index=runs.index)
    return runs["config"].map(lambda config: json.loads(config).get("split", "random"))


def _random_split(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs`` trained on the random split (the headline numbers)."""
    return runs[data_splits(runs) == "random"]


def evaluate_rows(checkpoints: list[tuple[Path, dict]], split: str, device: str = "auto",
                  root: str | None = None) -> pd.DataFrame:
    """Evaluate each ``(checkpoint, extra)`` on ``split``; ``extra`` may hold ``clustering``
    (baselines) and ``method`` (a label for the row). Rows carry their provenance. A run
    shipped as table rows alone gives its stored scores, with the device and commit that
    evaluated them."""

    evaluated_on = describe_device(resolve_device(device))
    commit = git_commit(Path(__file__).resolve().parent)
    rows = []
    for path, extra in checkpoints:
        stored = shipped_scores(path, split, extra.get("clustering", False))
        if stored is not None:  # scores stored when the run was shipped
            # only for the data they were made on: other data raise, as an evaluation would
            contents = stored["contents"]
            checkpoint_dataset(path, contents, RunConfig.from_dict(contents["config"]), root)
            row = result_row(stored["scores"], stored["contents"], path,
                             stored["evaluated_on"], stored["commit"])
            rows.append({"method": extra.get("method", row["model"]), **row})
            continue
        payload = read_checkpoint(path)
        if payload.get("baseline"):
            scores = evaluate_baseline(path, split, device, root,
                                       clustering=extra.get("clustering", False))
        else:
            scores = evaluate_checkpoint(path, split, device, root)
        row = result_row(scores, payload, path, evaluated_on, commit)
        rows.append({"method": extra.get("method", row["model"]), **row})
    return pd.DataFrame(rows, columns=["method", *RESULT_COLUMNS])


def _paper_columns(dataset: str) -> str | None:
    """The prefix of the paper's columns (``paper SOL``), None for a dataset it has no
    counterpart of (a user's folder)."""
    return f"paper {PAPER_DATASET[dataset]}" if dataset in PAPER_DATASET else None


def _existing_run(config: TrainConfig) -> Path | None:
    """``config``'s run folder if it is on disk or ``weights/`` ships it; never trains."""
    out = Path(config.out)
    if (out / "stages").is_dir() and not is_unpacked(out):
        return out
    return unpack_shipped(config)


def _finished_run(config: TrainConfig | BaselineConfig) -> Path | None:
    """``config``'s run folder if it holds the finished run trained here or ``weights/``
    ships it from these data (it is unpacked); never trains."""
    out = Path(config.out)
    if is_finished(out) and not is_unpacked(out):
        return out
    return unpack_shipped(config)


def table1(dataset: str, scale: str, seed: int = 0, root: str | None = None,
           device: str = "auto", runs_dir: str | os.PathLike | None = None,
           progress: bool = True, n_speakers: int | None = 128,
           seeds: Sequence[int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 (ablation): OA, AA, L_rec on the validation set at the end of each curriculum
    stage, for our unsupervised and supervised runs of ``seed``. The other ``seeds`` (default
    ``HEADLINE_SEEDS[scale]``) are not trained: those whose runs exist add the column ``OA
    other seeds``, their OA at the same stage in seed order (— where a run lacks the stage),
    and their rows to ``runs`` (:func:`table1_note` says which)."""
    others = [s for s in (HEADLINE_SEEDS[scale] if seeds is None else seeds) if s != seed]
    entries, recorded = [], []
    for mode in ("unsupervised", "supervised"):
        config = run_config(f"ours-{mode}", dataset, scale, seed, root, device, runs_dir,
                            n_speakers)
        run = ensure_run(config, progress)
        curriculum = stages_for(config.mode, config.held_stages)
        # unsupervised without held clusters has no cross-entropy stage
        stages = [stage for stage in STAGE_LABELS if stage in curriculum]
        entries += [(stage_checkpoint(run, stage), {"method": f"ours {mode}"}) for stage in stages]
        for other in others:
            found = _existing_run(run_config(f"ours-{mode}", dataset, scale, other, root, device,
                                             runs_dir, n_speakers))
            if found is None:
                continue
            checkpoints = [found / "stages" / f"{stage}.pt" for stage in stages]
            entries += [(path, {"method": f"ours {mode}"}) for path in checkpoints
                        if path.is_file()]
            if not any(path.is_file() for path in checkpoints):  # shipped without its stages
                recorded.append(_recorded_stage_oa(found, mode, other, stages))
    runs = evaluate_rows(entries, "val", device, root)
    runs = pd.concat([runs, *recorded], ignore_index=True) if recorded else runs
    own = runs["seed"] == seed
    table = runs.loc[own, ["mode", "stage", "OA", "AA", "L_rec", "clips"]].reset_index(drop=True)
    if not own.all():
        table.insert(3, "OA other seeds", _other_seeds(table, runs[~own]))
    paper = _paper_columns(dataset)
    for mode in ("unsupervised", "supervised") if paper else ():
        reference = paper_table1(dataset, mode).set_index("stage")
        rows = table["mode"] == mode
        for column in ("OA", "AA", "L_rec"):
            table.loc[rows, f"{paper} {column}"] = table.loc[rows, "stage"].map(reference[column])
    table["stage"] = table["stage"].map(STAGE_LABELS)
    return table, runs


def _recorded_stage_oa(run: Path, mode: str, seed: int, stages: list[str]) -> pd.DataFrame:
    """Rows (``mode``, ``stage``, ``seed``, ``OA``, ``split``, ``source``) of a run shipped
    without its stage checkpoints: the validation OA its ``metrics.csv`` recorded at the end of
    each stage, which is what scoring that stage's checkpoint on the validation split gives
    (the run validates every clip of it when a stage ends). The raw stage has no epoch, so no
    row."""
    metrics = pd.read_csv(run / "metrics.csv").dropna(subset=["val_OA"])
    rows = [{"mode": mode, "stage": stage, "seed": seed, "OA": float(part["val_OA"].iloc[-1]),
             "split": "val", "method": f"ours {mode}", "source": "metrics.csv"}
            for stage in stages
            if not (part := metrics[metrics["stage"] == stage]).empty]
    return pd.DataFrame(rows)


def _other_seeds(table: pd.DataFrame, others: pd.DataFrame) -> list[str]:
    """Per row of ``table`` (mode, stage), the OA of each seed of ``others`` there, in seed
    order, — where that seed has no row."""
    seeds = sorted(others["seed"].unique())
    oa = others.set_index(["mode", "stage", "seed"])["OA"]
    return [", ".join(f"{oa[(mode, stage, s)]:.1f}" if (mode, stage, s) in oa.index else "—"
                      for s in seeds)
            for mode, stage in zip(table["mode"], table["stage"])]


def table1_note(runs: pd.DataFrame, seed: int, seeds: Sequence[int]) -> str:
    """What Table 1 shows of the seeds ``seeds`` besides ``seed``: which the column ``OA other
    seeds`` lists, which have no run, which lack stages."""
    others = [s for s in seeds if s != seed]
    found = sorted(int(s) for s in runs["seed"].unique() if s != seed)
    missing = [s for s in others if s not in found]
    if not found:
        return (f"Seed {seed} only: seeds {', '.join(map(str, missing))} have no runs here."
                if missing else f"One seed ({seed}), so no spread over seeds.")
    evaluated = runs[runs["source"] != "metrics.csv"] if "source" in runs else runs
    per_seed = evaluated.groupby("seed").size()
    short = [s for s in found if s in per_seed and per_seed[s] < per_seed[seed]]
    recorded = ("source" in runs and (runs["source"] == "metrics.csv").any())
    return (f"`OA other seeds`: the validation OA of seeds {', '.join(map(str, found))} at the "
            "same stage, in that order"
            + (" (where a run is shipped without its stage checkpoints, as recorded in its "
               "metrics at each stage's end: none for the raw prototypes)" if recorded else "")
            + (f"; seeds {', '.join(map(str, missing))} have no runs here" if missing else "")
            + (f"; — where a run of seeds {', '.join(map(str, short))} has not reached the stage"
               if short else "") + ".")


def headline_table(runs: pd.DataFrame, labels: dict[str, str], columns: tuple[str, ...],
                   dataset: str | None = None, reference: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """Per method of ``labels`` (in their order): ``seeds``, and per column of ``columns``
    the mean over seeds and ``COLUMN ci95``, the half-width of its 95 % Student t interval
    (None with one value); ``clips``, the test clips; ``train minutes``; then the paper's
    columns from ``reference`` where ``dataset`` has a counterpart in the paper. Rows of runs
    trained on a held-out split are left to :func:`with_unseen`."""
    runs = _random_split(runs)
    rows = []
    for label in labels.values():
        part = runs[runs["method"] == label]
        row = {"method": label, "seeds": len(part)}
        for column in columns:
            values = pd.to_numeric(part[column], errors="coerce").dropna()
            row[column] = float(values.mean()) if len(values) else None
            row[f"{column} ci95"] = (seed_half_width(float(values.std(ddof=1)), len(values))
                                     if len(values) > 1 else None)
        row["clips"] = int(part["clips"].iloc[0]) if len(part) else None
        row["train minutes"] = round(float(part["train_minutes"].mean()), 2)
        rows.append(row)
    table = pd.DataFrame(rows)
    paper = _paper_columns(dataset) if dataset else None
    if paper and reference is not None:
        reference = reference.set_index("method")
        for column in columns:
            table[f"{paper} {column}"] = table["method"].map(reference[column])
    return table


def _clustering_or_classification(methods: dict[str, str], clustering: bool, dataset: str,
                                  scale: str, seeds, root, device, runs_dir, progress: bool,
                                  n_speakers: int | None) -> pd.DataFrame:
    """Test rows of every method of ``methods`` for each seed, then of the first seed's runs on
    each held-out split (:func:`unseen_splits`)."""
    runs = [(seed, "random") for seed in seeds]
    runs += [(seeds[0], split) for split in unseen_splits(dataset, scale)]
    entries, missing = [], []
    for seed, split in runs:
        for method, label in methods.items():
            if seed != seeds[0] and method not in SEEDED_METHODS:
                continue  # trained for the first seed only
            if method not in scale_methods(scale) or (split != "random"
                                                      and method not in HELDOUT_METHODS):
                continue  # not trained here (the paper scale's unsupervised run is free)
            config = run_config(method, dataset, scale, seed, root, device, runs_dir,
                                n_speakers, split=split)
            if scale in READ_ONLY_SCALES:
                run = _finished_run(config)
                if run is None:
                    missing.append(str(RunSpec(method, dataset, seed, split)))
                    continue
            else:
                run = ensure_run(config, progress)
            checkpoint = run / ("last.pt" if method.startswith("ours-") else "best.pt")
            entries.append((checkpoint, {"method": label,
                                         "clustering": clustering and method == "apnet"}))
    if not entries:
        raise FileNotFoundError(
            f"no run of {', '.join(methods.values())} on {dataset} is trained or shipped at "
            f"{scale} scale; hearproto experiments train --scale {scale} trains them")
    rows = evaluate_rows(entries, "test", device, root)
    rows.attrs["not trained"] = missing
    return rows


def _floor(runs: pd.DataFrame, method: str, kind: str, root: str | None) -> dict:
    """The ``kind`` floor (:data:`FLOORS`) on the data of ``method``'s first run, as a row of
    a headline table (scikit-learn is deterministic here: one "seed", no interval); on the
    held-out splits of ``runs`` too (:func:`with_unseen`)."""
    main = _random_split(runs)
    first = main[main["method"] == method].iloc[0]
    row = {"method": FLOORS[kind], "seeds": 1, **_floor_scores(first, kind, root),
           "clips": int(first["clips"])}
    held = runs[(data_splits(runs) != "random") & (runs["method"] == method)]
    unseen = {f"unseen {heldout_source(split)} OA": _floor_scores(rows.iloc[0], kind, root).get("OA")
              for split, rows in held.groupby(data_splits(held), sort=False)}
    if unseen:
        row.update({UNSEEN: _mean(unseen.values()), **unseen})
    return row


def _floor_scores(run_row: pd.Series, kind: str, root: str | None) -> dict:
    """OA and AA of the ``kind`` floor on the data of the run behind ``run_row`` (a run
    shipped as table rows alone: the data its stored scores name; {} if there are none)."""
    path = Path(run_row["checkpoint"])
    if path.is_file():
        payload = read_checkpoint(path)
    else:
        stored = shipped_scores(path, "test")
        if stored is None:
            return {}
        payload = stored["contents"]
    data = checkpoint_dataset(path, payload, RunConfig.from_dict(payload["config"]), root)
    train, test = (data.split(split, crop_frames=None) for split in ("train", "test"))
    scores = (linear_probe(train, test) if kind == "probe"
              else kmeans_clustering(train, test, seed=int(payload["config"]["seed"])))
    return {"OA": scores["OA"], "AA": scores["AA"]}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else None


def _complete_mean(values) -> float | None:
    """The mean of ``values``, or None if any of them is missing (None or NaN)."""
    values = list(values)
    return _mean(values) if all(v is not None and v == v for v in values) else None


def _with_floor(table: pd.DataFrame, floor: dict) -> pd.DataFrame:
    return pd.concat([table, pd.DataFrame([floor])], ignore_index=True)


def with_unseen(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``table`` with, per method, one ``unseen SOURCE OA`` column per held-out split of
    ``runs`` (the test OA of the run that never saw SOURCE) and :data:`UNSEEN`, their mean;
    unchanged when ``runs`` has no held-out rows."""
    held = runs[data_splits(runs) != "random"]
    if not len(held):
        return table
    table = table.copy()
    columns = []
    for split, rows in held.groupby(data_splits(held), sort=False):
        column = f"unseen {heldout_source(split)} OA"
        table[column] = table["method"].map(rows.groupby("method")["OA"].mean())
        columns.append(column)
    # a mean over fewer lineages than another method's would compare different test sets
    table.insert(table.columns.get_loc("clips"), UNSEEN,
                 [_complete_mean(values) for values in table[columns].itertuples(index=False)])
    return table


def table2(dataset: str, scale: str, seeds=None, root: str | None = None, device: str = "auto",
           runs_dir: str | os.PathLike | None = None, progress: bool = True,
           n_speakers: int | None = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 (clustering, test set): Autoencoder + K-means, APNet + K-means, ours
    unsupervised; OA and AA over ``seeds`` (:func:`headline_table`); then the floor, K-means
    on the clips' mean log-Mel frames."""
    seeds = HEADLINE_SEEDS[scale] if seeds is None else seeds
    runs = _clustering_or_classification(TABLE2_METHODS, True, dataset, scale, seeds, root,
                                         device, runs_dir, progress, n_speakers)
    table = with_unseen(headline_table(runs, TABLE2_METHODS, ("OA", "AA"), dataset,
                                       paper_table2(dataset)), runs)
    return _with_floor(table, _floor(runs, TABLE2_METHODS["ours-unsupervised"], "kmeans",
                                     root)), runs


def table3(dataset: str, scale: str, seeds=None, root: str | None = None, device: str = "auto",
           runs_dir: str | os.PathLike | None = None, progress: bool = True,
           n_speakers: int | None = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 (classification, test set): Direct Classification, APNet, ours supervised; OA,
    AA and L_rec over ``seeds`` (:func:`headline_table`); then the floor, a linear probe on
    the clips' mean log-Mel frames."""
    seeds = HEADLINE_SEEDS[scale] if seeds is None else seeds
    runs = _clustering_or_classification(TABLE3_METHODS, False, dataset, scale, seeds, root,
                                         device, runs_dir, progress, n_speakers)
    table = with_unseen(headline_table(runs, TABLE3_METHODS, ("OA", "AA", "L_rec"), dataset,
                                       paper_table3(dataset)), runs)
    return _with_floor(table, _floor(runs, TABLE3_METHODS["ours-supervised"], "probe",
                                     root)), runs


def headline_note(dataset: str, scale: str, runs: pd.DataFrame, seeds) -> str:
    """The line above Table 2 or 3: the data, the split, what a cell is, which rows have one
    seed and so no interval, the device the runs trained on; what the unseen-bank column is,
    where ``runs`` has held-out rows."""
    seeds = list(seeds)
    missing = runs.attrs.get("not trained") or []
    devices = ", ".join(sorted(runs["trained_on"].dropna().unique()))
    held = runs[data_splits(runs) != "random"]
    runs = _random_split(runs)
    per_method = runs.groupby("method", sort=False)["seed"].nunique()
    most = int(per_method.max())
    if most == 1:
        spread = (f"1 seed, no interval (seed {seeds[0]}): an interval needs more, which "
                  f"`hearproto experiments train --scale {scale} --seeds 0,1,2` trains")
    else:
        spread = (f"the mean over seeds {', '.join(map(str, seeds))} ± the half-width of its "
                  "95 % confidence interval (Student t)")
        fewer = [f"{method}: " + ("1 seed, no interval" if n == 1 else f"{n} seeds")
                 for method, n in per_method.items() if n < most]
        spread += "".join(f"; {text}" for text in fewer)
    more = ""
    if not len(held) and scale != "ci" and HELDOUT_SPLITS.get(dataset):
        more = (" The unseen-bank column (each lineage of sample banks held out in turn) "
                f"is not shown: its runs are not shipped at `{scale}` scale yet.")
    if len(held):
        sources = [heldout_source(split) for split in data_splits(held).unique()]
        more = (f" `{UNSEEN}`: seed {int(held['seed'].iloc[0])} trained without one lineage of "
                f"sample banks and tested on all of its clips, the mean over "
                f"{', '.join(sources)} (none for a method without a run on each).")
    if missing:
        more += (f" Not trained yet, so not in the table: {'; '.join(missing)} "
                 f"(`hearproto experiments train --scale {scale}` trains them).")
    return (f"**{dataset}**, `{scale}` scale, test split ({int(runs['clips'].iloc[0])} clips); "
            f"{spread}. Trained on {devices}.{more}")


def with_spread(mean: float | None, half_width: float | None, seeds: int,
                digits: int = 1) -> str:
    """A table cell: ``mean ± half-width`` over several seeds, ``mean`` alone over one (or
    without a half-width), — if none."""
    if mean is None or mean != mean:
        return "—"
    if seeds > 1 and half_width is not None and half_width == half_width:
        return f"{mean:.{digits}f} ± {half_width:.{digits}f}"
    return f"{mean:.{digits}f}"


def unseen_markdown(table: pd.DataFrame, seed: int, floor: str) -> str | None:
    """The paragraph below Table 2 or 3 that explains its unseen-bank column and gives each
    method's test OA per held-out lineage (methods without any run there are left out; a
    lineage a method lacks reads —); None where ``table`` has no such column. ``floor``
    names the floor row, as the prose reads it ("the linear probe")."""
    if UNSEEN not in table:
        return None
    sources = [c.removeprefix("unseen ").removesuffix(" OA") for c in table
               if c.startswith("unseen ") and c != UNSEEN]
    titles = {s: lineage_title(s) for s in sources}
    rows = [f"{row['method']}: " + ", ".join(
                f"{titles[s]} {with_spread(row[f'unseen {s} OA'], None, 1)}" for s in sources)
            for _, row in table.iterrows()
            if any(not pd.isna(row[f"unseen {s} OA"]) for s in sources)]
    return ("**Unseen bank.** The random split tests on other notes of the banks a model was "
            "trained on. The column *unseen bank OA* asks more: each lineage of sample banks "
            f"in turn ({'; '.join(titles.values())}) is left out of training and validation "
            "and makes the whole test set, so every test note is an instrument the model never "
            "heard. The column is the mean over the lineages, for seed {seed}, and only for a method "
            f"trained without each of them; the floor row is {floor} trained on the same "
            f"splits. Per lineage: {'; '.join(rows)}.")


def headline_view(table: pd.DataFrame) -> pd.DataFrame:
    """Table 2 or 3 as shown: ``mean ± half-width`` cells (:func:`with_spread`, L_rec with
    two decimals), the seeds, the training minutes and the paper's columns."""
    shown = table[["method", "seeds"]].copy()
    for column in ("OA", "AA", "L_rec"):
        if column in table.columns:
            digits = 2 if column == "L_rec" else 1
            shown[column] = [with_spread(m, h, n, digits) for m, h, n in
                             zip(table[column], table[f"{column} ci95"], table["seeds"])]
    if UNSEEN in table.columns:
        shown[UNSEEN] = [with_spread(m, None, 1) for m in table[UNSEEN]]
    shown["train min"] = [with_spread(m, None, 1, 0) for m in table["train minutes"]]
    for column in (c for c in table.columns if c.startswith("paper ")):
        shown[column] = [with_spread(m, None, 1, 2 if "L_rec" in column else 1)
                         for m in table[column]]
    return shown


def write_tables(name: str, table: pd.DataFrame, runs: pd.DataFrame,
                 folder: str | os.PathLike) -> list[Path]:
    """Write ``name.csv``, ``name.md`` and ``name_runs.csv`` into ``folder`` (atomically); the
    Markdown of Tables 2 and 3 is :func:`headline_view`."""
    folder = Path(folder)
    if "OA ci95" in table.columns:
        with atomic_path(folder / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(folder / f"{name}.md") as tmp:
            tmp.write_text(headline_view(table).to_markdown(index=False) + "\n")
    else:
        write_table(table, folder / name)
    with atomic_path(folder / f"{name}_runs.csv") as tmp:
        runs.to_csv(tmp, index=False)
    return [folder / f"{name}.csv", folder / f"{name}.md", folder / f"{name}_runs.csv"]
