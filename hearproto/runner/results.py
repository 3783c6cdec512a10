"""Result rows with the provenance that made them, and the tables written from them.

A row is one evaluation of one checkpoint: the scores (OA, AA in percent, L_rec x100) beside
what produced them: the model, dataset, split and stage, the training run's seed, epochs and
wall time, the device it trained on, the git commit and the run's full config (JSON).
:func:`append_rows` adds rows to a CSV file atomically, so a reader never sees half a table.
:func:`read_provenance`, :func:`timings_table` and :func:`provenance_table` read back the
``provenance.json`` files that ``hearproto experiments run`` writes beside the tables.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from hearproto.files import atomic_path
from hearproto.provenance import git_commit
from hearproto.runner.catalogue import EXPERIMENTS

__all__ = ["RESULT_COLUMNS", "result_row", "append_rows", "write_table",
           "repository_root", "read_provenance", "timings_table", "provenance_table",
           "executed_seconds", "written_note"]

RESULT_COLUMNS = [
    "model", "mode", "dataset", "split", "stage", "OA", "AA", "L_rec", "clips",
    "seed", "epochs", "train_minutes", "trained_on", "evaluated_on", "torch", "commit",
    "checkpoint", "config", "evaluated_at",
]


def result_row(scores: dict, checkpoint: dict, checkpoint_path: str | os.PathLike,
               evaluated_on: str, commit: str | None = None) -> dict:
    """One row: ``scores`` (from ``evaluate_checkpoint`` / ``evaluate_baseline``) and the
    provenance held by the loaded ``checkpoint`` dictionary."""
    config = checkpoint["config"]
    state = checkpoint.get("state", {})
    return {
        "model": scores.get("model", "ours"), "mode": scores["mode"],
        "dataset": scores["dataset"], "split": scores["split"], "stage": scores["stage"],
        "OA": scores["OA"], "AA": scores["AA"], "L_rec": scores["L_rec"],
        "clips": scores["clips"], "seed": config["seed"], "epochs": state.get("epoch"),
        "train_minutes": round(state.get("elapsed_seconds", float("nan")) / 60, 2),
        "trained_on": checkpoint.get("trained_on", "unknown"), "evaluated_on": evaluated_on,
        "torch": torch.__version__,
        "commit": commit or git_commit(Path(__file__).resolve().parent),
        "checkpoint": str(checkpoint_path),
        "config": json.dumps(config, sort_keys=True),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def append_rows(path: str | os.PathLike, rows: list[dict]) -> pd.DataFrame:
    """Append ``rows`` to the CSV table at ``path`` (created if missing), atomically; returns
    the whole table. Refuses a file whose columns are not a results table's."""
    path = Path(path)
    new = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if path.exists():
        old = pd.read_csv(path)
        if list(old.columns) != RESULT_COLUMNS:
            raise ValueError(f"{path}: not a hearproto results table (its columns differ); "
                             "choose another file")
        new = pd.concat([old, new], ignore_index=True)
    with atomic_path(path) as tmp:
        new.to_csv(tmp, index=False)
    return new


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``table`` as ``path`` with suffix ``.csv`` and ``.md`` (Markdown), atomically.
    The Markdown shows accuracies with one decimal and ``L_rec`` columns with two."""
    path = Path(path)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    formats = tuple(".2f" if "L_rec" in str(column) else ".1f" for column in table.columns)
    with atomic_path(path.with_suffix(".md")) as tmp:
        shown = table.astype(object).where(table.notna(), None)  # NaN shows as missing
        tmp.write_text(shown.to_markdown(index=False, floatfmt=formats, missingval="—") + "\n")


def repository_root(start: str | os.PathLike | None = None) -> Path:
    """The hearproto repository holding ``start`` (default: the working directory), found by
    walking up to a folder with ``pyproject.toml`` and ``experiments/``; else the folder above
    the installed package (an editable install), else ``start`` itself."""
    start = Path.cwd() if start is None else Path(start)
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "pyproject.toml").is_file() and (folder / "experiments").is_dir():
            return folder
    package_parent = Path(__file__).resolve().parents[2]
    if (package_parent / "pyproject.toml").is_file():
        return package_parent
    return start.resolve()


def read_provenance(results_root: str | os.PathLike | None, scale: str) -> dict[str, dict]:
    """``{dataset: provenance}`` from ``results_root/scale/*/provenance.json``, datasets sorted
    by name; empty when the folder or the files are missing. Unreadable files are skipped."""
    if results_root is None:
        return {}
    found = {}
    for path in sorted(Path(results_root).glob(f"{scale}/*/provenance.json")):
        try:
            provenance = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(provenance, dict):
            found[path.parent.name] = provenance
    return found


