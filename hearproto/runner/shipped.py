"""Shipped runs: finished training runs kept in ``weights/``, so that the book shows real
results without training anything.

A shipped run is two files in ``weights/SCALE/DATASET/``, named after its run folder
(``METHOD-seedS-DIGEST``, :func:`~hearproto.runner.runs.run_config`):

* ``RUN.safetensors``: the weights of the checkpoints the run keeps (:func:`default_keep`:
  all of them, ``last.pt`` and ``stages/STAGE.pt``, for our seed-0 runs; the one the tables
  evaluate, ``last.pt`` or a baseline's ``best.pt``, for the other seeds and baselines). A
  tensor is stored once however many checkpoints hold it (a decoder does not change before
  its stage), checkpoint by checkpoint in float16 unless that moves its validation scores;
* ``RUN.json``: what made the run (its config, the commits that trained it, the device, the
  training time, its data: split hash and the training clips' paths, xz-compressed since every
  run on one split has the same long list), each checkpoint's other contents (stage, state,
  metrics rows), which stored tensor each of its weights is, and the sha256 of the
  safetensors file, and the scores the tables read (:func:`shipped_scores`): the evaluated
  checkpoint's on the test split, each stage checkpoint's on the validation split, so that
  the book reads them instead of evaluating every run again. A run shipped as table rows
  alone (APNet, too large for the budget; the runs on held-out splits) has no safetensors
  file, only these scores.

:func:`ship_run` writes them from a run folder; :func:`unpack_run` writes the run folder back,
with checkpoints that hold no optimiser or random state: the run can be evaluated, played and
explored, not trained further (:class:`~hearproto.training.runloop.RunLoop` refuses it). The
runs cache (:func:`~hearproto.runner.runs.ensure_run`) unpacks a shipped run instead of
training it, unless told to retrain (``HEARPROTO_RETRAIN=1``, ``experiments run --retrain``).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import lzma
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from hearproto.errors import CheckpointError
from hearproto.files import atomic_path
from hearproto.training.checkpoints import read_checkpoint, save_checkpoint

__all__ = ["SHIPPED_FORMAT", "SHIPPED_MARKER", "KEEP", "weights_dir", "shipped_files",
           "default_keep", "is_finished", "ship_run", "shipped_scores", "unpack_run",
           "is_unpacked", "ensure_unpacked", "retraining", "budget_of", "shipped_runs_table",
           "packed_data", "unpacked_data"]

SHIPPED_FORMAT = 1
#: Written last into a run folder unpacked from ``weights/``: the sidecar it came from.
SHIPPED_MARKER = "shipped.json"
#: Checkpoint contents that a shipped run leaves out: what only further training needs.
TRAINING_ONLY = ("optimizer", "rng")
#: How far float16 weights may move the validation L_rec (relative) and still be shipped.
FLOAT16_TOLERANCE = 0.005
#: What a shipped run keeps: every checkpoint, the one the tables evaluate (a baseline's
#: best.pt, our model's last.pt), or that one's test scores without weights.
KEEP = ("all", "evaluated", "scores")


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


def _finished(last: dict) -> bool:
    state = last["state"]
    return bool(state.get("done")) and not state["stop_reason"].startswith("time budget")


def is_finished(run: str | os.PathLike) -> bool:
    """Whether run folder ``run`` holds a run trained to the end of its schedule."""
    last = Path(run) / "last.pt"
    return last.is_file() and _finished(read_checkpoint(last))


def default_keep(method: str, seed: int, split: str = "random") -> str:
    """What :func:`ship_run` keeps of a run by default (:data:`KEEP`): every checkpoint of our
    seed-0 runs of our recipe (Table 1 evaluates their stage checkpoints, the Method pages
    load them), the
    table rows alone of APNet (6.7 M parameters: 13 MB in float16 would take a fifth of the
    book's 60 MB) and of every run on a held-out split (only the unseen-bank column reads
    them), and the checkpoint the tables evaluate of every other run."""
    if method == "apnet" or split != "random":
        return "scores"
    # the free assignment's stages: no page reads them (Table 1 is our recipe's runs)
    staged = method in ("ours-supervised", "ours-unsupervised")
    return "all" if staged and seed == 0 else "evaluated"


def _evaluated_checkpoint(payload: dict) -> str:
    """The checkpoint the tables evaluate: a baseline's best.pt, our model's last.pt."""
    return "best.pt" if payload.get("baseline") else "last.pt"


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


def _contents(payload: dict) -> dict:
    """What a checkpoint holds besides its weights, the data identity and the run-level facts."""
    return _json_value({k: v for k, v in payload.items() if k not in
                        (*TRAINING_ONLY, "model", "held_labels", "data", "metrics", "commits")})


def packed_data(data: dict | None) -> dict | None:
    """A checkpoint's data identity as a sidecar stores it: the training clips' paths (about
    300 kB of JSON for the instruments, the same for every run on a split) as one
    base64 string of their xz-compressed lines (about 18 kB)."""
    if not data or "train_paths" not in data:
        return data
    lines = "\n".join(data["train_paths"]).encode()
    packed = {k: v for k, v in data.items() if k != "train_paths"}
    return {**packed, "train_paths_xz": base64.b64encode(lzma.compress(lines)).decode("ascii")}


def unpacked_data(data: dict | None) -> dict | None:
    """The inverse of :func:`packed_data`; a sidecar written before it (the list as is) is
    returned unchanged."""
    if not data or "train_paths_xz" not in data:
        return data
    lines = lzma.decompress(base64.b64decode(data["train_paths_xz"])).decode()
    unpacked = {k: v for k, v in data.items() if k != "train_paths_xz"}
    return {**unpacked, "train_paths": lines.split("\n") if lines else []}


def _facts(run: Path, last: dict) -> dict:
    """Run-level facts, from its last checkpoint and metrics.csv."""
    with open(run / "metrics.csv", newline="") as handle:
        columns = next(csv.reader(handle))
    return {"config": last["config"], "data": packed_data(last.get("data")),
            "metrics_columns": columns,
            "commits": last.get("commits", []), "trained_on": last.get("trained_on"),
            "metrics": last.get("metrics", []),
            "minutes": round(last["state"]["elapsed_seconds"] / 60, 2)}


def _pack(payloads: dict[str, dict], half: dict[str, bool]) -> tuple[dict, dict]:
    """(tensors to store, per-checkpoint descriptions) of the checkpoints ``payloads`` (name
    relative to the run folder: loaded checkpoint), each with its float tensors stored in
    float16 where ``half[name]``."""
    tensors, checkpoints = {}, {}
    for name, payload in payloads.items():
        weights = {}
        for key, tensor in payload["model"].items():
            stored = tensor.half() if half[name] and tensor.dtype == torch.float32 else tensor
            tensor_key = _tensor_key(stored)
            tensors.setdefault(tensor_key, stored.detach().cpu().contiguous())
            weights[key] = {"tensor": tensor_key, "dtype": str(tensor.dtype).removeprefix("torch.")}
        held = payload.get("held_labels")
        if held is not None:
            tensors.setdefault(_tensor_key(held), held.cpu().contiguous())
        checkpoints[name] = {
            "weights": weights, "stored": "float16" if half[name] else "float32",
            "held_labels": None if held is None else _tensor_key(held),
            "metrics_rows": len(payload.get("metrics") or []), "contents": _contents(payload)}
    return tensors, checkpoints


def _float16_moves_scores(run: Path, name: str, packs: list[tuple[dict, dict]],
                          device: str, scored: dict | None = None) -> bool:
    """Whether checkpoint ``name`` scores differently on the validation split with float16
    weights (another OA or AA, or L_rec moved by more than FLOAT16_TOLERANCE). ``scored``
    receives the float32 scores under ``name`` (the tables' validation scores: not computed
    twice)."""
    from hearproto.baselines.trainer import evaluate_baseline
    from hearproto.training import evaluate_checkpoint

    scores = []
    for tensors, checkpoints in packs:  # float32, then float16
        scratch = run.parent / f".{run.name}-float16-check"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            _write_checkpoint(scratch / name, checkpoints[name], tensors, {}, [])
            payload = read_checkpoint(scratch / name)
            evaluate = evaluate_baseline if payload.get("baseline") else evaluate_checkpoint
            scores.append(evaluate(scratch / name, split="val", device=device))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    a, b = scores
    if scored is not None:
        scored[name] = a
    moved_l_rec = (a["L_rec"] is not None and
                   abs(a["L_rec"] - b["L_rec"]) > FLOAT16_TOLERANCE * abs(a["L_rec"]))
    return a["OA"] != b["OA"] or a["AA"] != b["AA"] or moved_l_rec


def _table_scores(run: Path, names: list[str], payloads: dict[str, dict], device: str,
                  val_scores: dict | None = None) -> list[dict]:
    """The scores the tables read of the checkpoints ``names``: the evaluated one's on the
    test split (both of APNet's: its classifier, Table 3; K-means on its similarities, Table
    2), each stage checkpoint's on the validation split (Table 1)."""
    from hearproto.baselines.trainer import evaluate_baseline
    from hearproto.provenance import describe_device, git_commit
    from hearproto.training import evaluate_checkpoint, resolve_device

    evaluated_on = describe_device(resolve_device(device))
    commit = git_commit(Path(__file__).parent)
    rows = []
    for name in names:
        payload = payloads[name]
        if name.startswith("stages/"):
            split = "val"
        elif name == _evaluated_checkpoint(payload):
            split = "test"
        else:
            continue  # a baseline's last.pt: no table reads it
        baseline = payload.get("baseline")
        variants = (False, True) if baseline == "apnet" and split == "test" else (False,)
        for clustering in variants:
            # the test split's per-clip choices too: the Results pages' confusions read them
            per_clip = split == "test" and not clustering and baseline != "autoencoder"
            if split == "val" and name in (val_scores or {}):  # scored by the float16 check
                scores = val_scores[name]
            elif baseline:
                scores = evaluate_baseline(run / name, split, device, clustering=clustering,
                                           per_clip=per_clip)
            else:
                scores = evaluate_checkpoint(run / name, split, device, per_clip=per_clip)
            clips = scores.pop("per_clip", None)
            rows.append({"checkpoint": name, "split": split, "clustering": clustering,
                         "scores": _json_value(scores), "contents": _contents(payload),
                         "evaluated_on": evaluated_on, "commit": commit,
                         **({"per_clip": clips} if clips is not None else {})})
    return rows


