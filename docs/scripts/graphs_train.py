"""A short training run on a GPU twice, eagerly and with ``cuda_graphs`` (every step recorded
once as a CUDA graph and replayed), on a generated folder dataset: the time per epoch of
each stage and the losses, side by side. One JSON object per run, then the ratios.

    python docs/scripts/graphs_train.py [--device cuda] [--clips 96] [--classes 16]

The two runs should agree to float32 rounding (the recorded step reads its learning rate
from a float32 tensor; eager AdamW takes a double), and the replays count the steps that ran
from a graph. docs/kernels.md, "CUDA graphs".
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from hearproto.training import TrainConfig, Trainer

SR = 16_000


def write_dataset(root: Path, classes: int, clips: int, seconds: float = 2.0) -> Path:
    """``classes`` folders of ``clips`` harmonic tones each, a class per fundamental and
    spectral tilt."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        f0, tilt = 110 * 2 ** (c / 4), 0.5 + (c % 4) / 4
        for i in range(clips):
            f = f0 * rng.uniform(0.97, 1.03)
            wave = sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6)) / h ** tilt
                       for h in range(1, 8) if f * h < SR / 2)
            sf.write(folder / f"{i}.wav", (0.1 * wave).astype(np.float32), SR)
    return root


def run(root: Path, out: Path, device: str, graphs: bool, batch_size: int) -> dict:
    config = TrainConfig.from_recipe(
        "default", dataset="folder", root=str(root), out=str(out), device=device,
        preset="speakers", batch_size=batch_size, stage_steps=40, ce_stage_steps=80,
        epochs=200, val_every=100, cuda_graphs=graphs)
    start = time.perf_counter()
    trainer = Trainer(config, progress=False)
    summary = trainer.fit()
    wall = time.perf_counter() - start
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    stages: dict[str, list[float]] = {}
    for row in rows[1:]:  # the first epoch also starts CUDA and compiles
        stages.setdefault(row["stage"], []).append(float(row["epoch_seconds"]))
    return {"graphs": graphs, "wall_s": round(wall, 1), "epochs": len(rows),
            "stop": summary["stop_reason"], "replays": trainer._graphed.replays,
            "failed": trainer._graphed.failed,
            "epoch_s_by_stage": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
            "losses": [float(r["train_loss"]) for r in rows],
            "val_OA": [r["val_OA"] for r in rows if r["val_OA"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--clips", type=int, default=96, help="per class")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "tones", args.classes, args.clips)
        runs = [run(root, Path(tmp) / name, args.device, graphs, args.batch_size)
                for name, graphs in (("eager", False), ("graphs", True))]
    for result in runs:
        print(json.dumps(result))
    eager, graphed = runs
    print(json.dumps({"speed-up by stage": {
        stage: round(eager["epoch_s_by_stage"][stage] / seconds, 2)
        for stage, seconds in graphed["epoch_s_by_stage"].items()
        if stage in eager["epoch_s_by_stage"]},
        "largest loss difference": max(abs(a - b) for a, b in zip(eager["losses"],
                                                                   graphed["losses"]))}))


if __name__ == "__main__":
    main()
