"""Shipped runs: finished training runs kept in ``weights/``, so that the book shows real
results without training anything.

A shipped run is two files in ``weights/SCALE/DATASET/``, named after its run folder
(``METHOD-seedS-DIGEST``, :func:`~hearproto.runner.runs.run_config`):

* ``RUN.safetensors``: the weights of every checkpoint of the run (``last.pt``, and our model's
  ``stages/STAGE.pt`` or a baseline's ``best.pt``). A tensor is stored once however many
  checkpoints hold it (a decoder does not change before its stage), in float16 unless that
  moves the run's validation scores;
* ``RUN.json``: what made the run (its config, the commits that trained it, the device, the
  training time, its data: classes and split hash), each checkpoint's other contents (stage,
  state, metrics rows), which stored tensor each of its weights is, and the sha256 of the
  safetensors file.

:func:`ship_run` writes them from a run folder; :func:`unpack_run` writes the run folder back,
with checkpoints that hold no optimiser or random state: the run can be evaluated, played and
explored, not trained further (:class:`~hearproto.training.runloop.RunLoop` refuses it). The
runs cache (:func:`~hearproto.runner.runs.ensure_run`) unpacks a shipped run instead of
training it, unless told to retrain (``HEARPROTO_RETRAIN=1``, ``experiments run --retrain``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hearproto.errors import CheckpointError
from hearproto.files import atomic_path
from hearproto.training.checkpoints import read_checkpoint, save_checkpoint

__all__ = ["SHIPPED_FORMAT", "SHIPPED_MARKER", "weights_dir", "shipped_files", "ship_run",
           "unpack_run", "is_unpacked", "retraining"]

SHIPPED_FORMAT = 1
#: Written last into a run folder unpacked from ``weights/``: the sidecar it came from.
SHIPPED_MARKER = "shipped.json"
#: Checkpoint contents that a shipped run leaves out: what only further training needs.
TRAINING_ONLY = ("optimizer", "rng")
#: How far float16 weights may move the validation L_rec (relative) and still be shipped.
FLOAT16_TOLERANCE = 0.005


def weights_dir() -> Path:
    """``$HEARPROTO_WEIGHTS``, else ``weights/`` in the repository holding this package."""
    if os.environ.get("HEARPROTO_WEIGHTS"):
        return Path(os.environ["HEARPROTO_WEIGHTS"]).expanduser()
    return Path(__file__).resolve().parents[2] / "weights"


def retraining() -> bool:
    """Whether the runs cache should train afresh rather than unpack shipped runs
    (``HEARPROTO_RETRAIN=1``)."""
    return os.environ.get("HEARPROTO_RETRAIN", "") not in ("", "0")


def shipped_files(run: Path, scale: str, dataset: str,
                  root: Path | None = None) -> tuple[Path, Path]:
    """The safetensors file and the sidecar a run folder ``run`` ships as."""
    folder = (weights_dir() if root is None else Path(root)) / scale / dataset
    return folder / f"{Path(run).name}.safetensors", folder / f"{Path(run).name}.json"


def _checkpoint_files(run: Path) -> list[str]:
    """The checkpoints of a run folder, relative to it: last.pt first."""
    names = ["last.pt"] + (["best.pt"] if (run / "best.pt").is_file() else [])
    return names + sorted(p.relative_to(run).as_posix() for p in (run / "stages").glob("*.pt"))


def _tensor_key(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:20]


def _json_value(value):
    """Checkpoint contents as strict JSON: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _pack(run: Path, half: bool) -> tuple[dict, dict, dict]:
    """(tensors to store, per-checkpoint descriptions, run-level facts) of a run folder."""
    tensors, checkpoints, facts = {}, {}, {}
    for name in _checkpoint_files(run):
        payload = read_checkpoint(run / name)
        weights = {}
        for key, tensor in payload["model"].items():
            stored = tensor.half() if half and tensor.dtype == torch.float32 else tensor
            tensor_key = _tensor_key(stored)
            tensors.setdefault(tensor_key, stored.detach().cpu().contiguous())
            weights[key] = {"tensor": tensor_key, "dtype": str(tensor.dtype).removeprefix("torch.")}
        held = payload.get("held_labels")
        if held is not None:
            tensors.setdefault(_tensor_key(held), held.cpu().contiguous())
        if name == "last.pt":
            with open(run / "metrics.csv", newline="") as handle:
                columns = next(csv.reader(handle))
            facts = {"config": payload["config"], "data": payload.get("data"),
                     "metrics_columns": columns,
                     "commits": payload.get("commits", []), "trained_on": payload.get("trained_on"),
                     "metrics": payload.get("metrics", []),
                     "minutes": round(payload["state"]["elapsed_seconds"] / 60, 2)}
        rest = {k: v for k, v in payload.items()
                if k not in (*TRAINING_ONLY, "model", "held_labels", "data", "metrics", "commits")}
        checkpoints[name] = {
            "weights": weights, "held_labels": None if held is None else _tensor_key(held),
            "metrics_rows": len(payload.get("metrics") or []), "contents": _json_value(rest)}
    return tensors, checkpoints, facts


