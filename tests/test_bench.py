"""``hearproto bench`` prints figures; here it only has to run and report them consistently."""

from __future__ import annotations

import json

from hearproto import cli
from hearproto.bench import bench_step


def test_bench_step_reports_speed_and_memory():
    result = bench_step("sol", batch_size=2, repeats=1, compiled=False)
    assert result["K"] == 33 and result["T"] == 256 and result["batch_size"] == 2
    assert result["clips_per_second"] > 0 and result["peak_memory_gb"] > 0.05
    assert abs(result["clips_per_second"] * result["seconds_per_step"] - 2) < 0.05


def test_bench_cli_json(capsys):
    assert cli.main(["bench", "--shapes", "librispeech", "--batch-sizes", "2", "--repeats", "1",
                     "--no-compile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["results"]
    assert report["device"] == "cpu" and row["K"] == 128 and row["T"] == 192
    assert "speedup_vs_authors" not in row  # the authors were measured at B = 16 and 64 only
    assert cli.main(["bench", "--shapes", "imagenet"]) == 2