def ship_run(run: str | os.PathLike, scale: str, dataset: str, root: Path | None = None,
             half: bool | None = None, device: str = "cpu", overwrite: bool = False,
             keep: str = "all") -> dict:
    """Write the finished run folder ``run`` into ``weights/SCALE/DATASET/`` (``root``:
    another weights folder). ``half``: store float16 (True), float32 (False), or, checkpoint
    by checkpoint, float16 unless it moves that checkpoint's validation scores (None).
    ``keep`` (:data:`KEEP`): every checkpoint, the one the tables evaluate, or its test scores
    alone (no weights: the tables read them, nothing else can use the run). Returns the
    sidecar."""
    if keep not in KEEP:
        raise ValueError(f"keep={keep!r}: choose from {', '.join(KEEP)}")
    run = Path(run)
    last = read_checkpoint(run / "last.pt")
    if not _finished(last):
        raise CheckpointError(f"{run}: the run has not finished ({last['state']['stop_reason'] or 'in progress'}); "
                              "train it to the end of its schedule before shipping it")
    tensors_file, sidecar_file = shipped_files(run, scale, dataset, root)
    if not overwrite and (tensors_file.exists() or sidecar_file.exists()):
        raise FileExistsError(f"{sidecar_file} exists; pass overwrite=True to replace it")
    facts = _facts(run, last)
    names = (_checkpoint_files(run) if keep == "all" else [_evaluated_checkpoint(last)])
    payloads = {name: last if name == "last.pt" else read_checkpoint(run / name)
                for name in names}
    sidecar = {"format": SHIPPED_FORMAT, "run": run.name, "scale": scale, "dataset": dataset,
               "method": run.name.split("-seed")[0], "seed": facts["config"]["seed"],
               "recipe": facts["config"].get("recipe"), "keep": keep}
    val_scores: dict[str, dict] = {}  # float32 validation scores, from the float16 check
    if keep != "scores":
        if half is None:  # float16 for each checkpoint whose validation scores it leaves alone
            packs = [_pack(payloads, dict.fromkeys(payloads, h)) for h in (False, True)]
            choice = {name: not _float16_moves_scores(run, name, packs, device, val_scores)
                      for name in payloads}
        else:
            choice = dict.fromkeys(payloads, bool(half))
    # the tables read these instead of evaluating the run again (the book builds in minutes)
    sidecar["scores"] = _table_scores(run, names, payloads, device, val_scores)
    if keep == "scores":
        tensors_file.unlink(missing_ok=True)  # a run shipped with weights before
        sidecar.update({"dtype": None, "sha256": None, "bytes": 0, **_json_value(facts),
                        "checkpoints": {}})
    else:
        tensors, checkpoints = _pack(payloads, choice)
        with atomic_path(tensors_file) as tmp:
            save_file(tensors, str(tmp))
        stored = set(choice.values())
        sidecar.update({"dtype": ("mixed" if len(stored) > 1 else
                                  "float16" if stored == {True} else "float32"),
                        "sha256": hashlib.sha256(tensors_file.read_bytes()).hexdigest(),
                        "bytes": tensors_file.stat().st_size, **_json_value(facts),
                        "checkpoints": checkpoints})
    with atomic_path(sidecar_file) as tmp:
        # compact: the weight maps take most of it (python -m json.tool prints it readably)
        tmp.write_text(json.dumps(sidecar, separators=(",", ":"), allow_nan=False))
    return sidecar


