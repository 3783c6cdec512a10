"""Tables 1-3 of the paper, computed from the shared runs, with the paper's numbers beside ours.

Each ``tableN`` function trains what it needs (or reuses finished runs, see
:mod:`hearproto.runner.runs`), evaluates it, and returns two DataFrames:

* ``runs``: one row per evaluated checkpoint with its full provenance
  (:data:`hearproto.runner.results.RESULT_COLUMNS`);
* ``table``: the table as the paper prints it (for Tables 2 and 3 the mean and sample
  standard deviation over seeds), with the paper's numbers in columns labelled with the paper's
  dataset, e.g. ``paper SOL OA``.

:func:`write_tables` writes both, as ``tableN.csv`` / ``tableN.md`` and ``tableN_runs.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from hearproto.baselines.trainer import evaluate_baseline
from hearproto.files import atomic_path
from hearproto.runner.paper import PAPER_DATASET, STAGE_LABELS, paper_table1, paper_table2, paper_table3
from hearproto.provenance import describe_device, git_commit
from hearproto.runner.results import RESULT_COLUMNS, result_row, write_table
from hearproto.runner.runs import ensure_run, run_config, stage_checkpoint
from hearproto.runner.shipped import shipped_scores
from hearproto.baselines.probe import kmeans_clustering, linear_probe
from hearproto.training import (TrainConfig, checkpoint_dataset, evaluate_checkpoint,
                                read_checkpoint, resolve_device, stages_for)

__all__ = ["HEADLINE_SEEDS", "FLOORS", "headline_note", "with_spread", "evaluate_rows", "table1",
           "table2", "table3", "write_tables"]

#: Seeds behind the headline numbers of Tables 2 and 3, per scale. ``full`` is what weights/
#: ships: one seed so far (every run of a seed takes about 4 hours on 2 CPU cores).
HEADLINE_SEEDS = {"ci": (0,), "small": (0, 1, 2), "full": (0,), "paper": (0, 1, 2)}

TABLE2_METHODS = {"autoencoder": "Autoencoder + K-means", "apnet": "APNet + K-means",
                  "ours-unsupervised": "Ours unsupervised"}
TABLE3_METHODS = {"direct": "Direct Classification", "apnet": "APNet",
                  "ours-supervised": "Ours supervised"}
#: The floors below Tables 3 and 2, on the same splits: what a single time-averaged log-Mel
#: frame per clip already gives, with labels and without.
FLOORS = {"probe": "Linear probe on mean log-Mels (floor)",
          "kmeans": "K-means on mean log-Mels (floor)"}


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
        if stored is not None:  # shipped as table rows without weights (APNet)
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


def table1(dataset: str, scale: str, seed: int = 0, root: str | None = None,
           device: str = "auto", runs_dir: str | os.PathLike | None = None,
           progress: bool = True, n_speakers: int | None = 128
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 (ablation): OA, AA, L_rec on the validation set at the end of each curriculum
    stage, for our unsupervised and supervised runs."""
    entries = []
    for mode in ("unsupervised", "supervised"):
        config = run_config(f"ours-{mode}", dataset, scale, seed, root, device, runs_dir,
                            n_speakers)
        run = ensure_run(config, progress)
        curriculum = stages_for(config.mode, config.held_stages)
        for stage in STAGE_LABELS:
            if stage not in curriculum:
                continue  # unsupervised without held clusters: no cross-entropy stage
            entries.append((stage_checkpoint(run, stage), {"method": f"ours {mode}"}))
    runs = evaluate_rows(entries, "val", device, root)
    table = runs[["mode", "stage", "OA", "AA", "L_rec"]].copy()
    paper = _paper_columns(dataset)
    for mode in ("unsupervised", "supervised") if paper else ():
        reference = paper_table1(dataset, mode).set_index("stage")
        rows = table["mode"] == mode
        for column in ("OA", "AA", "L_rec"):
            table.loc[rows, f"{paper} {column}"] = table.loc[rows, "stage"].map(reference[column])
    table["stage"] = table["stage"].map(STAGE_LABELS)
    return table.reset_index(drop=True), runs