def _float16_moves_scores(run: Path, packs: list[tuple[dict, dict]], device: str) -> bool:
    """Whether the run's last checkpoint scores differently on the validation split with
    float16 weights (another OA or AA, or L_rec moved by more than FLOAT16_TOLERANCE)."""
    from hearproto.baselines.trainer import evaluate_baseline
    from hearproto.training import evaluate_checkpoint

    scores = []
    for tensors, checkpoints in packs:  # float32, then float16
        scratch = run.parent / f".{run.name}-float16-check"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            _write_checkpoint(scratch / "last.pt", checkpoints["last.pt"], tensors, {}, [])
            payload = read_checkpoint(scratch / "last.pt")
            evaluate = evaluate_baseline if payload.get("baseline") else evaluate_checkpoint
            scores.append(evaluate(scratch / "last.pt", split="val", device=device))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    a, b = scores
    moved_l_rec = (a["L_rec"] is not None and
                   abs(a["L_rec"] - b["L_rec"]) > FLOAT16_TOLERANCE * abs(a["L_rec"]))
    return a["OA"] != b["OA"] or a["AA"] != b["AA"] or moved_l_rec


def ship_run(run: str | os.PathLike, scale: str, dataset: str, root: Path | None = None,
             half: bool | None = None, device: str = "cpu", overwrite: bool = False) -> dict:
    """Write the finished run folder ``run`` into ``weights/SCALE/DATASET/`` (``root``:
    another weights folder). ``half``: store float16 (True), float32 (False), or float16
    unless it moves the validation scores (None). Returns the sidecar."""
    run = Path(run)
    last = read_checkpoint(run / "last.pt")
    if not last["state"].get("done") or last["state"]["stop_reason"].startswith("time budget"):
        raise CheckpointError(f"{run}: the run has not finished ({last['state']['stop_reason'] or 'in progress'}); "
                              "train it to the end of its schedule before shipping it")
    tensors_file, sidecar_file = shipped_files(run, scale, dataset, root)
    if not overwrite and (tensors_file.exists() or sidecar_file.exists()):
        raise FileExistsError(f"{sidecar_file} exists; pass overwrite=True to replace it")
    tensors, checkpoints, facts = _pack(run, half=bool(half))
    if half is None:
        tensors16, checkpoints16, _ = _pack(run, half=True)
        half = not _float16_moves_scores(run, [(tensors, checkpoints), (tensors16, checkpoints16)],
                                         device)
        if half:
            tensors, checkpoints = tensors16, checkpoints16
    with atomic_path(tensors_file) as tmp:
        save_file(tensors, str(tmp))
    sidecar = {
        "format": SHIPPED_FORMAT, "run": run.name, "scale": scale, "dataset": dataset,
        "method": run.name.split("-seed")[0], "seed": facts["config"]["seed"],
        "recipe": facts["config"].get("recipe"), "dtype": "float16" if half else "float32",
        "sha256": hashlib.sha256(tensors_file.read_bytes()).hexdigest(),
        "bytes": tensors_file.stat().st_size, **_json_value(facts), "checkpoints": checkpoints,
    }
    with atomic_path(sidecar_file) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=1, allow_nan=False))
    return sidecar


def _write_checkpoint(path: Path, description: dict, tensors: dict, facts: dict,
                      metrics: list) -> None:
    weights = {key: tensors[entry["tensor"]].to(getattr(torch, entry["dtype"]))
               for key, entry in description["weights"].items()}
    held = description.get("held_labels")
    payload = {**description["contents"], "model": weights,
               "held_labels": None if held is None else tensors[held],
               "data": facts.get("data"), "commits": facts.get("commits", []),
               "metrics": metrics[:description["metrics_rows"]], "shipped": True}
    save_checkpoint(payload, path)


def is_unpacked(run: str | os.PathLike) -> bool:
    """Whether run folder ``run`` was unpacked from shipped weights."""
    return (Path(run) / SHIPPED_MARKER).is_file()


def unpack_run(run: str | os.PathLike, scale: str, dataset: str,
               root: Path | None = None) -> bool:
    """Write the shipped run named like folder ``run`` into it, if ``weights/`` has one;
    returns whether it did. The safetensors file must match the sidecar's sha256."""
    run = Path(run)
    tensors_file, sidecar_file = shipped_files(run, scale, dataset, root)
    if not sidecar_file.is_file():
        return False
    sidecar = json.loads(sidecar_file.read_text())
    if not tensors_file.is_file():
        raise CheckpointError(f"{tensors_file}: missing (its sidecar {sidecar_file.name} is "
                              "there); restore it from the repository (git checkout weights)")
    found = hashlib.sha256(tensors_file.read_bytes()).hexdigest()
    if found != sidecar["sha256"]:
        raise CheckpointError(f"{tensors_file}: sha256 {found[:12]}..., its sidecar says "
                              f"{sidecar['sha256'][:12]}...: the file is damaged or was "
                              "replaced; restore it from the repository")
    tensors = load_file(str(tensors_file))
    if run.exists():
        shutil.rmtree(run)
    (run / "stages").mkdir(parents=True)
    for name, description in sidecar["checkpoints"].items():
        _write_checkpoint(run / name, description, tensors, sidecar, sidecar["metrics"])
    with atomic_path(run / "config.json") as tmp:
        tmp.write_text(json.dumps(sidecar["config"], indent=1))
    with atomic_path(run / "metrics.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows([sidecar["metrics_columns"], *sidecar["metrics"]])
    with atomic_path(run / SHIPPED_MARKER) as tmp:
        tmp.write_text(json.dumps({k: v for k, v in sidecar.items() if k != "checkpoints"},
                                  indent=1))
    return True
