"""Train / validation / test splits: 70 / 10 / 20, random per file with a fixed seed, per class.

Within each class, files are ordered by a seeded hash of their path and cut at 70 % and 80 %,
so every class is represented in proportion and the same file lands in the same split on
every machine. The split is saved as a CSV and reused while the file set does not change.

A held-out split (``heldout-NAME``) tests on every clip of one source instead (the built-in
instruments' bank lineages: ``heldout-freepats``) and trains and validates on the others,
7 : 1 per class as in the random split: the test then asks whether a model learnt the
instrument or the recordings it was trained on.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pandas as pd

from hearproto.files import atomic_path

__all__ = ["SPLITS", "FRACTIONS", "RANDOM", "HELDOUT_PREFIX", "HELDOUT_COLUMN", "assign_splits",
           "assign_heldout_splits", "heldout_source", "load_or_make_splits", "split_hash"]

SPLITS = ("train", "val", "test")
FRACTIONS = (0.7, 0.1, 0.2)
RANDOM = "random"
HELDOUT_PREFIX = "heldout-"
#: The table column a held-out split reads its sources from.
HELDOUT_COLUMN = "lineage"


def _file_key(path: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{path}".encode()).hexdigest()


def assign_splits(table: pd.DataFrame, seed: int = 0) -> pd.Series:
    """A ``split`` value for each row of ``table`` (columns ``path``, ``label``)."""
    split = pd.Series("train", index=table.index, name="split")
    for _, group in table.groupby("label", sort=True):
        ordered = sorted(group.index, key=lambda i: _file_key(table.at[i, "path"], seed))
        n = len(ordered)
        n_test = min(_round_half_up(FRACTIONS[2] * n), n - 1)
        n_val = min(_round_half_up(FRACTIONS[1] * n), n - 1 - n_test)
        n_train = n - n_val - n_test  # at least one clip of every class to learn from
        split.loc[ordered[n_train:n_train + n_val]] = "val"
        split.loc[ordered[n_train + n_val:]] = "test"
    return split


def heldout_source(split: str) -> str | None:
    """The source a split holds out (``heldout-freepats`` -> ``freepats``), None for random."""
    if split == RANDOM:
        return None
    if not split.startswith(HELDOUT_PREFIX) or split == HELDOUT_PREFIX:
        raise ValueError(f"unknown split {split!r}: use {RANDOM!r} or "
                         f"'{HELDOUT_PREFIX}SOURCE' (a source of the dataset)")
    return split.removeprefix(HELDOUT_PREFIX)


def assign_heldout_splits(table: pd.DataFrame, source: str, seed: int = 0,
                          column: str = HELDOUT_COLUMN) -> pd.Series:
    """``test`` for every row of ``table`` whose ``column`` is ``source``; the other rows are
    split 7 : 1 into ``train`` and ``val`` per class, ordered by a seeded hash of the path."""
    if column not in table:
        raise ValueError(f"a held-out split needs the dataset's {column!r} of each clip; this "
                         "dataset has none (the built-in instruments have one)")
    sources = sorted(table[column].unique())
    if source not in sources:
        raise ValueError(f"no clip comes from {source!r}; hold out one of {', '.join(sources)}")
    split = pd.Series("test", index=table.index, name="split")
    kept = table[table[column] != source]
    train_share = FRACTIONS[0] / (FRACTIONS[0] + FRACTIONS[1])
    for _, group in kept.groupby("label", sort=True):
        ordered = sorted(group.index, key=lambda i: _file_key(table.at[i, "path"], seed))
        n_train = max(1, min(len(ordered), _round_half_up(train_share * len(ordered))))
        split.loc[ordered[:n_train]] = "train"
        split.loc[ordered[n_train:]] = "val"
    return split


def _round_half_up(value: float) -> int:
    return int(value + 0.5)


def split_hash(table: pd.DataFrame) -> str:
    """Short hash of (path, label, split) rows: two runs with the same hash saw the same data."""
    rows = table.sort_values("path")[["path", "label", "split"]].to_csv(index=False)
    return hashlib.sha256(rows.encode()).hexdigest()[:16]


def load_or_make_splits(
    table: pd.DataFrame, csv_path: Path, seed: int = 0, fallback_dir: Path | None = None,
    split: str = RANDOM,
) -> tuple[pd.DataFrame, Path]:
    """Add a ``split`` column to ``table`` from ``csv_path`` when it lists exactly these files,
    else assign splits (``split``: random, or ``heldout-SOURCE``) and write the CSV
    (atomically). If ``csv_path``'s folder is not writable the CSV goes to ``fallback_dir``.
    Returns the table and where the CSV is.
    """
    source = heldout_source(split)
    for candidate in (csv_path, None if fallback_dir is None else fallback_dir / csv_path.name):
        if candidate is not None and candidate.is_file():
            saved = pd.read_csv(candidate, dtype=str)
            if set(saved["path"]) == set(table["path"]):
                merged = table.drop(columns="split", errors="ignore").merge(
                    saved[["path", "split"]], on="path", how="left", validate="one_to_one")
                return merged, candidate
            warnings.warn(
                f"{candidate}: the dataset's files changed since the split was saved; "
                "making a new split (files that stayed keep their split unless their class "
                "changed size)", stacklevel=2)
            break
    table = table.assign(split=assign_splits(table, seed) if source is None
                         else assign_heldout_splits(table, source, seed))
    for target in (csv_path, None if fallback_dir is None else fallback_dir / csv_path.name):
        if target is None:
            continue
        try:
            _write_csv_atomic(table[["path", "label", "split"]], target)
            return table, target
        except OSError as err:
            last_error = err
    raise OSError(f"cannot save the split CSV {csv_path}: {last_error}")


def _write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.sort_values("path").to_csv(tmp, index=False)