def shipped_scores(checkpoint: str | os.PathLike, split: str, clustering: bool = False
                   ) -> dict | None:
    """The scores stored at shipping time of a checkpoint unpacked from ``weights/``:
    ``scores`` (as the evaluate functions return them), ``contents`` (the checkpoint's
    provenance, with the run's data identity), ``evaluated_on`` and ``commit``. None where there are none to read: a run
    not unpacked, or a checkpoint shipped with its weights but without these scores (it is
    evaluated). A checkpoint shipped as table rows alone without them is an error."""
    checkpoint = Path(checkpoint)
    marker = checkpoint.parent / SHIPPED_MARKER
    if checkpoint.parent.name == "stages":
        marker = checkpoint.parent.parent / SHIPPED_MARKER
    if not marker.is_file():
        return None
    name = checkpoint.relative_to(marker.parent).as_posix()
    sidecar = json.loads(marker.read_text())
    for entry in sidecar.get("scores") or []:
        if (entry["checkpoint"], entry["split"], entry["clustering"]) == (name, split, clustering):
            return {**entry, "contents": {**entry["contents"],
                                          "data": unpacked_data(sidecar.get("data"))}}
    if checkpoint.is_file():
        return None
    kind = "clustering " if clustering else ""
    raise CheckpointError(f"{checkpoint}: shipped as table rows without weights, and without "
                          f"its {kind}{split} scores; train the run afresh (hearproto "
                          "experiments run --retrain) to evaluate it otherwise")


