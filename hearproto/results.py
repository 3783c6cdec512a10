"""Result rows with the provenance that made them, and the tables written from them.

A row is one evaluation of one checkpoint: the scores (OA, AA in percent, L_rec x100) beside
what produced them: the model, dataset, split and stage, the training run's seed, epochs and
wall time, the device it trained on, the git commit and the run's full config (JSON).
:func:`append_rows` adds rows to a CSV file atomically, so a reader never sees half a table.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from hearproto.files import atomic_path

__all__ = ["RESULT_COLUMNS", "describe_device", "result_row", "append_rows", "write_table"]

RESULT_COLUMNS = [
    "model", "mode", "dataset", "split", "stage", "OA", "AA", "L_rec", "clips",
    "seed", "epochs", "train_minutes", "trained_on", "evaluated_on", "torch", "commit",
    "checkpoint", "config", "evaluated_at",
]


def describe_device(device: str | torch.device) -> str:
    """``cuda (NVIDIA H100 80GB HBM3)`` or ``cpu (x86_64, 2 threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()}, {torch.get_num_threads()} threads)"


def result_row(scores: dict, checkpoint: dict, checkpoint_path: str | os.PathLike,
               evaluated_on: str, commit: str | None = None) -> dict:
    """One row: ``scores`` (from ``evaluate_checkpoint`` / ``evaluate_baseline``) and the
    provenance held by the loaded ``checkpoint`` dictionary."""
    from hearproto.experiments import git_commit

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
