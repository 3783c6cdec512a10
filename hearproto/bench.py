"""``hearproto bench``: the speed and memory of one training step at the paper's shapes.

One step = forward (all K reconstructions errors, every transformation active), the supervised
loss with cross-entropy, backward and an AdamW update, on random log-Mels. Each (shape, batch)
runs in a fresh subprocess so that its peak memory is its own: on CPU the peak resident set
size (VmHWM), on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

__all__ = ["SHAPES", "run_benchmarks", "bench_step"]

#: name -> (K prototypes, T frames, front-end preset); F = 128 mel bins.
SHAPES = {"sol": (33, 256, "instruments"), "librispeech": (128, 192, "speakers")}
#: The authors' implementation measured on our 2-core machines (DESIGN.md): clips/s, peak GB.
AUTHORS_CPU = {("sol", 16): (9.0, 1.5), ("sol", 128): (6.0, 8.9),
               ("librispeech", 16): (3.0, 3.1), ("librispeech", 64): (2.4, 11.2)}


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_step(shape: str, batch_size: int, device: str = "cpu", repeats: int = 3,
               k_chunk: int = 8, bf16: bool = False, threads: int | None = None,
               compiled: bool = True) -> dict:
    """Time ``repeats`` training steps (after one warm-up) in this process."""
    from hearproto.audio import PRESETS
    from hearproto.model import TRANSFORMATIONS, PrototypeModel
    from hearproto.train import loss_from_errors

    if threads:
        torch.set_num_threads(threads)
    k, t, preset = SHAPES[shape]
    torch.manual_seed(0)
    dev = torch.device(device)
    model = PrototypeModel(k, PRESETS[preset]).to(dev)
    for name in TRANSFORMATIONS:
        model.activate(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-6)
    x = torch.rand(batch_size, t, 128, device=dev)
    y = torch.randint(k, (batch_size,), device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and dev.type == "cuda"):
            errors = model.errors(x, k_chunk, compiled)[0].float()
        loss = loss_from_errors(errors, y, "supervised", model.beta, 0.01, True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _peak_rss_bytes()
    result = {"shape": shape, "K": k, "T": t, "F": 128, "batch_size": batch_size,
              "device": device, "bf16": bf16, "k_chunk": k_chunk, "compiled": compiled,
              "threads": torch.get_num_threads(),
              "seconds_per_step": round(seconds, 4), "clips_per_second": round(batch_size / seconds, 2),
              "peak_memory_gb": round(peak / 2**30, 3)}
    authors = AUTHORS_CPU.get((shape, batch_size)) if dev.type == "cpu" else None
    if authors:
        result["authors_clips_per_second"], result["authors_peak_memory_gb"] = authors
        result["speedup_vs_authors"] = round(result["clips_per_second"] / authors[0], 2)
    return result


def run_benchmarks(device: str = "auto", shapes: list[str] | None = None,
                   batch_sizes: list[int] | None = None, repeats: int = 3, k_chunk: int = 8,
                   bf16: bool = False, threads: int | None = None, compiled: bool = True) -> dict:
    """Every (shape, batch size), each in a fresh subprocess. Returns a JSON-ready dict."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for shape in shapes or list(SHAPES):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        for batch_size in batch_sizes or [16, 128]:
            command = [sys.executable, "-m", "hearproto.bench", "--one", shape, str(batch_size),
                       device, str(repeats), str(k_chunk), str(int(bf16)), str(threads or 0),
                       str(int(compiled))]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"benchmark {shape} B={batch_size} failed:\n{done.stderr[-2000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    return {"device": device, "device_name": name or platform.machine(),
            "torch": torch.__version__, "results": results}


def format_table(report: dict) -> str:
    lines = [f"{report['device']} ({report['device_name']}), torch {report['torch']}",
             f"{'shape':12} {'B':>4} {'s/step':>8} {'clips/s':>8} {'peak GB':>8} {'authors clips/s, GB':>20}"]
    for r in report["results"]:
        authors = (f"{r['authors_clips_per_second']:.1f}, {r['authors_peak_memory_gb']:.1f}"
                   if "authors_clips_per_second" in r else "")
        lines.append(f"{r['shape']:12} {r['batch_size']:>4} {r['seconds_per_step']:>8.3f} "
                     f"{r['clips_per_second']:>8.1f} {r['peak_memory_gb']:>8.2f} {authors:>20}")
    return "\n".join(lines)


if __name__ == "__main__":  # one measurement, in its own process
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=8, required=True)
    shape, batch, device, repeats, k_chunk, bf16, threads, compiled = parser.parse_args().one
    print(json.dumps(bench_step(shape, int(batch), device, int(repeats), int(k_chunk),
                                bool(int(bf16)), int(threads) or None, bool(int(compiled)))))