def _headline(runs: pd.DataFrame, labels: dict[str, str], reference: pd.DataFrame,
              dataset: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """Mean and standard deviation over seeds per method, in ``labels``' order."""
    rows = []
    for label in labels.values():
        part = runs[runs["method"] == label]
        row = {"method": label, "seeds": len(part)}
        for column in columns:
            values = pd.to_numeric(part[column], errors="coerce")
            row[column] = values.mean() if values.notna().any() else None
            # the sample standard deviation over seeds (0 with a single seed)
            row[f"{column} std"] = (values.std(ddof=1) if values.notna().sum() > 1
                                    else 0.0 if values.notna().any() else None)
        row["train minutes"] = round(float(part["train_minutes"].mean()), 2)
        rows.append(row)
    table = pd.DataFrame(rows)
    paper = _paper_columns(dataset)
    if paper:
        reference = reference.set_index("method")
        for column in columns:
            table[f"{paper} {column}"] = table["method"].map(reference[column])
    return table


def _clustering_or_classification(methods: dict[str, str], clustering: bool, dataset: str,
                                  scale: str, seeds, root, device, runs_dir, progress: bool,
                                  n_speakers: int | None) -> pd.DataFrame:
    entries = []
    for seed in seeds:
        for method, label in methods.items():
            run = ensure_run(run_config(method, dataset, scale, seed, root, device, runs_dir,
                                        n_speakers), progress)
            checkpoint = run / ("last.pt" if method.startswith("ours-") else "best.pt")
            entries.append((checkpoint, {"method": label,
                                         "clustering": clustering and method == "apnet"}))
    return evaluate_rows(entries, "test", device, root)


def _floor(runs: pd.DataFrame, method: str, kind: str, root: str | None) -> dict:
    """The ``kind`` floor (:data:`FLOORS`) on the data of ``method``'s first run, as a row of
    a headline table (scikit-learn is deterministic here: one "seed", no spread)."""
    path = Path(runs.loc[runs["method"] == method, "checkpoint"].iloc[0])
    payload = read_checkpoint(path) if path.is_file() else None
    if payload is None:
        return {"method": FLOORS[kind], "seeds": 0}
    data = checkpoint_dataset(path, payload, TrainConfig.from_dict(payload["config"]), root)
    train, test = (data.split(split, crop_frames=None) for split in ("train", "test"))
    scores = (linear_probe(train, test) if kind == "probe"
              else kmeans_clustering(train, test, seed=int(payload["config"]["seed"])))
    return {"method": FLOORS[kind], "seeds": 1, "OA": scores["OA"], "OA std": 0.0,
            "AA": scores["AA"], "AA std": 0.0}


def _with_floor(table: pd.DataFrame, floor: dict) -> pd.DataFrame:
    return pd.concat([table, pd.DataFrame([floor])], ignore_index=True)


def table2(dataset: str, scale: str, seeds=None, root: str | None = None, device: str = "auto",
           runs_dir: str | os.PathLike | None = None, progress: bool = True,
           n_speakers: int | None = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 (clustering, test set): Autoencoder + K-means, APNet + K-means, ours
    unsupervised; OA and AA, mean and standard deviation over ``seeds``; then the floor,
    K-means on the clips' mean log-Mel frames."""
    seeds = HEADLINE_SEEDS[scale] if seeds is None else seeds
    runs = _clustering_or_classification(TABLE2_METHODS, True, dataset, scale, seeds, root,
                                         device, runs_dir, progress, n_speakers)
    table = _headline(runs, TABLE2_METHODS, paper_table2(dataset), dataset, ("OA", "AA"))
    return _with_floor(table, _floor(runs, TABLE2_METHODS["ours-unsupervised"], "kmeans",
                                     root)), runs


def table3(dataset: str, scale: str, seeds=None, root: str | None = None, device: str = "auto",
           runs_dir: str | os.PathLike | None = None, progress: bool = True,
           n_speakers: int | None = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 (classification, test set): Direct Classification, APNet, ours supervised; OA,
    AA and L_rec, mean and standard deviation over ``seeds``; then the floor, a linear probe
    on the clips' mean log-Mel frames."""
    seeds = HEADLINE_SEEDS[scale] if seeds is None else seeds
    runs = _clustering_or_classification(TABLE3_METHODS, False, dataset, scale, seeds, root,
                                         device, runs_dir, progress, n_speakers)
    table = _headline(runs, TABLE3_METHODS, paper_table3(dataset), dataset, ("OA", "AA", "L_rec"))
    return _with_floor(table, _floor(runs, TABLE3_METHODS["ours-supervised"], "probe",
                                     root)), runs


def headline_note(dataset: str, scale: str, runs: pd.DataFrame, seeds) -> str:
    """The line above Table 2 or 3: the data, the split, the seeds behind the numbers (and why
    there is no spread with one), the device the runs trained on."""
    seeds = list(seeds)
    if len(seeds) > 1:
        spread = f"the mean ± the sample standard deviation over seeds {', '.join(map(str, seeds))}"
    else:
        spread = (f"one seed ({seeds[0]}), so no spread: the paper's protocol has three, which "
                  f"`hearproto experiments train --scale {scale} --seeds 0,1,2` trains")
    devices = ", ".join(sorted(runs["trained_on"].dropna().unique()))
    return (f"**{dataset}**, `{scale}` scale, test split ({int(runs['clips'].iloc[0])} clips); "
            f"{spread}. Trained on {devices}.")


def with_spread(mean: float | None, std: float | None, seeds: int) -> str:
    """A table cell: ``mean ± std`` over several seeds, ``mean`` alone over one, — if none."""
    if mean is None or mean != mean:
        return "—"
    return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.1f}"


def write_tables(name: str, table: pd.DataFrame, runs: pd.DataFrame,
                 folder: str | os.PathLike) -> list[Path]:
    """Write ``name.csv``, ``name.md`` and ``name_runs.csv`` into ``folder`` (atomically)."""
    folder = Path(folder)
    write_table(table, folder / name)
    with atomic_path(folder / f"{name}_runs.csv") as tmp:
        runs.to_csv(tmp, index=False)
    return [folder / f"{name}.csv", folder / f"{name}.md", folder / f"{name}_runs.csv"]
