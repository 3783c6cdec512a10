"""``hearproto bench --growth``: how each cost grows with the size of the work.

Four families of measured points, each point in a fresh process so that its peak memory (the
peak resident set size, VmHWM) is its own:

- ``data``: preparing a folder dataset of N generated one-second clips (indexing, splitting,
  the log-Mel cache), its time, peak memory and the cache's size on disk, and the time to
  open it again from the cache;
- ``step``: one training step (every transformation on, the supervised loss, AdamW) with the
  fused kernels, against K prototypes and crops of T frames;
- ``eval``: scoring a split (:func:`~hearproto.training.evaluation.clip_errors`, whole clips,
  no gradient) against its N clips and K prototypes;
- ``ddp``: the step over 1 and 2 processes (gloo) at the same global batch, beside one
  process with as many threads, and the scaling efficiency.

:func:`fit_power_law` fits ``cost ≈ c · x₁^a₁ · x₂^a₂ …`` through the points (least squares in
log-log), which is the growth each table states.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hearproto.memory import peak_resident_bytes

__all__ = ["PARTS", "DEFAULTS", "fit_power_law", "fit_affine", "run_growth", "format_growth",
           "generate_clips", "data_point", "step_point", "eval_point", "ddp_point"]

PARTS = ("data", "step", "eval", "ddp")
#: The points each part measures unless told otherwise.
DEFAULTS = {"clips": [1_000, 10_000, 100_000], "prototypes": [33, 128, 512],
            "frames": [128, 256, 512, 1024], "eval_clips": [250, 1_000, 4_000],
            "eval_frames": 128, "batch_size": 16, "ddp": [(1, 1), (1, 2), (2, 1)]}
#: Generated clips: sample rate (the speakers front end's), length and classes.
CLIP_RATE, CLIP_SECONDS, CLIP_CLASSES = 16_000, 1.0, 10


def _least_squares(design: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """The least-squares solution of ``design @ solution ≈ target`` and its R²."""
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ solution
    spread = float(np.sum((target - target.mean()) ** 2))
    return solution, 1.0 - float(np.sum(residual ** 2)) / spread if spread > 0 else 1.0


def fit_power_law(points: list[dict], variables: list[str], value: str) -> dict:
    """Least squares of ``log value`` on ``log variables``: ``{"exponents": {name: a},
    "coefficient": c, "r2": ...}`` for ``value ≈ c · Π variable^a``. Points whose value is
    missing or not positive are left out; fewer points than unknowns is a ValueError."""
    rows = [p for p in points if p.get(value) is not None and p[value] > 0]
    if len(rows) < len(variables) + 1:
        raise ValueError(f"fitting {value} against {', '.join(variables)} needs at least "
                         f"{len(variables) + 1} points, got {len(rows)}")
    design = np.column_stack([np.ones(len(rows))] + [np.log([float(r[v]) for r in rows])
                                                     for v in variables])
    target = np.log([float(r[value]) for r in rows])
    solution, r2 = _least_squares(design, target)
    return {"exponents": {v: round(float(a), 3) for v, a in zip(variables, solution[1:])},
            "coefficient": float(np.exp(solution[0])), "r2": round(r2, 4)}


def fit_affine(points: list[dict], variables: list[str], value: str) -> dict:
    """Least squares of ``value ≈ c₀ + Σ cᵢ · variableᵢ`` (a variable may be a product,
    ``"K*T"``): ``{"intercept": c₀, "slopes": {name: cᵢ}, "r2": ...}``. Memory grows this
    way: a fixed footprint (the interpreter, torch, the model) plus what each item holds."""
    rows = [p for p in points if p.get(value) is not None]
    if len(rows) < len(variables) + 1:
        raise ValueError(f"fitting {value} against {', '.join(variables)} needs at least "
                         f"{len(variables) + 1} points, got {len(rows)}")
    design = np.column_stack([np.ones(len(rows))] + [
        [float(np.prod([r[name] for name in v.split("*")])) for r in rows] for v in variables])
    target = np.array([float(r[value]) for r in rows])
    solution, r2 = _least_squares(design, target)
    return {"intercept": float(solution[0]),
            "slopes": {v: float(c) for v, c in zip(variables, solution[1:])}, "r2": round(r2, 4)}


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _write_clips(root: str, chunk: list[int]) -> list[int]:
    """Clips ``chunk`` (numbers) under ``root``: a harmonic tone of its class's pitch, a
    random level and a little noise, one second of 16-bit FLAC each."""
    import soundfile as sf

    t = np.arange(int(CLIP_RATE * CLIP_SECONDS)) / CLIP_RATE
    for number in chunk:
        rng = np.random.default_rng(number)
        label = number % CLIP_CLASSES
        f0 = 110.0 * 2 ** (label / 2) * (1 + 0.01 * rng.standard_normal())
        wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
        wave = 0.3 * rng.uniform(0.2, 1) * wave / np.abs(wave).max()
        wave += 0.003 * rng.standard_normal(len(t))
        folder = Path(root) / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"clip{number:07d}.flac", wave.astype(np.float32), CLIP_RATE,
                 subtype="PCM_16")
    return chunk


def generate_clips(root: str | os.PathLike, count: int, progress: bool = True) -> Path:
    """``count`` generated clips in ``CLIP_CLASSES`` class folders under ``root`` (spread over
    the cores); a folder that already holds them is kept as it is."""
    from tqdm.auto import tqdm

    from hearproto.data.workers import map_chunks

    root = Path(root)
    marker = root / f".generated-{count}"
    if marker.is_file():
        return root
    chunks = [list(range(start, min(start + 500, count))) for start in range(0, count, 500)]
    with tqdm(total=count, desc=f"generating {count} clips", unit="clip",
              disable=not progress) as bar:
        for chunk, _ in map_chunks(_write_clips, chunks, str(root), total=count):
            bar.update(len(chunk))
    marker.write_text("")
    return root


def data_point(root: str, cache_dir: str) -> dict:
    """Prepare the folder dataset at ``root`` (its features into ``cache_dir``, empty), then
    open it again from the cache. Runs in this process: call it in a fresh one."""
    from hearproto.data.registry import prepare_dataset

    start = time.perf_counter()
    data = prepare_dataset("folder", root=root, cache_dir=cache_dir, progress=False)
    seconds = time.perf_counter() - start
    peak = peak_resident_bytes()
    start = time.perf_counter()
    again = prepare_dataset("folder", root=root, cache_dir=cache_dir, progress=False)
    reopen = time.perf_counter() - start
    if again.store.computed:
        raise RuntimeError(f"the cache under {cache_dir} was not reused")
    clips, cache = len(data.table), _folder_bytes(data.store.directory)
    return {"clips": clips, "frames": int(data.store.index["frames"].sum()),
            "seconds": round(seconds, 2), "ms_per_clip": round(1e3 * seconds / clips, 3),
            "peak_memory_gb": round(peak / 2**30, 3),
            "cache_bytes": cache, "cache_kb_per_clip": round(cache / clips / 1e3, 2),
            "reopen_seconds": round(reopen, 2)}


def step_point(prototypes: int, frames: int, batch_size: int, repeats: int = 3,
               threads: int | None = None) -> dict:
    """One training step's time and peak memory at K = ``prototypes``, T = ``frames``
    (:func:`hearproto.bench.bench_step`, fused kernels, the instruments front end)."""
    from hearproto.bench import bench_step

    row = bench_step("sol", batch_size, repeats=repeats, threads=threads, prototypes=prototypes,
                     frames=frames, kernel="fused")
    return {"K": prototypes, "T": frames, "batch_size": batch_size,
            "seconds_per_step": row["seconds_per_step"],
            "ms_per_clip": round(1e3 * row["seconds_per_step"] / batch_size, 2),
            "peak_memory_gb": row["peak_memory_gb"], "threads": row["threads"]}


def eval_point(clips: int, prototypes: int, frames: int, batch_size: int = 64,
               threads: int | None = None) -> dict:
    """The time and peak memory of scoring ``clips`` whole clips of ``frames`` frames by
    ``prototypes`` prototypes (every transformation on), as an evaluation of a split does."""
    import pandas as pd
    import torch

    from hearproto.data.cache import FeatureStore
    from hearproto.data.dataset import ClipDataset
    from hearproto.frontend import PRESETS
    from hearproto.memory import retain_freed_memory
    from hearproto.model import TRANSFORMATIONS, PrototypeModel
    from hearproto.training.evaluation import clip_errors

    if threads:
        torch.set_num_threads(threads)
    retain_freed_memory()
    torch.manual_seed(0)
    frontend = PRESETS["instruments"]
    features = torch.randn(clips * frames, frontend.n_mels).numpy()
    index = pd.DataFrame({"path": [f"clip{i}" for i in range(clips)], "label": "a",
                          "start": np.arange(clips) * frames, "frames": frames})
    store = FeatureStore(Path("."), index, features, [], False, 0)
    dataset = ClipDataset(store, index, ["a"], frontend, "growth", "test")
    model = PrototypeModel(prototypes, frontend)
    for name in TRANSFORMATIONS:
        model.activate(name)
    warm_up = ClipDataset(store, index.head(min(clips, batch_size)), ["a"], frontend,
                          "warm-up", "test")
    clip_errors(model, warm_up, batch_size)  # the kernels built and the thread pools up
    start = time.perf_counter()
    errors = clip_errors(model, dataset, batch_size)
    seconds = time.perf_counter() - start
    if errors.shape != (clips, prototypes) or not torch.isfinite(errors).all():
        raise RuntimeError(f"scoring gave errors of shape {tuple(errors.shape)}")
    return {"clips": clips, "K": prototypes, "T": frames, "seconds": round(seconds, 3),
            "us_per_clip_and_prototype": round(1e6 * seconds / (clips * prototypes), 2),
            "peak_memory_gb": round(peak_resident_bytes() / 2**30, 3),
            "features_gb": round(features.nbytes / 2**30, 3), "threads": torch.get_num_threads()}


def _ddp_rank(rank: int, size: int, rendezvous: str, arguments: dict, out: str) -> None:
    import torch.distributed as dist

    from hearproto.bench import bench_step
    from hearproto.distributed import World

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=size)
    try:
        row = bench_step(world=World(rank, size), **arguments)
        Path(out, f"rank{rank}.json").write_text(json.dumps(row))
    finally:
        dist.destroy_process_group()


def ddp_point(processes: int, threads: int, batch_size: int, shape: str = "sol",
              repeats: int = 3) -> dict:
    """The training step of ``shape`` at a global batch of ``batch_size`` clips, over
    ``processes`` processes (gloo) of ``threads`` threads each: the slowest rank's time per
    step (the all-reduce makes them wait for each other) and every rank's peak memory."""
    import torch.multiprocessing as mp

    from hearproto.bench import bench_step

    arguments = {"shape": shape, "batch_size": batch_size, "repeats": repeats,
                 "threads": threads, "kernel": "fused"}
    if processes == 1:
        rows = [bench_step(**arguments)]
    else:
        with tempfile.TemporaryDirectory() as folder:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # the spawned ranks' OpenMP pools
            mp.start_processes(_ddp_rank, (processes, str(Path(folder, "rendezvous")), arguments,
                                           folder), nprocs=processes, start_method="spawn")
            rows = [json.loads(Path(folder, f"rank{r}.json").read_text())
                    for r in range(processes)]
    seconds = max(r["seconds_per_step"] for r in rows)
    return {"processes": processes, "threads": threads, "cores": processes * threads,
            "shape": shape, "batch_size": batch_size, "seconds_per_step": round(seconds, 4),
            "clips_per_second": round(batch_size / seconds, 2),
            "peak_memory_gb": round(sum(r["peak_memory_gb"] for r in rows), 3)}


