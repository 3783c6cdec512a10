"""``hearproto bench --growth``: the fits recover known growth laws, and the measured points
are consistent with what they measure (the cache grows by one clip's frames per clip, the
scores have one row per clip and one column per prototype, two processes each take half of
the global batch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hearproto import cli
from hearproto.growth import (CLIP_RATE, CLIP_SECONDS, _in_fresh_process, fit_affine,
                              fit_power_law, format_growth, generate_clips, run_growth)


def test_a_power_law_is_recovered_from_its_points():
    points = [{"K": k, "T": t, "s": 3e-4 * k ** 0.9 * t ** 1.2} for k in (33, 128, 512)
              for t in (128, 256, 1024)]
    found = fit_power_law(points, ["K", "T"], "s")
    assert found["exponents"] == {"K": pytest.approx(0.9, abs=1e-3),
                                  "T": pytest.approx(1.2, abs=1e-3)}
    assert found["coefficient"] == pytest.approx(3e-4, rel=1e-3) and found["r2"] > 0.9999
    noisy = [{**p, "s": p["s"] * (1.3 if i % 2 else 0.7)} for i, p in enumerate(points)]
    assert fit_power_law(noisy, ["K", "T"], "s")["r2"] < 0.99  # a bad fit says so
    with pytest.raises(ValueError, match="needs at least 3 points"):
        fit_power_law(points[:2], ["K", "T"], "s")


def test_a_fixed_footprint_plus_a_part_per_item_is_recovered():
    """Memory: 0.3 GB the process holds anyway, 2 kB per clip, 1 MB per prototype and 8
    bytes per clip and prototype; a product of variables is named ``clips*K``."""
    points = [{"clips": n, "K": k, "gb": 0.3 + (2e3 * n + 1e6 * k + 8 * n * k) / 2**30}
              for n in (250, 1000, 4000) for k in (33, 128, 512)]
    found = fit_affine(points, ["clips", "K", "clips*K"], "gb")
    assert found["intercept"] == pytest.approx(0.3, rel=1e-6)
    assert found["slopes"]["clips"] * 2**30 == pytest.approx(2e3, rel=1e-4)
    assert found["slopes"]["K"] * 2**30 == pytest.approx(1e6, rel=1e-4)
    assert found["slopes"]["clips*K"] * 2**30 == pytest.approx(8, rel=1e-4)
    assert fit_affine(points, ["clips"], "gb")["r2"] < 0.99  # a missing term shows


def test_data_points_cache_one_clips_frames_per_clip(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARPROTO_DATA", str(tmp_path / "home"))
    report = run_growth(["data"], tmp_path, clips=[20, 60], progress=False)
    small, large = report["parts"]["data"]["points"]
    assert (small["clips"], large["clips"]) == (20, 60)
    frames = small["frames"] / small["clips"]  # one second at the speakers front end's hop
    assert frames == large["frames"] / large["clips"] == 1 + CLIP_RATE * CLIP_SECONDS // 512
    per_clip = (large["cache_bytes"] - small["cache_bytes"]) / 40
    assert per_clip == pytest.approx(frames * 128 * 4, rel=0.02)  # float32 (T, 128) per clip
    assert 0.05 < small["peak_memory_gb"] < 4 and small["seconds"] > 0
    fits = report["parts"]["data"]["fits"]
    assert fits["cache_bytes"]["slopes"]["clips"] == pytest.approx(per_clip)
    assert not list(tmp_path.glob("tmp*"))  # the caches are removed, the clips kept
    assert len(list((tmp_path / "clips-60").rglob("*.flac"))) == 60
    text = format_growth(report)
    assert "| 60 |" in text and "kB per clip" in text


def test_generated_clips_are_written_once(tmp_path):
    root = generate_clips(tmp_path / "clips", 12, progress=False)
    first = sorted(p.stat().st_mtime_ns for p in root.rglob("*.flac"))
    assert len(first) == 12 and len(list(root.iterdir())) == 10 + 1  # classes and the marker
    generate_clips(tmp_path / "clips", 12, progress=False)
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*.flac")) == first


def test_scoring_points_give_one_error_per_clip_and_prototype():
    point = _in_fresh_process("eval", {"clips": 40, "prototypes": 6, "frames": 24,
                                       "threads": 1})
    assert (point["clips"], point["K"], point["T"]) == (40, 6, 24)
    assert point["seconds"] > 0 and point["features_gb"] == pytest.approx(
        40 * 24 * 128 * 4 / 2**30, abs=1e-3)


def test_two_processes_share_the_global_batch_and_report_both_footprints():
    one = _in_fresh_process("ddp", {"processes": 1, "threads": 1, "batch_size": 4,
                                    "repeats": 1})
    two = _in_fresh_process("ddp", {"processes": 2, "threads": 1, "batch_size": 4,
                                    "repeats": 1})
    assert (one["cores"], two["cores"]) == (1, 2) and two["batch_size"] == 4
    # two interpreters, each with torch and a model: about twice one process's footprint
    assert 1.6 * one["peak_memory_gb"] < two["peak_memory_gb"] < 2.4 * one["peak_memory_gb"]


def test_the_cli_measures_steps_and_refuses_bad_settings(capsys, tmp_path):
    assert cli.main(["bench", "--growth", "step", "--prototypes", "4,8", "--frames", "32",
                     "--batch-sizes", "2", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    points = report["parts"]["step"]["points"]
    assert [(p["K"], p["T"], p["batch_size"]) for p in points] == [(4, 32, 2), (8, 32, 2)]
    assert all(np.isfinite(p["seconds_per_step"]) and p["seconds_per_step"] > 0
               for p in points)
    assert cli.main(["bench", "--growth", "disk"]) == 2
    assert "--growth takes all or some of data,step,eval,ddp" in capsys.readouterr().err
    assert cli.main(["bench", "--growth", "ddp", "--ddp", "2by1"]) == 2
    assert "PROCESSESxTHREADS" in capsys.readouterr().err
    assert cli.main(["bench", "--growth", "step", "--prototypes", "0"]) == 2
    assert "prototypes must be positive" in capsys.readouterr().err
