"""``hearproto bench --baselines``: one training step of each baseline, in both memory layouts.

A step is what the baselines' trainer does (loss, backward, gradient clipping, a fused AdamW
update) on random log-Mels of the shape's crop ``(B, T, 128)``. Each model is timed with its
convolution weights in the default layout (NCHW) and channels-last (NHWC), the rows taking
turns step by step, so that a machine whose load changes during the run slows both alike.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from hearproto.baselines.trainer import BASELINES, build_baseline

__all__ = ["LAYOUTS", "bench_baselines", "format_baselines"]

N_MELS = 128
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        loss, _ = model.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
    return step


def bench_baselines(methods: list[str] | None = None, batch_size: int = 32, frames: int = 256,
                    classes: int = 33, repeats: int = 3, device: str = "auto",
                    threads: int | None = None) -> dict:
    """Seconds per training step of each of ``methods`` (default: all; an unknown name raises
    ValueError, from :func:`build_baseline`) in each layout, after
    one warm-up step; the median of ``repeats``, taken in turns. ``device`` "auto": CUDA
    where there is one. Returns a JSON-ready dict."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    methods = methods or list(BASELINES)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.rand(batch_size, frames, N_MELS, device=device)
    y = torch.randint(classes, (batch_size,), device=device)
    steps, times = {}, {}
    for method in methods:
        for layout, memory_format in LAYOUTS.items():
            model = build_baseline(method, classes, N_MELS, frames).to(device)
            steps[method, layout] = _stepper(model.to(memory_format=memory_format), x, y)
            steps[method, layout]()  # warm-up: allocations, optimiser state
            times[method, layout] = []

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    for _ in range(repeats):
        for key, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[key].append(time.perf_counter() - start)
    median = {key: sorted(seconds)[len(seconds) // 2] for key, seconds in times.items()}
    rows = [{"method": method, "layout": layout, "seconds_per_step": round(seconds, 4),
             "clips_per_second": round(batch_size / seconds, 2),
             "speedup_vs_nchw": round(median[method, "nchw"] / seconds, 2)}
            for (method, layout), seconds in median.items()]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    return {"device": device, "device_name": name or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch_size": batch_size, "frames": frames, "repeats": repeats, "results": rows}


def format_baselines(report: dict) -> str:
    """:func:`bench_baselines`' rows as a table."""
    lines = [f"{report['device']} ({report['device_name']}), torch {report['torch']}, "
             f"{report['threads']} thread(s); a step of B = {report['batch_size']} crops of "
             f"{report['frames']} frames, median of {report['repeats']}",
             f"{'baseline':12} {'layout':>13} {'s/step':>8} {'clips/s':>8} {'vs NCHW':>8}"]
    for r in report["results"]:
        lines.append(f"{r['method']:12} {r['layout']:>13} {r['seconds_per_step']:>8.3f} "
                     f"{r['clips_per_second']:>8.2f} {r['speedup_vs_nchw']:>7.2f}x")
    return "\n".join(lines)