POINTS = {"data": data_point, "step": step_point, "eval": eval_point, "ddp": ddp_point}


def _in_fresh_process(kind: str, arguments: dict, env: dict | None = None) -> dict:
    """``POINTS[kind](**arguments)`` in a fresh Python, its JSON line read back."""
    command = [sys.executable, "-m", "hearproto.growth", "--point", kind, json.dumps(arguments)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"growth point {kind} {arguments} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def run_growth(parts: list[str], workdir: str | os.PathLike, clips: list[int] | None = None,
               prototypes: list[int] | None = None, frames: list[int] | None = None,
               eval_clips: list[int] | None = None, eval_frames: int | None = None,
               batch_size: int | None = None, ddp: list[tuple[int, int]] | None = None,
               threads: int | None = None, progress: bool = True) -> dict:
    """Measure the points of ``parts`` (:data:`PARTS`; defaults :data:`DEFAULTS`) and fit
    each part's growth. Generated clips go under ``workdir`` (reused by a later run); every
    cache it makes is removed. Returns a JSON-ready report."""
    from tqdm.auto import tqdm

    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown growth part(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(PARTS)}")
    clips, prototypes = clips or DEFAULTS["clips"], prototypes or DEFAULTS["prototypes"]
    frames, eval_clips = frames or DEFAULTS["frames"], eval_clips or DEFAULTS["eval_clips"]
    eval_frames = eval_frames or DEFAULTS["eval_frames"]
    batch_size, ddp = batch_size or DEFAULTS["batch_size"], ddp or DEFAULTS["ddp"]
    for name, values in (("clips", clips), ("prototypes", prototypes), ("frames", frames),
                         ("eval_clips", eval_clips), ("batch_size", [batch_size])):
        if min(values) < 1:
            raise ValueError(f"{name} must be positive, got {values}")
    workdir = Path(workdir)
    import torch

    report: dict = {"device": "cpu", "device_name": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch": torch.__version__}
    plan = [(part, point) for part in PARTS if part in parts for point in {
        "data": [{"count": n} for n in clips],
        "step": [{"prototypes": k, "frames": t, "batch_size": batch_size, "threads": threads}
                 for k in prototypes for t in frames],
        "eval": [{"clips": n, "prototypes": k, "frames": eval_frames, "threads": threads}
                 for k in prototypes for n in eval_clips],
        "ddp": [{"processes": p, "threads": h, "batch_size": batch_size, "repeats": 5}
                for p, h in ddp],  # the median of 5: two processes' steps vary more
    }[part]]
    rows: dict[str, list[dict]] = {part: [] for part in PARTS if part in parts}
    for part, point in tqdm(plan, desc="growth", unit="point", disable=not progress):
        if part == "data":
            root = generate_clips(workdir / f"clips-{point['count']}", point["count"], progress)
            with tempfile.TemporaryDirectory(dir=workdir) as scratch:
                rows[part].append(_in_fresh_process(
                    "data", {"root": str(root), "cache_dir": str(Path(scratch, "features"))},
                    env={"HEARPROTO_DATA": str(Path(scratch, "home"))}))
        else:
            rows[part].append(_in_fresh_process(part, point))
    report["parts"] = {part: {"points": points, **_fits(part, points)}
                       for part, points in rows.items()}
    return report


def _fits(part: str, points: list[dict]) -> dict:
    """Each part's fitted growth, where it has points enough: time as a power law, memory
    and disk as a fixed part plus a part per item; for ``ddp``, each row's speed-up over one
    process of one thread and its efficiency (speed-up per core)."""
    def fit(fitter, variables: list[str], value: str) -> dict | None:
        try:
            return fitter(points, variables, value)
        except ValueError:
            return None

    if part == "data":
        return {"fits": {"seconds": fit(fit_power_law, ["clips"], "seconds"),
                         "reopen_seconds": fit(fit_power_law, ["clips"], "reopen_seconds"),
                         "peak_memory_gb": fit(fit_affine, ["clips"], "peak_memory_gb"),
                         "cache_bytes": fit(fit_affine, ["clips"], "cache_bytes")}}
    if part == "step":
        return {"fits": {"seconds_per_step": fit(fit_power_law, ["K", "T"], "seconds_per_step"),
                         "peak_memory_gb": fit(fit_affine, ["T", "K*T"], "peak_memory_gb")}}
    if part == "eval":
        return {"fits": {"seconds": fit(fit_power_law, ["clips", "K"], "seconds"),
                         # the features of every clip, and a batch's maps of K prototypes
                         "peak_memory_gb": fit(fit_affine, ["clips", "K"], "peak_memory_gb")}}
    for p in points:
        base = next((b for b in points if b["cores"] == 1 and b["batch_size"] == p["batch_size"]
                     and b["shape"] == p["shape"]), None)
        if base:
            p["speedup"] = round(base["seconds_per_step"] / p["seconds_per_step"], 2)
            p["efficiency"] = round(p["speedup"] / p["cores"], 2)
    return {"fits": {}}


def _exponents(found: dict | None) -> str:
    if not found:
        return "(too few points)"
    terms = " · ".join(f"{name}^{a:.2f}" for name, a in found["exponents"].items())
    return f"∝ {terms} (R² {found['r2']:.3f})"


def _affine(found: dict | None, unit: str, scale: float, per: dict[str, tuple[str, float]]
            ) -> str:
    """``found`` (:func:`fit_affine`) as ``a unit + b per item ...``: ``per`` maps a variable
    to its words and the factor of its slope's unit."""
    if not found:
        return "(too few points)"
    text = f"{found['intercept'] * scale:.2f} {unit}"
    for v, (words, factor) in per.items():
        slope = found["slopes"][v] * factor
        text += f" {'−' if slope < 0 else '+'} {abs(slope):.3g} {words}"
    return text + f" (R² {found['r2']:.3f})"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, numbers right-aligned (every column but a first of words)."""
    first = ":---" if rows and not rows[0][0].replace(",", "").isdigit() else "---:"
    rule = "|" + "|".join([first] + ["---:"] * (len(header) - 1)) + "|"
    return (["| " + " | ".join(header) + " |", rule]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _grid(points: list[dict], rows: str, columns: str, cell) -> list[str]:
    """``points`` as a Markdown table of ``rows`` by ``columns`` values, ``cell(point)`` in
    each (empty where there is no point)."""
    across = sorted({p[columns] for p in points})
    table = []
    for value in sorted({p[rows] for p in points}):
        found = {p[columns]: p for p in points if p[rows] == value}
        table.append([str(value)] + [cell(found[c]) if c in found else "" for c in across])
    return _markdown([f"{rows} \\ {columns}"] + [f"{c:,}" for c in across], table)


def format_growth(report: dict) -> str:
    """The report as Markdown tables, each with its fitted growth."""
    lines = [f"CPU: {report['device_name']}, {report['cores']} cores; torch {report['torch']}"]
    parts = report["parts"]
    if "data" in parts:
        part = parts["data"]
        lines += ["", "Data preparation (a folder of one-second 16 kHz FLAC clips)", ""]
        lines += _markdown(
            ["clips", "time (s)", "ms per clip", "peak memory (GB)", "cache (MB)",
             "cache per clip (kB)", "reopen (s)"],
            [[f"{p['clips']:,}", f"{p['seconds']:.1f}", f"{p['ms_per_clip']:.2f}",
              f"{p['peak_memory_gb']:.2f}", f"{p['cache_bytes'] / 1e6:.1f}",
              f"{p['cache_kb_per_clip']:.1f}", f"{p['reopen_seconds']:.2f}"]
             for p in part["points"]])
        fits = part["fits"]
        lines += ["", f"- time {_exponents(fits['seconds'])}",
                  "- peak memory: " + _affine(fits["peak_memory_gb"], "GB", 1,
                                              {"clips": ("kB per clip", 2**30 / 1e3)}),
                  "- cache: " + _affine(fits["cache_bytes"], "MB", 1e-6,
                                        {"clips": ("kB per clip", 1e-3)}),
                  f"- reopening {_exponents(fits['reopen_seconds'])}"]
    if "step" in parts:
        part = parts["step"]
        batch = part["points"][0]["batch_size"]
        ts = sorted({p["T"] for p in part["points"]})
        for value, title in (("seconds_per_step", "s per step"),
                             ("peak_memory_gb", "peak memory (GB)")):
            lines += ["", f"Training step at B = {batch}, fused kernels: {title}", ""]
            lines += _grid(part["points"], "K", "T", lambda p: f"{p[value]:.3f}")
        fits = part["fits"]
        lines += ["", f"- time {_exponents(fits['seconds_per_step'])}",
                  "- peak memory: " + _affine(
                      fits["peak_memory_gb"], "GB", 1,
                      {"T": ("MB per frame", 2**30 / 1e6),
                       "K*T": ("kB per prototype and frame", 2**30 / 1e3)})]
        small = min(part["points"], key=lambda p: (p["K"], p["T"]))
        lines.append(f"- per clip at K = {small['K']}, T = {small['T']}: "
                     f"{small['ms_per_clip']:.1f} ms")
    if "eval" in parts:
        part = parts["eval"]
        lines += ["", f"Evaluation of a split, whole clips of {part['points'][0]['T']} frames: "
                  "seconds", ""]
        lines += _grid(part["points"], "K", "clips", lambda p: f"{p['seconds']:.2f}")
        rates = [p["us_per_clip_and_prototype"] for p in part["points"]]
        fits = part["fits"]
        lines += ["", f"- time {_exponents(fits['seconds'])}",
                  "- peak memory: " + _affine(
                      fits["peak_memory_gb"], "GB", 1,
                      {"clips": ("kB per clip", 2**30 / 1e3),
                       "K": ("MB per prototype", 2**30 / 1e6)}),
                  f"- per clip and prototype: {min(rates):.1f} to {max(rates):.1f} µs"]
    if "ddp" in parts:
        part = parts["ddp"]
        lines += ["", "Data parallelism on the CPU (gloo), the same global batch", ""]
        lines += _markdown(
            ["processes × threads", "batch", "s per step", "clips/s", "speed-up", "efficiency",
             "peak memory, all (GB)"],
            [[f"{p['processes']} × {p['threads']}", str(p["batch_size"]),
              f"{p['seconds_per_step']:.3f}", f"{p['clips_per_second']:.1f}",
              f"{p.get('speedup', float('nan')):.2f}", f"{p.get('efficiency', float('nan')):.2f}",
              f"{p['peak_memory_gb']:.2f}"] for p in part["points"]])
    return "\n".join(lines)


if __name__ == "__main__":  # one measured point, in a process of its own
    parser = argparse.ArgumentParser()
    parser.add_argument("--point", nargs=2, metavar=("KIND", "JSON"), required=True)
    kind, arguments = parser.parse_args().point
    print(json.dumps(POINTS[kind](**json.loads(arguments))), flush=True)