def timings_table(results_root: str | os.PathLike | None, scale: str) -> pd.DataFrame:
    """Wall time in seconds of every notebook (rows) per dataset (columns), as recorded in
    ``results_root/scale/*/provenance.json``, with a ``total`` row and a ``total`` column.
    Notebooks in the runner's order; NaN where a dataset has no time for a notebook. Empty
    (no rows, no columns) when there is no provenance file."""
    provenance = read_provenance(results_root, scale)
    seconds = {}
    for dataset, record in provenance.items():
        notebooks = record.get("notebooks") or {}
        seconds[dataset] = {name: float(entry["wall_seconds"]) for name, entry in notebooks.items()
                            if isinstance(entry, dict) and entry.get("wall_seconds") is not None}
    table = pd.DataFrame(seconds, dtype=float)
    if table.empty:
        return pd.DataFrame(dtype=float)
    order = [n for n in EXPERIMENTS if n in table.index] + sorted(
        n for n in table.index if n not in EXPERIMENTS)
    table = table.reindex(order)
    table.index.name = "notebook"
    table.columns.name = "dataset"
    table["total"] = table.sum(axis=1, min_count=1)
    table.loc["total"] = table.sum(axis=0, min_count=1)
    return table


def provenance_table(results_root: str | os.PathLike | None, scale: str) -> pd.DataFrame:
    """One row per dataset of ``results_root/scale/``: where and with what its results were
    made (device, torch, Python, git commit, the dataset's files, classes and split hash)."""
    rows = []
    for dataset, record in read_provenance(results_root, scale).items():
        data = record.get("dataset") or {}
        rows.append({"dataset": dataset, "device": record.get("device_name") or record.get("device"),
                     "torch": record.get("torch"), "python": record.get("python"),
                     "git commit": record.get("git_commit"), "files": data.get("files"),
                     "classes": data.get("classes"), "split hash": data.get("split_hash")})
    columns = ["dataset", "device", "torch", "python", "git commit", "files", "classes",
               "split hash"]
    return pd.DataFrame(rows, columns=columns).set_index("dataset")


def executed_seconds(book_dir: str | os.PathLike, names, scale: str) -> pd.Series:
    """Wall time in seconds of the executed notebooks ``book_dir/NAME.ipynb`` (the general
    ones, which no ``provenance.json`` records), as the runner stored it in their metadata;
    only those executed at ``scale``. Indexed by name; missing ones are left out."""
    seconds = {}
    for name in names:
        path = Path(book_dir) / f"{name}.ipynb"
        try:
            metadata = json.loads(path.read_text()).get("metadata", {}).get("hearproto", {})
        except (OSError, ValueError):
            continue
        if metadata.get("parameters", {}).get("scale") == scale and \
                metadata.get("wall_seconds") is not None:
            seconds[name] = float(metadata["wall_seconds"])
    return pd.Series(seconds, dtype=float, name="seconds").rename_axis("notebook")


def written_note(name: str, folder: str | os.PathLike) -> str:
    """The sentence a Results page ends with: where its table ``name`` was written, as a path
    inside the repository (a folder elsewhere is not named: the book shows no paths outside
    it)."""
    folder = Path(folder).resolve()
    root = repository_root()
    where = (f"`{folder.relative_to(root).as_posix()}/`" if folder.is_relative_to(root)
             else "the results folder")
    return (f"The table is in {where} as `{name}.csv` and `{name}.md`; `{name}_runs.csv` gives "
            "the provenance of every evaluated checkpoint: its training config, the device and "
            "time it trained, and the commit that evaluated it.")
