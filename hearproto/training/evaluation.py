"""Scoring a model on whole clips: every prototype's error, the prototype -> class mapping,
and a checkpoint's OA, AA and L_rec on a split."""

from __future__ import annotations

import os
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from hearproto.data import PreparedDataset
from hearproto.data.dataset import ClipDataset, crop_or_tile, whole_clip_batches
from hearproto.distributed import World
from hearproto.errors import DatasetError
from hearproto.metrics import evaluate, majority_mapping, supervised_mapping
from hearproto.model import PrototypeModel
from hearproto.training.checkpoints import (checkpoint_dataset, load_checkpoint,
                                            training_overlap)
from hearproto.training.config import TrainConfig, resolve_device

__all__ = ["clip_errors", "mapping_for", "middle_crops", "evaluation_split", "scored_split",
           "evaluate_checkpoint"]

@torch.no_grad()
def clip_errors(model: PrototypeModel, dataset: ClipDataset, batch_size: int = 64,
                device: torch.device | str = "cpu", k_chunk: int = TrainConfig.k_chunk,
                world: World = World()) -> Tensor:
    """Errors ``(N, K)`` of every whole clip of ``dataset`` by every prototype; clips of the
    same length are batched together. Among several processes (``world``), each scores its
    share of the batches and every process gets all the errors."""
    model.eval()
    errors = torch.zeros(len(dataset), model.num_prototypes)
    for number, (indices, batch) in enumerate(whole_clip_batches(dataset, batch_size)):
        if world.owns(number):
            errors[torch.from_numpy(indices)] = model.errors(batch.to(device), k_chunk)[0].float().cpu()
    if world.parallel:  # each row was written by one process, zeros elsewhere: a sum joins them
        errors = world.sum(errors.to(device)).cpu()
    return errors


def mapping_for(model: PrototypeModel, mode: str, train: ClipDataset, device,
                batch_size: int, world: World = World()) -> np.ndarray:
    """Prototype -> class: k <-> k when supervised, else the majority class of the whole
    training clips each prototype reconstructs best."""
    if mode == "supervised":
        return supervised_mapping(model.num_prototypes)
    train_errors = clip_errors(model, train, batch_size, device, world=world)
    return majority_mapping(train_errors.argmin(1).numpy(), train.labels.numpy(),
                            model.num_prototypes, train.num_classes)


def middle_crops(clips: ClipDataset, crop_frames: int, batch_size: int, seed: int,
                 device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """The middle ``crop_frames`` of every clip (short clips tiled, as in training), in
    batches ``(B, crop_frames, F)`` of a fixed shuffle drawn from ``seed`` (batches of one
    class would understate batch norm's variance). Touches no global random state, so that
    a resumed run stays exact."""
    order = np.random.default_rng(seed).permutation(len(clips))
    for first in range(0, len(clips), batch_size):
        crops = []
        for i in order[first:first + batch_size]:
            frames = clips.frames(i)
            crops.append(crop_or_tile(frames, crop_frames, max(len(frames) - crop_frames, 0) // 2))
        yield torch.from_numpy(np.stack(crops).astype(np.float32)).to(device)


def evaluation_split(data: PreparedDataset, split: str) -> ClipDataset:
    """The whole clips of ``split``; a clear error if the split is empty."""
    target = data.split(split, crop_frames=None)
    if len(target) == 0:
        raise DatasetError(f"{data.name}: the {split} split is empty (a dataset this small "
                         "has no clip to spare for it); evaluate on another split")
    return target


def scored_split(path: str | os.PathLike, payload: dict, data: PreparedDataset, split: str,
                 resplit: bool) -> tuple[ClipDataset, dict]:
    """The clips of ``split`` to score a checkpoint on, and what the scores must say of them:
    with ``resplit`` (data other than the checkpoint's), ``seen_in_training``, the number of
    these clips the checkpoint was trained on (None if it does not record them), with a
    warning when it is not zero."""
    target = evaluation_split(data, split)
    if not resplit:
        return target, {}
    seen = training_overlap(payload, target)
    if seen != 0:
        count = "an unknown number" if seen is None else f"{seen} of {len(target)}"
        warnings.warn(f"{path}: {count} {split} clips in {data.root} were training clips of "
                      "this checkpoint: its scores there overstate it", stacklevel=2)
    return target, {"seen_in_training": seen}


def evaluate_checkpoint(path: str | os.PathLike, split: str = "test", device: str = "auto",
                        root: str | None = None, progress: bool = False,
                        resplit: bool = False, per_clip: bool = False) -> dict:
    """OA, AA (percent) and L_rec (x100) of a checkpoint on a split of its dataset (in
    ``root`` if it moved). Data other than the checkpoint's are refused unless ``resplit``
    (:func:`~hearproto.training.checkpoints.checkpoint_dataset`). With ``per_clip``, also
    ``per_clip``: each clip's ``predicted`` class index (-1: a prototype mapped to no class)
    and ``prototype`` (the one that reconstructs it best), in the split's order."""
    device = resolve_device(device)
    model, payload = load_checkpoint(path, device)
    config = TrainConfig.from_dict(payload["config"])
    data = checkpoint_dataset(path, payload, config, root, progress, resplit)
    target, notes = scored_split(path, payload, data, split, resplit)
    mapping = mapping_for(model, config.mode, data.split("train", crop_frames=None), device,
                          config.eval_batch_size)
    errors = clip_errors(model, target, config.eval_batch_size, device, config.k_chunk)
    scores = evaluate(errors.numpy(), target.labels.numpy(), mapping, target.num_classes)
    found = {"OA": scores["OA"], "AA": scores["AA"], "L_rec": scores["L_rec"],
             "stage": payload["stage"], "dataset": config.dataset, "mode": config.mode,
             "split": split, "clips": len(target), **notes}
    if per_clip:
        found["per_clip"] = {"predicted": scores["predictions"].tolist(),
                             "prototype": scores["assignments"].tolist()}
    return found
