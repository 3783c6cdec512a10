"""``hearproto bench``: the speed and memory of one training step at the paper's shapes.

One step = forward (all K reconstructions errors, every transformation active), the supervised
loss with cross-entropy, backward and an AdamW update, on random log-Mels; with ``graphs``,
recorded once as a CUDA graph and replayed (:mod:`hearproto.training.graphs`). On the CPU each
row runs in a fresh subprocess so that its peak memory is its own (the peak resident set
size, VmHWM); on CUDA all rows share one subprocess, which starts CUDA once, and each row's
peak is ``torch.cuda.max_memory_allocated`` over its timed steps (with graphs, from its first
eager step on: a replay allocates nothing), and ``peak_reserved_gb`` what the caching
allocator held (a graph keeps a memory pool of its own).

The authors' implementation is the yardstick. With ``reference=`` (``--reference DIR``, a
checkout of their public repository) it is timed in the same run by ``refbench.py`` (the
project's timing script, kept outside the repository, ``refbench=``; it needs a Python with omegaconf, hydra-core and pytorch_lightning,
``--reference-python``), and each row gets its figures. Otherwise the rows carry the anchor
figures below, measured side by side on our machines (``anchor_*``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from hearproto.distributed import World
from hearproto.errors import SettingError
from hearproto.memory import MALLOC_CHOICES, peak_resident_bytes, retain_freed_memory
from hearproto.training.config import RECIPES, TrainConfig

__all__ = ["SHAPES", "ANCHORS", "run_benchmarks", "bench_step", "reference_benchmarks"]

#: name -> (K prototypes, T frames, front-end preset); F = 128 mel bins.
SHAPES = {"sol": (33, 256, "instruments"), "librispeech": (128, 192, "speakers")}
#: The authors' implementation (fp32), timed side by side with ours (2026-11-26): (device
#: kind, shape, batch size) -> (clips/s, peak GB). CPU: our 2-core machines; CUDA: one H200.
ANCHORS = {("cpu", "sol", 16): (10.75, 1.58), ("cpu", "librispeech", 16): (4.06, 3.22),
           ("cpu", "sol", 128): (6.0, 8.9), ("cpu", "librispeech", 64): (2.4, 11.2),
           ("cuda", "sol", 128): (1442.0, 8.4), ("cuda", "librispeech", 128): (1105.0, 21.3)}
#: Our shape names -> refbench.py's.
REFERENCE_SHAPES = {"sol": "sol", "librispeech": "libri"}


def bench_step(shape: str, batch_size: int, device: str = "cpu", repeats: int = 3,
               k_chunk: int = TrainConfig.k_chunk, bf16: bool = False, threads: int | None = None,
               compiled: bool = True, kernel: str = "fused", profile: int = 0,
               malloc: str = "retain", graphs: bool = False,
               cudnn_benchmark: bool = False, prototypes: int | None = None,
               frames: int | None = None, world: World = World()) -> dict:
    """Time ``repeats`` training steps (after one warm-up) in this process. ``kernel``:
    ``fused`` (:mod:`hearproto.kernels`) or ``torch`` (chunks of tensor operations,
    ``k_chunk`` prototypes at a time, fused by torch.compile when ``compiled``). ``malloc``:
    ``retain`` (freed memory is reused, as training does on the CPU:
    :func:`hearproto.memory.retain_freed_memory`) or ``system`` (glibc's default). ``profile``
    > 0 adds the ``profile`` operations that take the most time over two more steps
    (torch.profiler; device time on CUDA), as ``[name, ms per step, calls per step]``.
    ``graphs``: the step is recorded as a CUDA graph and replayed (CUDA only).
    ``cudnn_benchmark``: cuDNN times its algorithms for each convolution's shapes first and
    keeps the fastest (``torch.backends.cudnn.benchmark``; CUDA only). ``prototypes`` and
    ``frames``: K and T in place of the shape's. Among several processes (``world``, joined
    by the caller), each takes its share of the same global batch of ``batch_size`` clips,
    with batch norm synchronised and the gradients averaged, as a data-parallel run does."""
    from hearproto.frontend import PRESETS
    from hearproto.kernels import fused_available, use_backend
    from hearproto.model import TRANSFORMATIONS, PrototypeModel
    from hearproto.training.graphs import CudaGraph, GraphedStep
    from hearproto.training.losses import loss_from_errors

    if threads:
        torch.set_num_threads(threads)
    k, t, preset = SHAPES[shape]
    k, t = prototypes or k, frames or t
    torch.manual_seed(0)
    dev = torch.device(device)
    if graphs and dev.type != "cuda":
        raise ValueError(f"graphs=True needs a CUDA device (CUDA graphs), got {device!r}")
    if cudnn_benchmark and dev.type != "cuda":
        raise ValueError(f"cudnn_benchmark=True needs a CUDA device, got {device!r}")
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if malloc not in MALLOC_CHOICES:
        raise ValueError(f"unknown malloc {malloc!r}; choose from "
                         f"{', '.join(MALLOC_CHOICES)}")
    retained = dev.type == "cpu" and malloc == "retain" and retain_freed_memory()
    model = PrototypeModel(k, PRESETS[preset]).to(dev)
    for name in TRANSFORMATIONS:
        model.activate(name)
    world.replicate_(model)
    # the paper's settings, as the authors' step that the rows are compared with
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPES["paper"]["lr"],
                                  weight_decay=TrainConfig.weight_decay, fused=True,
                                  capturable=graphs)
    x = torch.rand(batch_size, t, 128, device=dev)
    y = torch.randint(k, (batch_size,), device=dev)
    share = world.share(batch_size)
    x, y = world.shard(x), world.shard(y)

    if kernel == "fused" and not fused_available(dev):
        raise RuntimeError(f"no fused kernel on {device} here (see the warning above)")

    def one_step(x: torch.Tensor, y: torch.Tensor, _key=None) -> torch.Tensor:
        # no autocast cache: a recorded step must cast the weights each time it runs
        with use_backend(kernel), torch.autocast("cuda", dtype=torch.bfloat16,
                                                 enabled=bf16 and dev.type == "cuda",
                                                 cache_enabled=False):
            errors = model.errors(x, k_chunk, compiled)[0].float()
        loss = loss_from_errors(errors, y, "supervised", model.beta, TrainConfig.lambda_ce, True)
        optimizer.zero_grad(set_to_none=True)
        world.backward(loss, share, model.parameters())
        optimizer.step()
        return loss.detach()

    graphed = GraphedStep(one_step, dev, graph_type=CudaGraph if graphs else None)

    def step() -> None:
        graphed(x, y)

    if graphs:  # a replay allocates nothing: its memory is what the eager steps and the
        torch.cuda.reset_peak_memory_stats()  # recording held, so the peak counts from here
    for _ in range(graphed.warmup + 1 if graphs else 1):  # eager steps, then the recording
        step()
    if graphs and not graphed.replays:
        raise RuntimeError(f"the step could not be recorded as a CUDA graph: {graphed.failed}")
    if dev.type == "cuda":
        torch.cuda.synchronize()
        if not graphs:
            torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else peak_resident_bytes()
    result = {"shape": shape, "K": k, "T": t, "F": 128, "batch_size": batch_size,
              "device": device, "kernel": kernel, "bf16": bf16, "k_chunk": k_chunk,
              "compiled": compiled and kernel == "torch", "graphs": graphs,
              "cudnn_benchmark": cudnn_benchmark,
              "processes": world.size,
              "threads": torch.get_num_threads(), "malloc": "retain" if retained else "system",
              "seconds_per_step": round(seconds, 4), "clips_per_second": round(batch_size / seconds, 2),
              "peak_memory_gb": round(peak / 2**30, 3)}
    if dev.type == "cuda":  # what the caching allocator held: a graph keeps a pool of its own
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    if profile:
        result["profile"] = _profile(step, dev, profile)
    anchor = ANCHORS.get((dev.type, shape, batch_size))
    if anchor and (k, t) == SHAPES[shape][:2] and not world.parallel:
        result["anchor_clips_per_second"], result["anchor_peak_memory_gb"] = anchor
        result["speedup_vs_anchor"] = round(result["clips_per_second"] / anchor[0], 2)
    return result


def _profile(step, device: torch.device, top: int, steps: int = 2) -> list[list]:
    """The ``top`` operations by self time (device time on CUDA) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    cuda = device.type == "cuda"
    rows = []
    for event in prof.key_averages():
        micros = event.self_device_time_total if cuda else event.self_cpu_time_total
        if micros > 0:
            rows.append([event.key, round(micros / 1e3 / steps, 3), event.count // steps])
    return sorted(rows, key=lambda row: -row[1])[:top]


def reference_benchmarks(source: str | Path, device: str, shapes: list[str],
                         batch_sizes: list[int], threads: int | None,
                         python: str | None = None, refbench: str | Path | None = None
                         ) -> dict[tuple[str, int], dict]:
    """The authors' training step timed by ``refbench.py`` from their checkout ``source``:
    ``(shape, batch size) -> {"clips_per_second", "peak_memory_gb"}`` or ``{"error": ...}``."""
    if refbench is None:
        raise ValueError("timing the authors' code needs refbench.py, the project's timing "
                         "script (kept outside the repository): pass its path as refbench")
    script = Path(refbench)
    if not script.is_file():
        raise FileNotFoundError(f"{script}: no such file (refbench.py)")
    if not (Path(source) / "amodelyoucanhear").is_dir():
        raise FileNotFoundError(f"{source} is not a checkout of the authors' repository (no "
                                "amodelyoucanhear/ in it); pass the checkout as reference")
    command = [python or sys.executable, str(script), "--src", str(source),
               "--device", "cuda" if device.startswith("cuda") else "cpu",
               "--shapes", ",".join(REFERENCE_SHAPES[s] for s in shapes),
               "--batch-sizes", ",".join(map(str, batch_sizes)),
               "--threads", str(threads or torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True)
    ours = {v: k for k, v in REFERENCE_SHAPES.items()}
    rows = {}
    for line in done.stdout.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = (ours.get(row.get("shape"), row.get("shape")), int(row.get("B", 0)))
        if "clips_per_s" in row:
            memory_mb = row["peak_cuda_mb"] if row.get("peak_cuda_mb") else row["peak_rss_mb"]
            rows[key] = {"clips_per_second": row["clips_per_s"],
                         "peak_memory_gb": round(memory_mb / 1024, 3)}
        else:
            rows[key] = {"error": row.get("error") or row.get("skipped") or "no result"}
    if not rows:
        raise RuntimeError(f"refbench.py gave no result (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return rows


def run_benchmarks(device: str = "auto", shapes: list[str] | None = None,
                   batch_sizes: list[int] | None = None, repeats: int = 3,
                   k_chunk: int = TrainConfig.k_chunk,
                   bf16: bool = False, threads: int | None = None, compiled: bool = True,
                   kernels: list[str] | None = None, reference: str | Path | None = None,
                   reference_python: str | None = None,
                   refbench: str | Path | None = None, profile: int = 0,
                   mallocs: list[str] | None = None, graphs: list[bool] | None = None,
                   separate: bool | None = None,
                   cudnn_benchmarks: list[bool] | None = None) -> dict:
    """Every (shape, batch size, kernel, malloc, graphs), the kernels side by side (default:
    fused and torch; ``mallocs`` default: retain; ``graphs`` default: off), and the authors'
    code when ``reference`` names its checkout; ``cudnn_benchmarks`` (default: off) as
    ``graphs``. ``separate``: each row in a fresh subprocess
    (default on the CPU, where a row's peak memory is its process's); else all rows in one
    (default on CUDA: CUDA starts once). Returns a JSON-ready dict."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes, batch_sizes = shapes or list(SHAPES), batch_sizes or [16, 128]
    kernels = kernels or ["fused", "torch"]
    mallocs = mallocs or ["retain"]
    graphs, cudnn_benchmarks = graphs or [False], cudnn_benchmarks or [False]
    if any(graphs) and not device.startswith("cuda"):
        raise SettingError("graphs", f"CUDA graphs need a CUDA device, got {device!r}")
    if any(cudnn_benchmarks) and not device.startswith("cuda"):
        raise SettingError("cudnn_benchmark", f"cuDNN's autotuner needs a CUDA device, got "
                           f"{device!r}")
    if separate is None:
        separate = not device.startswith("cuda")
    for malloc in mallocs:
        if malloc not in MALLOC_CHOICES:
            raise ValueError(f"unknown malloc {malloc!r}; choose from "
                         f"{', '.join(MALLOC_CHOICES)}")
    for shape in shapes:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    for kernel in kernels:
        if kernel not in ("fused", "torch"):
            raise ValueError(f"unknown kernel {kernel!r}; choose from fused, torch")
    measured = (reference_benchmarks(reference, device, shapes, batch_sizes, threads,
                                     reference_python, refbench) if reference else {})
    rows = [{"shape": shape, "batch_size": batch_size, "device": device, "repeats": repeats,
             "k_chunk": k_chunk, "bf16": bf16, "threads": threads, "compiled": compiled,
             "kernel": kernel, "profile": profile, "malloc": malloc, "graphs": graphed,
             "cudnn_benchmark": tuned}
            for shape, batch_size, kernel, malloc, graphed, tuned
            in itertools.product(shapes, batch_sizes, kernels, mallocs, graphs,
                                 cudnn_benchmarks)]
    results = []
    for group in ([[row] for row in rows] if separate else [rows]):
        for row in _in_subprocess(group):
            theirs = measured.get((row["shape"], row["batch_size"]))
            if theirs is not None:
                row.update({f"reference_{k}": v for k, v in theirs.items()})
                if "clips_per_second" in theirs:
                    row["speedup_vs_reference"] = round(
                        row["clips_per_second"] / theirs["clips_per_second"], 2)
            results.append(row)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    return {"device": device, "device_name": name or platform.machine(),
            "torch": torch.__version__, "results": results}


def _in_subprocess(rows: list[dict]) -> list[dict]:
    """:func:`bench_step` for each of ``rows`` (its arguments), in one fresh subprocess."""
    command = [sys.executable, "-m", "hearproto.bench", "--rows", json.dumps(rows)]
    done = subprocess.run(command, capture_output=True, text=True)
    results = []
    for line in done.stdout.splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if done.returncode != 0 or len(results) != len(rows):
        failed = rows[len(results)] if len(results) < len(rows) else rows[-1]
        raise RuntimeError(f"benchmark {failed['shape']} B={failed['batch_size']} "
                           f"({failed['kernel']}, malloc {failed['malloc']}, graphs "
                           f"{'on' if failed['graphs'] else 'off'}, cuDNN autotuner "
                           f"{'on' if failed.get('cudnn_benchmark') else 'off'}) failed:\n"
                           f"{done.stderr[-2000:]}")
    return results


def _run_rows(rows: list[dict]) -> None:
    """Print :func:`bench_step`'s row for each of ``rows``, one JSON line each, as it ends."""
    for arguments in rows:
        print(json.dumps(bench_step(**arguments)), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def format_table(report: dict) -> str:
    """The rows as a table; the authors' figures are the reference run's, else the anchors."""
    source = "reference" if any("reference_clips_per_second" in r or "reference_error" in r
                                for r in report["results"]) else "anchor"
    lines = [f"{report['device']} ({report['device_name']}), torch {report['torch']}; "
             f"authors' code: {'measured in this run' if source == 'reference' else 'anchor figures (ANCHORS)'}",
             f"{'shape':12} {'B':>4} {'kernel':>6} {'malloc':>6} {'graph':>5} {'cudnn':>5} "
             f"{'s/step':>8} {'clips/s':>8} {'peak GB':>8} "
             f"{'authors clips/s, GB':>20} {'speed-up':>8}"]
    for r in report["results"]:
        authors, ratio = "", ""
        if f"{source}_clips_per_second" in r:
            authors = (f"{r[f'{source}_clips_per_second']:.1f}, "
                       f"{r[f'{source}_peak_memory_gb']:.2f}")
            ratio = f"{r[f'speedup_vs_{source}']:.2f}x"
        elif f"{source}_error" in r:
            authors = r[f"{source}_error"][:20]
        lines.append(f"{r['shape']:12} {r['batch_size']:>4} {r.get('kernel', ''):>6} "
                     f"{r.get('malloc', ''):>6} {'yes' if r.get('graphs') else 'no':>5} "
                     f"{'tuned' if r.get('cudnn_benchmark') else '-':>5} "
                     f"{r['seconds_per_step']:>8.3f} "
                     f"{r['clips_per_second']:>8.1f} {r['peak_memory_gb']:>8.2f} {authors:>20} "
                     f"{ratio:>8}")
        for name, millis, calls in r.get("profile", []):
            lines.append(f"    {millis:9.3f} ms/step  {calls:5d} calls  {name[:70]}")
    return "\n".join(lines)


if __name__ == "__main__":  # measurements, in a process of their own
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", required=True,
                        help="a JSON list of bench_step's arguments, one object per row")
    _run_rows(json.loads(parser.parse_args().rows))
