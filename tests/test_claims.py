"""The claims table: each of the paper's findings checked against results tables, on tables
where it holds, where it fails, where the difference is within the noise, and where they are
missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hearproto.frontend import PRESETS
from hearproto.runner.claims import (DISTINCT_DB, FINDINGS, LABELS, Estimate, check_findings,
                                     claims_table, clips_half_width, compare, findings_markdown,
                                     prototype_statistics, seed_half_width)
from hearproto.runner.paper import PAPERS_UNSUPERVISED, STAGE_LABELS

STAGES = [STAGE_LABELS[s] for s in ("raw", "gain", "pitch", "filters", "ce")]


def write_results(folder: Path, oa_by_stage, l_rec_by_stage, ours_sup, direct, apnet,
                  ours_unsup, autoencoder, prototypes: pd.DataFrame | None = None,
                  val_clips: int = 10_000, test_clips: int = 10_000) -> Path:
    """Tables 1-3 as the notebooks write them; many clips by default, so that 5 points apart
    are beyond the noise (test-set half-width under 1.4 points)."""
    folder.mkdir(parents=True)
    rows = [{"mode": "supervised", "stage": s, "OA": oa, "AA": oa, "L_rec": l, "clips": val_clips}
            for s, oa, l in zip(STAGES, oa_by_stage, l_rec_by_stage)]
    rows += [{"mode": "unsupervised", "stage": s, "OA": 10.0, "AA": 10.0, "L_rec": l,
              "clips": val_clips} for s, l in zip(STAGES[:4], l_rec_by_stage)]
    pd.DataFrame(rows).to_csv(folder / "table1.csv", index=False)
    pd.DataFrame({"method": ["Direct Classification", "APNet", "Ours supervised"], "seeds": 3,
                  "OA": [direct, apnet, ours_sup], "OA ci95": [1.0, 2.0, 0.5],
                  "clips": test_clips}).to_csv(folder / "table3.csv", index=False)
    pd.DataFrame({"method": ["Autoencoder + K-means", "APNet + K-means", PAPERS_UNSUPERVISED],
                  "seeds": 1, "OA": [autoencoder, 5.0, ours_unsup], "OA ci95": None,
                  "clips": test_clips}).to_csv(folder / "table2.csv", index=False)
    if prototypes is not None:
        prototypes.to_csv(folder / "prototypes.csv", index=False)
    return folder


def test_findings_that_hold(tmp_path):
    prototypes = pd.DataFrame({"prototype": ["a", "b"], "rms_dbfs": [-9.0, -12.0],
                               "nearest": ["b", "a"], "nearest_db": [4.0, 4.0]})
    folder = write_results(tmp_path / "full" / "instruments", [20, 30, 40, 50, 60],
                           [0.5, 0.4, 0.3, 0.2, 0.25], 60, 50, 55, 30, 20, prototypes)
    verdicts = check_findings(folder)
    assert {k: v.label for k, v in verdicts.items()} == {key: "holds" for key, _ in FINDINGS}
    assert verdicts["transformations"].evidence.startswith("supervised L_rec 0.500 → 0.400")
    assert verdicts["cross_entropy"].evidence.startswith("OA 50.0 → 60.0 %, +10.0 ± 1.")
    assert verdicts["supervised"].evidence.startswith(
        "OA ours 60.0 ± 0.5 % (3 seeds) vs Direct Classification 50.0 ± 1.0 % (3 seeds): "
        "+10.0 ± 1.")
    assert "OA ours 30.0 % (1 seed) vs Autoencoder + K-means 20.0 % (1 seed): +10.0 ± 1." in \
        verdicts["unsupervised"].evidence


def test_findings_that_fail_say_where(tmp_path):
    close = pd.DataFrame({"prototype": ["a", "b"], "rms_dbfs": [-9.0, -9.0],
                          "nearest": ["b", "a"], "nearest_db": [0.2, 0.2]})
    folder = write_results(tmp_path / "full" / "speakers", [20, 10, 40, 50, 40],
                           [0.5, 0.6, 0.3, 0.2, 0.2], 40, 50, 35, 10, 20, close)
    verdicts = check_findings(folder)
    assert {v.label for v in verdicts.values()} == {"does not hold"}
    assert "falls at + gain (10.0 after 20.0, -10.0 ± 1." in verdicts["stages"].evidence
    assert f"2 closer than {DISTINCT_DB:g} dB" in verdicts["prototypes"].evidence


def test_the_seed_interval_is_students_t():
    """n = 3: t_{0.975, 2} = 4.302653 (a t table), times s / sqrt(3)."""
    values = [70.0, 75.0, 80.0]
    half_width = seed_half_width(float(np.std(values, ddof=1)), 3)
    assert half_width == pytest.approx(4.302653 * 5.0 / 3 ** 0.5, rel=1e-6)
    assert seed_half_width(2.0, 1) is None
    # two proportions: 1.959964 sqrt(0.8 * 0.2 / 100 + 0.5 * 0.5 / 100), in points
    assert clips_half_width(80, 50, 100, 100) == pytest.approx(100 * 1.959964 * 0.0041 ** 0.5,
                                                               rel=1e-6)


@pytest.mark.parametrize("ours, other, label", [
    (Estimate(78.2, 3.1, 3), Estimate(75.0, 2.0, 3), "undecided"),  # the intervals overlap
    (Estimate(78.2, 1.0, 3), Estimate(70.0, 2.0, 3), "holds"),
    (Estimate(60.0, 1.0, 3), Estimate(70.0, 2.0, 3), "does not hold"),
    (Estimate(78.2, 1.0, 3, 40), Estimate(70.0, 2.0, 3, 40), "undecided"),  # 40 clips: ± 19
    (Estimate(80.0, clips=40), Estimate(70.0, clips=40), "undecided"),  # one seed: clips decide
    (Estimate(80.0, clips=2000), Estimate(70.0, clips=2000), "holds"),
    (Estimate(80.0), Estimate(70.0), "undecided"),  # one seed and no clip count: no interval
])
def test_comparisons_are_decided_by_intervals(tmp_path, ours, other, label):
    folder = tmp_path / "full" / "speakers"
    folder.mkdir(parents=True)
    pd.DataFrame({"method": ["Autoencoder + K-means", PAPERS_UNSUPERVISED],
                  "seeds": [other.seeds, ours.seeds], "OA": [other.mean, ours.mean],
                  "OA ci95": [other.half_width, ours.half_width],
                  "clips": [other.clips, ours.clips]}).to_csv(folder / "table2.csv", index=False)
    verdict = check_findings(folder)["unsupervised"]
    assert verdict.label == label
    assert verdict.evidence.startswith(f"OA ours {ours} vs Autoencoder + K-means {other}: ")
    assert {True: "holds", False: "does not hold", None: "undecided"}[compare(ours, other)] == label


def test_a_dip_within_the_noise_is_undecided(tmp_path):
    """On 40 validation clips a 2.5-point dip is noise; 25 points are not."""
    folder = write_results(tmp_path / "full" / "speakers", [42.5, 45.0, 42.5, 45.0, 20.0],
                           [0.5, 0.4, 0.3, 0.2, 0.2], 60, 50, 55, 30, 20, val_clips=40)
    verdicts = check_findings(folder)
    assert verdicts["stages"].label == "does not hold"
    evidence = verdicts["stages"].evidence
    assert "falls at + cross-entropy (20.0 after 45.0, -25.0 ± 19.8)" in evidence
    assert "within the noise at + gain (45.0 after 42.5, +2.5 ± 21.7)" in evidence
    folder = write_results(tmp_path / "full" / "instruments", [42.5, 45.0, 42.5, 45.0, 46.0],
                           [0.5, 0.4, 0.3, 0.2, 0.2], 60, 50, 55, 30, 20, val_clips=40)
    assert check_findings(folder)["stages"].label == "undecided"
    assert check_findings(folder)["cross_entropy"].label == "undecided"


def test_tables_written_before_the_intervals_take_them_from_std_and_the_runs(tmp_path):
    """An old table3.csv (``OA std``, no ``clips``): the seed interval from the standard
    deviation, the clips from table3_runs.csv."""
    folder = tmp_path / "small" / "speakers"
    folder.mkdir(parents=True)
    pd.DataFrame({"method": ["Direct Classification", "APNet", "Ours supervised"], "seeds": 3,
                  "OA": [50.0, 50.0, 60.0], "OA std": [1.0, 1.0, 1.0]}
                 ).to_csv(folder / "table3.csv", index=False)
    pd.DataFrame({"method": ["Ours supervised"], "clips": [40]}).to_csv(
        folder / "table3_runs.csv", index=False)
    verdict = check_findings(folder)["supervised"]
    assert verdict.label == "undecided"  # 10 points on 40 clips are within the noise
    assert f"60.0 ± {seed_half_width(1.0, 3):.1f} % (3 seeds)" in verdict.evidence
    assert "(40 clips), within the noise" in verdict.evidence


def test_missing_tables_are_not_measured_and_the_table_has_a_column_per_dataset(tmp_path):
    write_results(tmp_path / "full" / "instruments", [20, 30, 40, 50, 60],
                  [0.5, 0.4, 0.3, 0.2, 0.25], 60, 50, 55, 30, 20)
    table = claims_table(tmp_path, "full", ["instruments", "speakers"])
    assert list(table["finding"]) == [finding for _, finding in FINDINGS]
    assert list(table["instruments"]) == ["holds"] * 5 + ["not measured"]
    assert set(table["speakers"]) == {"not measured"}
    assert set(LABELS) == {"holds", "does not hold", "undecided", "not measured"}


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


@pytest.mark.parametrize("direct, label", [(50.0, "not measured"), (70.0, "does not hold")])
def test_a_method_without_runs_leaves_the_finding_unmeasured_unless_another_fails_it(
        tmp_path, direct, label):
    """APNet not trained yet (its row empty, 0 seeds): ours above Direct Classification cannot
    make the finding hold, ours below it makes it fail all the same."""
    folder = write_results(tmp_path / "full" / "instruments", [20, 30, 40, 50, 60],
                           [0.5, 0.4, 0.3, 0.2, 0.25], 60, direct, 55, 30, 20)
    table = pd.read_csv(folder / "table3.csv")
    table.loc[table["method"] == "APNet", ["seeds", "OA", "OA ci95"]] = [0, np.nan, np.nan]
    table.to_csv(folder / "table3.csv", index=False)
    verdict = check_findings(folder)["supervised"]
    assert verdict.label == label
    assert "APNet: no runs yet" in verdict.evidence and "nan" not in verdict.evidence
