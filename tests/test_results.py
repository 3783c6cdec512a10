"""Result rows: provenance, atomic appends, Markdown tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hearproto.provenance import describe_device
from hearproto.runner.results import RESULT_COLUMNS, append_rows, result_row, write_table

SCORES = {"OA": 87.5, "AA": 80.0, "L_rec": 0.41, "stage": "filters", "dataset": "instruments",
          "mode": "supervised", "split": "test", "clips": 330}
CHECKPOINT = {"config": {"seed": 3, "lr": 1e-3, "dataset": "instruments"},
              "state": {"epoch": 12, "elapsed_seconds": 600.0}, "trained_on": "cpu (x86_64, 2 threads)"}


def test_result_row_carries_scores_and_provenance():
    row = result_row(SCORES, CHECKPOINT, "runs/x/last.pt", "cpu (test)", commit="abc123")
    assert list(row) == RESULT_COLUMNS
    assert row["model"] == "ours" and row["OA"] == 87.5 and row["stage"] == "filters"
    assert row["seed"] == 3 and row["epochs"] == 12 and row["train_minutes"] == 10.0
    assert row["trained_on"] == "cpu (x86_64, 2 threads)" and row["commit"] == "abc123"
    assert json.loads(row["config"]) == CHECKPOINT["config"]
    assert describe_device("cpu").startswith("cpu (")


def test_append_rows_accumulates_and_refuses_foreign_tables(tmp_path):
    path = tmp_path / "deep" / "results.csv"
    first = result_row(SCORES, CHECKPOINT, "a.pt", "cpu", commit="c1")
    second = result_row({**SCORES, "model": "APNet", "L_rec": None}, CHECKPOINT, "b.pt", "cpu",
                        commit="c1")
    append_rows(path, [first])
    table = append_rows(path, [second])
    assert len(table) == 2 and list(pd.read_csv(path)["model"]) == ["ours", "APNet"]
    assert pd.isna(pd.read_csv(path)["L_rec"][1])
    assert not list(tmp_path.joinpath("deep").glob(".*"))  # no temporary file left behind
    foreign = tmp_path / "mine.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a hearproto results table"):
        append_rows(foreign, [first])
    assert foreign.read_text() == "a,b\n1,2\n"


def test_write_table_writes_csv_and_markdown(tmp_path):
    table = pd.DataFrame({"model": ["ours", "Direct"], "OA": [91.234, 50.0],
                          "L_rec": [0.4567, None]})
    write_table(table, tmp_path / "table3")
    assert pd.read_csv(tmp_path / "table3.csv").equals(table)
    markdown = (tmp_path / "table3.md").read_text()
    assert "| model" in markdown and "91.2 " in markdown and "91.23" not in markdown
    assert "0.46" in markdown and "—" in markdown  # L_rec with two decimals, missing shown
