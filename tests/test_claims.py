"""The claims table: each of the paper's findings checked against results tables, on tables
where it holds, where it fails, and where they are missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from hearproto.frontend import PRESETS
from hearproto.runner.claims import (DISTINCT_DB, FINDINGS, check_findings, claims_table,
                                     findings_markdown, prototype_statistics)
from hearproto.runner.paper import STAGE_LABELS

STAGES = [STAGE_LABELS[s] for s in ("raw", "gain", "pitch", "filters", "ce")]


def write_results(folder: Path, oa_by_stage, l_rec_by_stage, ours_sup, direct, apnet,
                  ours_unsup, autoencoder, prototypes: pd.DataFrame | None = None) -> Path:
    folder.mkdir(parents=True)
    rows = [{"mode": "supervised", "stage": s, "OA": oa, "AA": oa, "L_rec": l}
            for s, oa, l in zip(STAGES, oa_by_stage, l_rec_by_stage)]
    rows += [{"mode": "unsupervised", "stage": s, "OA": 10.0, "AA": 10.0, "L_rec": l}
             for s, l in zip(STAGES[:4], l_rec_by_stage)]
    pd.DataFrame(rows).to_csv(folder / "table1.csv", index=False)
    pd.DataFrame({"method": ["Direct Classification", "APNet", "Ours supervised"],
                  "OA": [direct, apnet, ours_sup], "OA std": [1.0, 2.0, 0.5]}
                 ).to_csv(folder / "table3.csv", index=False)
    pd.DataFrame({"method": ["Autoencoder + K-means", "APNet + K-means", "Ours unsupervised"],
                  "OA": [autoencoder, 5.0, ours_unsup], "OA std": [0.0, 0.0, 0.0]}
                 ).to_csv(folder / "table2.csv", index=False)
    if prototypes is not None:
        prototypes.to_csv(folder / "prototypes.csv", index=False)
    return folder


def test_findings_that_hold(tmp_path):
    prototypes = pd.DataFrame({"prototype": ["a", "b"], "rms_dbfs": [-9.0, -12.0],
                               "nearest": ["b", "a"], "nearest_db": [4.0, 4.0]})
    folder = write_results(tmp_path / "full" / "instruments", [20, 30, 40, 50, 60],
                           [0.5, 0.4, 0.3, 0.2, 0.25], 60, 50, 55, 30, 20, prototypes)
    verdicts = check_findings(folder)
    assert {k: v.holds for k, v in verdicts.items()} == {key: True for key, _ in FINDINGS}
    assert verdicts["transformations"].evidence.startswith("supervised L_rec 0.500 → 0.400")
    assert verdicts["cross_entropy"].evidence == "OA 50.0 → 60.0 %"
    assert "ours 60.0 ± 0.5 %" in verdicts["supervised"].evidence


def test_findings_that_fail_say_where(tmp_path):
    close = pd.DataFrame({"prototype": ["a", "b"], "rms_dbfs": [-9.0, -9.0],
                          "nearest": ["b", "a"], "nearest_db": [0.2, 0.2]})
    folder = write_results(tmp_path / "full" / "speakers", [20, 10, 40, 50, 40],
                           [0.5, 0.6, 0.3, 0.2, 0.2], 40, 50, 35, 10, 20, close)
    verdicts = check_findings(folder)
    assert not any(v.holds for v in verdicts.values())
    assert "falls at + gain (10.0 after 20.0)" in verdicts["stages"].evidence
    assert f"2 closer than {DISTINCT_DB:g} dB" in verdicts["prototypes"].evidence


def test_missing_tables_are_not_measured_and_the_table_has_a_column_per_dataset(tmp_path):
    write_results(tmp_path / "full" / "instruments", [20, 30, 40, 50, 60],
                  [0.5, 0.4, 0.3, 0.2, 0.25], 60, 50, 55, 30, 20)
    table = claims_table(tmp_path, "full", ["instruments", "speakers"])
    assert list(table["finding"]) == [finding for _, finding in FINDINGS]
    assert list(table["instruments"]) == ["holds"] * 5 + ["not measured"]
    assert set(table["speakers"]) == {"not measured"}


def test_prototype_statistics_find_the_closest_pair():
    """Two prototypes that differ only in level are the same shape (a gain absorbs level); a
    third, tilted by 6 dB across the bands, is distinct and audible."""
    frontend = PRESETS["speakers"]
    bands = torch.linspace(0, 1, frontend.n_mels)
    base = 0.55 - 0.1 * bands
    prototypes = torch.stack([base, base + 0.02, base + (6 / 170) * (bands - 0.5) * 2])
    stats = prototype_statistics(prototypes, ["a", "b", "tilted"], frontend, seconds=0.3,
                                 n_iter=4)
    assert list(stats["nearest"][:2]) == ["b", "a"]
    assert stats["nearest_db"][0] == pytest.approx(0.0, abs=1e-3)
    assert stats["nearest_db"][2] == pytest.approx(6 / 3 ** 0.5, rel=0.02)  # RMS of a linear ramp
    assert (stats["rms_dbfs"] > -30).all()


def test_a_page_states_the_findings_its_table_decides(tmp_path):
    folder = write_results(tmp_path / "full" / "instruments", [20, 30, 40, 50, 60],
                           [0.5, 0.4, 0.45, 0.2, 0.25], 60, 50, 55, 30, 20)
    table1 = pd.read_csv(folder / "table1.csv")
    lines = findings_markdown(table1=table1).splitlines()
    assert lines[0].startswith("- Each transformation lowers the reconstruction error L_rec: "
                               "**does not hold** (supervised L_rec 0.500 → 0.400 → 0.450")
    assert [line.split("**")[1] for line in lines] == ["does not hold", "holds", "holds"]
    table3 = pd.read_csv(folder / "table3.csv")
    floor = pd.DataFrame({"method": ["Linear probe on mean log-Mels (floor)"], "OA": [70.0]})
    line = findings_markdown(table3=pd.concat([table3, floor]))
    assert line.startswith("- Ours beats Direct Classification and APNet, supervised: **holds**")
    assert line.endswith("; Linear probe on mean log-Mels, the floor, 70.0 %).")
