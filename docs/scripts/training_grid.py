"""Many short training runs side by side, for the measurements of docs/training.md.

Meant for a GPU machine that has torch, numpy, pandas, scipy and scikit-learn but not the
audio stack (librosa, soundfile, soxr): ``export`` writes the prepared features of each
dataset (uint8-quantised, compressed, ~35 MB for instruments) where the machine with the
full stack can, ``run`` trains every named configuration in its own process (one CPU thread
each) on those features and writes ``summary.csv`` (test and validation OA of every stage
checkpoint) beside the runs.

    python docs/scripts/training_grid.py export DIR instruments librispeech-mini
    python docs/scripts/training_grid.py run DIR OUT MINUTES [NAME ...]   # GRID's names
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "librispeech-mini"
SPECS = {"instruments": {"name": "instruments"}, "speakers": {"name": "speakers"},
         "librispeech-mini": {"name": "librispeech", "root": str(MINI), "n_speakers": 10}}

I = "instruments"
#: name: (dataset, mode or "direct", recipe, TrainConfig changes)
GRID = {
    "sup-paper": (I, "supervised", "paper", {}),
    "sup-default": (I, "supervised", "default", {}),
    "sup-seed1": (I, "supervised", "default", {"seed": 1}),
    "sup-nocalib": (I, "supervised", "default", {"beta_calibration": False}),
    "sup-lambda0.1": (I, "supervised", "default", {"lambda_ce": 0.1}),
    "sup-ce-lr-x1": (I, "supervised", "default", {"ce_lr_factor": 1.0}),
    "sup-ce-lr-x0.3": (I, "supervised", "default", {"ce_lr_factor": 0.3}),
    "sup-augment": (I, "supervised", "default", {"augment": True}),
    "sup-b128": (I, "supervised", "default", {"batch_size": 128}),
    "sup-stride1": (I, "supervised", "default", {"error_stride": 1}),
    "direct": (I, "direct", None, {}),
    "unsup-paper": (I, "unsupervised", "paper", {}),
    "unsup-default": (I, "unsupervised", "default", {}),
    "unsup-kmeans++": (I, "unsupervised", "default", {"unsupervised_init": "kmeans++"}),
    "unsup-noreassign": (I, "unsupervised", "default", {"min_share": 0.0}),
    "mini-sup": ("librispeech-mini", "supervised", "default", {}),
    "mini-unsup": ("librispeech-mini", "unsupervised", "default", {}),
}


def export(directory: Path, names: list[str]) -> None:
    from hearproto.data import prepare_dataset

    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = prepare_dataset(progress=False, **SPECS[name])
        features = np.asarray(data.store.features)
        low, high = float(features.min()), float(features.max())
        quantised = np.round((features - low) / (high - low) * 255).astype(np.uint8)
        np.savez_compressed(directory / f"{name}.npz", q=quantised)
        data.table.to_csv(directory / f"{name}.csv", index=False)
        meta = {"name": data.name, "root": str(data.root), "frontend": data.frontend.to_dict(),
                "classes": data.classes, "crop_frames": data.crop_frames, "low": low, "high": high}
        (directory / f"{name}.json").write_text(json.dumps(meta))
        print(f"{name}: {features.shape[0]} frames -> {directory / name}.npz")


def use_exported(directory: Path) -> None:
    """Serve the exported features to the trainers instead of ``prepare_dataset``."""
    for module in ("librosa", "soundfile", "soxr"):  # training needs none of them
        sys.modules.setdefault(module, types.ModuleType(module))
    import hearproto.baselines.trainer
    import hearproto.training.checkpoints
    import hearproto.training.runloop
    from hearproto.frontend import FrontEnd
    from hearproto.data.cache import FeatureStore
    from hearproto.data.registry import PreparedDataset

    loaded: dict[str, PreparedDataset] = {}
    by_root = {spec.get("root"): label for label, spec in SPECS.items()}

    def prepare(name, root=None, **_):
        label = by_root.get(root, name) if root else name
        if label not in loaded:
            meta = json.loads((directory / f"{label}.json").read_text())
            quantised = np.load(directory / f"{label}.npz")["q"]
            features = quantised.astype(np.float32) / 255 * (meta["high"] - meta["low"]) + meta["low"]
            table = pd.read_csv(directory / f"{label}.csv", dtype={"path": str, "label": str})
            store = FeatureStore(directory, table[["path", "label", "start", "frames"]], features)
            loaded[label] = PreparedDataset(meta["name"], Path(meta["root"]),
                                            FrontEnd(**meta["frontend"]), table, meta["classes"],
                                            store, directory / f"{label}.csv", meta["crop_frames"])
        return loaded[label]

    hearproto.training.runloop.prepare_dataset = prepare
    hearproto.training.checkpoints.prepare_dataset = prepare


def run_one(name: str, directory: Path, out_dir: Path, minutes: float, device: str) -> None:
    import torch

    torch.set_num_threads(1)
    use_exported(directory)
    from hearproto.baselines.trainer import BaselineConfig, evaluate_baseline, train_baseline
    from hearproto.training import evaluate_checkpoint, train, TrainConfig

    dataset, mode, recipe, changes = GRID[name]
    changes = dict(changes)
    out = out_dir / name
    spec = SPECS[dataset]
    common = dict(dataset=spec["name"], root=spec.get("root"), n_speakers=spec.get("n_speakers", 128),
                  out=str(out), max_minutes=minutes, device=device, seed=changes.pop("seed", 0))
    start = time.time()
    if mode == "direct":
        summary = train_baseline(BaselineConfig(model="direct", **common), progress=False)
        checkpoints = [out / "best.pt"]
        score = evaluate_baseline
    else:
        config = TrainConfig.from_recipe(recipe, mode=mode, compile=False, **common, **changes)
        summary = train(config, progress=False)
        checkpoints = sorted((out / "stages").glob("*.pt")) + [out / "last.pt"]
        score = evaluate_checkpoint
    evaluations = {path.stem: {split: score(path, split, device=device) for split in ("val", "test")}
                   for path in checkpoints}
    result = {"name": name, "dataset": dataset, "mode": mode, "recipe": recipe,
              "changes": GRID[name][3], "summary": summary, "evaluations": evaluations,
              "wall_seconds": time.time() - start}
    (out / "result.json").write_text(json.dumps(result, default=str))


def run(directory: Path, out_dir: Path, minutes: float, names: list[str]) -> None:
    device = os.environ.get("GRID_DEVICE", "cuda")
    out_dir.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    processes = {}
    for name in names:
        log = open(out_dir / f"{name}.log", "w")
        processes[name] = subprocess.Popen(
            [sys.executable, __file__, "one", name, str(directory), str(out_dir), str(minutes), device],
            stdout=log, stderr=subprocess.STDOUT, env=environment)
    rows = []
    for name, process in processes.items():
        process.wait()
        result_file = out_dir / name / "result.json"
        if process.returncode or not result_file.is_file():
            print(f"{name}: failed (rc {process.returncode}), see {out_dir / name}.log")
            continue
        result = json.loads(result_file.read_text())
        for checkpoint, scores in result["evaluations"].items():
            rows.append({"run": name, "checkpoint": checkpoint,
                         "epochs": result["summary"].get("epochs"),
                         "stop": result["summary"].get("stop_reason"),
                         "val_OA": round(scores["val"]["OA"], 1),
                         "test_OA": round(scores["test"]["OA"], 1)})
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "summary.csv", index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["--help"]
    if command == "export":
        export(Path(args[0]), args[1:] or list(SPECS))
    elif command == "run":
        run(Path(args[0]), Path(args[1]), float(args[2]), args[3:] or list(GRID))
    elif command == "one":
        run_one(args[0], Path(args[1]), Path(args[2]), float(args[3]), args[4])
    else:
        print(__doc__)
