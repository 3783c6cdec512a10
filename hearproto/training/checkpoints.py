"""Checkpoints: written atomically, read without pickles, resumed exactly (every random state)
and strictly (:func:`check_resume`: the same settings and the same data, or a named change)."""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Iterable

import torch

from hearproto.data import PreparedDataset, prepare_dataset
from hearproto.data.dataset import ClipDataset
from hearproto.errors import CheckpointError, DatasetError, RunMismatch
from hearproto.files import atomic_path
from hearproto.frontend import FrontEnd
from hearproto.model import PrototypeModel
from hearproto.training.config import RunConfig

__all__ = ["CHECKPOINT_FORMAT", "RESUMABLE", "save_checkpoint", "read_checkpoint",
           "load_checkpoint", "rng_snapshot", "restore_rng", "check_resume", "data_provenance",
           "checkpoint_dataset", "require_finite_weights", "training_overlap"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def rng_snapshot(loader_generator: torch.Generator, device: torch.device) -> dict:
    """Every random state a run draws from, to resume it exactly."""
    return {"torch": torch.get_rng_state(), "loader": loader_generator.get_state(),
            "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}


def restore_rng(snapshot: dict, loader_generator: torch.Generator, device: torch.device) -> None:
    """Put back the states of :func:`rng_snapshot`."""
    torch.set_rng_state(snapshot["torch"])
    loader_generator.set_state(snapshot["loader"])
    if device.type == "cuda" and snapshot.get("cuda") is not None:
        torch.cuda.set_rng_state(snapshot["cuda"])


#: Settings a run may change when it resumes: how long it runs, and where and how fast it
#: computes. Any other change is refused unless named in ``overrides``.
RESUMABLE = frozenset({"epochs", "steps", "max_minutes", "device", "threads", "eval_batch_size",
                       "out", "cuda_graphs", "world_size"})


def check_resume(out: str | os.PathLike, payload: dict, config: RunConfig,
                 data: PreparedDataset, overrides: Iterable[str] = ()) -> list[str]:
    """Refuse to resume the run saved in ``out`` (its checkpoint ``payload``) with ``config``
    and ``data`` unless the settings are the same, except those in :data:`RESUMABLE` and those
    named in ``overrides``, and the data are the same: the same classes and split (by hash),
    wherever the folder now lies. Raises :class:`~hearproto.errors.RunMismatch` naming every
    difference; returns the overridden settings that changed."""
    unknown = sorted(set(overrides) - {f.name for f in fields(config)})
    if unknown:
        raise ValueError(f"overrides: {', '.join(unknown)} are not settings of {type(config).__name__}")
    saved = type(config).from_dict(payload["config"])
    changed = [f.name for f in fields(config) if f.name not in RESUMABLE | {"root"}
               and getattr(saved, f.name) != getattr(config, f.name)]
    allowed = set(overrides)
    refused = [name for name in changed if name not in allowed]
    same_data = (payload.get("classes") == list(data.classes)
                 and (payload.get("data") or {}).get("split_hash")
                 == data_provenance(data)["split_hash"])
    if refused or not same_data:
        reasons = [f"{name}={getattr(saved, name)!r} (now {getattr(config, name)!r})"
                   for name in refused]
        if not same_data:
            reasons.append(f"other data (root {saved.root!r}, now {config.root!r}: other "
                           f"classes or another split)")
        raise RunMismatch(f"{out} holds a run with {'; '.join(reasons)}. Resume it with the "
                          "same settings, name a setting that may change in overrides, or "
                          "start a new run in another folder")
    return [name for name in changed if name in allowed]


def data_provenance(data: PreparedDataset) -> dict:
    """What a checkpoint records of its data: the split's hash, the data folder, the
    training clips' paths (to tell, on other data, which clips it has seen) and, where the
    front end was chosen from the files, why."""
    train = data.table.loc[data.table["split"] == "train", "path"]
    chosen = {"frontend_choice": data.frontend_choice} if data.frontend_choice else {}
    return {"split_hash": data.info()["split_hash"], "root": str(data.root),
            "train_paths": sorted(train), **chosen}


def training_overlap(payload: dict, clips: ClipDataset) -> int | None:
    """How many of ``clips`` the checkpoint ``payload`` was trained on (None if the checkpoint
    does not record its training clips)."""
    seen = (payload.get("data") or {}).get("train_paths")
    return None if seen is None else len(set(clips.paths) & set(seen))


#: What every checkpoint holds, ours and the baselines'.
REQUIRED_KEYS = ("format", "config", "model")


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """The dictionary in a checkpoint file, loaded with ``weights_only=True`` (no pickles).
    A missing file is a ``FileNotFoundError``; a truncated, foreign or unsafe one a
    :class:`~hearproto.errors.CheckpointError` that says which."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False, which would run the file's code: its
        # advice is not repeated
        if "Unsupported global" in str(err):
            raise CheckpointError(f"{path}: holds Python objects other than tensors and plain "
                                  "values; hearproto loads no such file (it could run code)"
                                  ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (not a file torch.save "
                              "wrote, or a damaged one)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint, or a truncated one "
                              f"({reason})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a hearproto checkpoint (no {', '.join(missing)})")
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[PrototypeModel, dict]:
    """A model and its checkpoint dictionary (loaded with ``weights_only=True``)."""
    payload = read_checkpoint(path, device)
    if payload.get("baseline"):
        raise CheckpointError(f"{path}: a {payload['baseline']} baseline, not our model; use "
                         "hearproto.baselines.trainer.load_baseline")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {payload.get('format')!r}")
    require_finite_weights(path, payload["model"])
    parametrisation = payload["config"].get("beta_parametrisation", "softplus")
    model = PrototypeModel(payload["num_prototypes"], FrontEnd(**payload["frontend"]),
                           beta_parametrisation=parametrisation)
    model.load_state_dict(payload["model"])
    return model.to(device), payload


def require_finite_weights(path: str | os.PathLike, weights: dict) -> None:
    """Refuse a model whose weights are not all finite (a diverged run's): its errors, and so
    its choices of prototype, would mean nothing."""
    bad = [name for name, value in weights.items()
           if torch.is_floating_point(value) and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(f"{path}: weights that are not finite ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}): the run diverged; retrain it with "
                         "a smaller learning rate")


def checkpoint_dataset(path: str | os.PathLike, payload: dict, config: RunConfig,
                       root: str | None = None, progress: bool = False,
                       resplit: bool = False) -> PreparedDataset:
    """The dataset a checkpoint was trained on (``root`` if it moved), with its front end.

    Refuses one whose classes differ, and one whose files or split differ from the
    checkpoint's (by the split hash): its test clips could be training clips of the
    checkpoint. With ``resplit`` such data is used with a warning (its new split; count the
    clips the checkpoint has seen with :func:`training_overlap`)."""
    data = prepare_dataset(config.dataset, root=root or config.root,
                           limit_per_class=config.limit_per_class, n_speakers=config.n_speakers,
                           frontend=FrontEnd(**payload["frontend"]), progress=progress,
                           split=getattr(config, "split", "random"))
    if data.classes != payload["classes"]:
        raise DatasetError(f"{path}: the dataset's classes differ from the checkpoint's")
    saved = (payload.get("data") or {}).get("split_hash")
    found = data_provenance(data)["split_hash"]
    if saved is not None and found != saved:
        if not resplit:
            raise DatasetError(
                f"{path} was trained on other files or another split than those in "
                f"{data.root} (split {found}, the checkpoint's {saved}): scores there could "
                "count clips it was trained on. Give the folder it was trained on, or "
                "resplit=True to score this one anyway, with the overlap reported")
        warnings.warn(f"{path}: {data.root} holds other files or another split than the "
                      "checkpoint was trained on; scoring its own split (resplit)", stacklevel=2)
    return data
