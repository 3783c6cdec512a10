"""``hearproto bench`` prints figures; here it only has to run and report them consistently."""

from __future__ import annotations

import json

import pytest

from hearproto import cli
from hearproto.bench import _in_subprocess, bench_step


def test_bench_step_reports_speed_and_memory():
    result = bench_step("sol", batch_size=2, repeats=1, compiled=False)
    assert result["K"] == 33 and result["T"] == 256 and result["batch_size"] == 2
    assert result["clips_per_second"] > 0 and result["peak_memory_gb"] > 0.05
    assert abs(result["clips_per_second"] * result["seconds_per_step"] - 2) < 0.05


def test_profile_lists_the_slowest_operations():
    """--profile: the operations by time per step, slowest first; the fused error and the
    encoder's convolutions are among them, each with its calls per step."""
    # twelve rows: the fused error is 2nd to 6th by time, and a loaded machine reorders them
    rows = bench_step("sol", batch_size=2, repeats=1, profile=12)["profile"]
    assert len(rows) == 12
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True) and rows[-1][1] > 0
    names = {r[0]: r[2] for r in rows}
    assert names.get("FusedError") == 1 and names.get("FusedErrorBackward") == 1
    assert names.get("aten::convolution_backward", 0) >= 8  # 10 2-D and 1-D conv layers at least


def test_bench_cli_json(capsys):
    assert cli.main(["bench", "--shapes", "librispeech", "--batch-sizes", "2", "--repeats", "1",
                     "--no-compile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    fused, eager = report["results"]  # the kernels side by side, fused first
    assert (fused["kernel"], eager["kernel"]) == ("fused", "torch")
    for row in (fused, eager):
        assert report["device"] == "cpu" and row["K"] == 128 and row["T"] == 192
        assert "speedup_vs_anchor" not in row  # the anchors are at B = 16, 64 and 128 only
    assert cli.main(["bench", "--shapes", "imagenet"]) == 2


def test_reference_figures_are_merged_by_shape_and_batch(tmp_path, capsys):
    """--reference: refbench.py's JSON lines (its shape names, MB) become each row's
    reference columns (ours, GB) and speed-up; a configuration it could not run says why."""
    checkout = tmp_path / "authors"
    (checkout / "amodelyoucanhear").mkdir(parents=True)
    fake = tmp_path / "refbench.py"
    fake.write_text(
        "import json, sys\n"
        "assert sys.argv[sys.argv.index('--shapes') + 1] == 'libri'\n"
        "print('some log line')\n"
        "print(json.dumps({'shape': 'libri', 'B': 2, 'clips_per_s': 0.5, "
        "'peak_rss_mb': 2048.0, 'peak_cuda_mb': None}))\n"
        "print(json.dumps({'shape': 'libri', 'B': 3, 'skipped': 'estimated peak RSS'}))\n")
    assert cli.main(["bench", "--shapes", "librispeech", "--batch-sizes", "2,3", "--repeats",
                     "1", "--no-compile", "--kernels", "torch", "--reference", str(checkout),
                     "--refbench", str(fake), "--json"]) == 0
    two, three = json.loads(capsys.readouterr().out)["results"]
    assert two["reference_clips_per_second"] == 0.5 and two["reference_peak_memory_gb"] == 2.0
    assert two["speedup_vs_reference"] == round(two["clips_per_second"] / 0.5, 2)
    assert three["reference_error"] == "estimated peak RSS" and "speedup_vs_reference" not in three
    assert cli.main(["bench", "--reference", str(tmp_path), "--refbench", str(fake)]) == 2
    assert "not a checkout of the authors' repository" in capsys.readouterr().err
    assert cli.main(["bench", "--reference", str(checkout)]) == 2  # and no refbench.py
    assert "pass its path as refbench" in capsys.readouterr().err


def test_bench_times_both_mallocs_side_by_side(capsys):
    """--malloc retain,system: one row each, in their own processes, retain (as training runs
    on the CPU) first."""
    assert cli.main(["bench", "--shapes", "sol", "--batch-sizes", "2", "--repeats", "1",
                     "--kernels", "fused", "--malloc", "retain,system", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [(r["kernel"], r["malloc"]) for r in rows] == [("fused", "retain"), ("fused", "system")]
    assert cli.main(["bench", "--shapes", "sol", "--malloc", "tcmalloc"]) == 2


def test_rows_can_share_one_process(capsys):
    """--processes together (the default on CUDA, where starting CUDA dominates a row): the
    rows run one after another in one subprocess; a row that fails is named."""
    assert cli.main(["bench", "--shapes", "sol,librispeech", "--batch-sizes", "2", "--repeats",
                     "1", "--kernels", "fused", "--processes", "together", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [(r["shape"], r["graphs"]) for r in rows] == [("sol", False), ("librispeech", False)]
    # one process: its peak resident size only grows from row to row
    assert rows[1]["peak_memory_gb"] >= rows[0]["peak_memory_gb"]
    good = {"shape": "sol", "batch_size": 2, "repeats": 1, "kernel": "fused", "malloc": "retain",
            "graphs": False}
    with pytest.raises(RuntimeError, match=r"benchmark sol B=2 \(torch, malloc retain, graphs "
                       r"off, cuDNN autotuner off\) failed"):
        _in_subprocess([good, {**good, "kernel": "torch", "k_chunk": 0}])


def test_graphs_are_refused_off_cuda(capsys):
    assert cli.main(["bench", "--graphs", "on", "--device", "cpu"]) == 2
    assert "CUDA graphs need a CUDA device, got 'cpu' (--graphs)" in capsys.readouterr().err
    assert cli.main(["bench", "--graphs", "sometimes"]) == 2
    assert "graphs takes off, on or off,on" in capsys.readouterr().err
    assert cli.main(["bench", "--cudnn-benchmark", "on", "--device", "cpu"]) == 2
    assert "needs a CUDA device, got 'cpu' (--cudnn-benchmark)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs a CUDA device"):
        bench_step("sol", batch_size=2, graphs=True)


def test_baselines_are_timed_in_both_layouts(capsys):
    assert cli.main(["bench", "--baselines", "all", "--shapes", "librispeech",
                     "--batch-sizes", "2", "--repeats", "1", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["batch_size"], report["frames"]) == (2, 192)
    rows = {(r["method"], r["layout"]): r for r in report["results"]}
    assert set(rows) == {(m, layout) for m in ("autoencoder", "direct", "apnet")
                         for layout in ("nchw", "channels_last")}
    for (method, layout), row in rows.items():
        assert row["seconds_per_step"] > 0
        assert abs(row["clips_per_second"] * row["seconds_per_step"] - 2) < 0.05
        if layout == "nchw":
            assert row["speedup_vs_nchw"] == 1.0
    assert cli.main(["bench", "--baselines", "resnet"]) == 2
    assert "--baselines takes all or some of direct,autoencoder,apnet" in capsys.readouterr().err