def _write_checkpoint(path: Path, description: dict, tensors: dict, facts: dict,
                      metrics: list) -> None:
    weights = {key: tensors[entry["tensor"]].to(getattr(torch, entry["dtype"]))
               for key, entry in description["weights"].items()}
    held = description.get("held_labels")
    payload = {**description["contents"], "model": weights,
               "held_labels": None if held is None else tensors[held],
               "data": unpacked_data(facts.get("data")), "commits": facts.get("commits", []),
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
    rows_only = sidecar.get("keep") == "scores"  # nothing to read but the sidecar
    if not rows_only and not tensors_file.is_file():
        raise CheckpointError(f"{tensors_file}: missing (its sidecar {sidecar_file.name} is "
                              "there); restore it from the repository (git checkout weights)")
    found = None if rows_only else hashlib.sha256(tensors_file.read_bytes()).hexdigest()
    if found != sidecar["sha256"]:
        raise CheckpointError(f"{tensors_file}: sha256 {found[:12]}..., its sidecar says "
                              f"{sidecar['sha256'][:12]}...: the file is damaged or was "
                              "replaced; restore it from the repository")
    tensors = {} if rows_only else load_file(str(tensors_file))
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


def ensure_unpacked(run: str | os.PathLike, scale: str, dataset: str,
                    root: Path | None = None) -> bool:
    """Unpack the shipped run named like ``run`` (:func:`unpack_run`) unless the folder holds
    it already, unpacked from the sidecar ``weights/`` has now (not from an earlier one);
    returns whether ``weights/`` ships it."""
    _, sidecar_file = shipped_files(Path(run), scale, dataset, root)
    if not sidecar_file.is_file():
        return False
    marker = Path(run) / SHIPPED_MARKER
    if marker.is_file():
        sidecar = json.loads(sidecar_file.read_text())
        if json.loads(marker.read_text()) == {k: v for k, v in sidecar.items()
                                              if k != "checkpoints"}:
            return True
    return unpack_run(run, scale, dataset, root)


def budget_of(config: dict) -> str:
    """A run's training budget in words, from its ``config`` (``config.json``): our model's
    stages, a baseline's optimiser steps or epochs."""
    if config.get("model") in (None, "ours"):
        if config.get("stage_epochs"):
            count = config["stage_epochs"]
            return f"{count} epoch{'s' if count != 1 else ''} per stage"
        if config.get("stage_steps"):
            ce = config.get("ce_stage_steps") or config["stage_steps"]
            return f"{config['stage_steps']} steps per transformation stage, {ce} of cross-entropy"
        return f"stages of patience {config.get('patience')} epochs, {config.get('epochs')} at most"
    if config.get("steps"):
        return f"{config['steps']} steps"
    return f"{config.get('epochs')} epochs, patience {config.get('patience')}"


def shipped_runs_table(scale: str, root: Path | None = None) -> pd.DataFrame:
    """One row per run shipped at ``scale`` (``weights/SCALE/*/*.json``): dataset, method,
    seed, data split, the training budget (:func:`budget_of`), the epochs and minutes it
    trained, the device and the commit it trained at (its last, if it resumed), what was
    kept, its size and the first digits of its safetensors file's sha256 (none for a run
    shipped as table rows)."""
    rows = []
    for sidecar_file in sorted(((weights_dir() if root is None else Path(root)) / scale)
                               .glob("*/*.json")):
        sidecar = json.loads(sidecar_file.read_text())
        config = sidecar["config"]
        rows.append({"dataset": sidecar["dataset"], "method": sidecar["method"],
                     "seed": sidecar["seed"], "split": config.get("split", "random"),
                     "budget": budget_of(config), "epochs": len(sidecar.get("metrics") or []),
                     "train minutes": sidecar.get("minutes"),
                     # runs shipped before "1 thread" was spelt so
                     "trained on": (sidecar.get("trained_on") or "").replace("1 threads", "1 thread"),
                     "trained at": ((sidecar.get("commits") or [""])[-1])[:10],
                     "kept": sidecar["keep"],
                     "MB": round(sidecar.get("bytes", 0) / 1e6, 2),
                     "sha256": (sidecar.get("sha256") or "")[:12]})
    columns = ["dataset", "method", "seed", "split", "budget", "epochs", "train minutes",
               "trained on", "trained at", "kept", "MB", "sha256"]
    return pd.DataFrame(rows, columns=columns)
