"""Training and evaluation of the baselines of Tables 2 and 3, on the data pipeline, splits and
metrics of our model.

One :class:`BaselineConfig` describes a run; :func:`train_baseline` runs it into
``config.out``: ``config.json``, ``metrics.csv`` (one row per epoch), ``best.pt`` (the epoch
with the best validation score: OA for the classifiers, L_rec for the autoencoder; ties go
to the lower training loss) and
``last.pt`` (every epoch, from which a killed run resumes exactly). Training stops when the
validation score has not improved for ``patience`` epochs, or at the epoch or time budget.

:func:`evaluate_baseline` scores a checkpoint on a split: the classifiers (``direct``,
``apnet``) by their predictions; ``autoencoder`` and, with ``clustering=True``, ``apnet`` by
K-means on their features (K = number of classes, each cluster mapped to the majority class of
its training clips, as for our unsupervised model).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn

from hearproto.baselines.apnet import APNet
from hearproto.baselines.autoencoder import ConvAutoencoder
from hearproto.baselines.direct import DirectClassifier
from hearproto.baselines.probe import kmeans_scores
from hearproto.data.dataset import ClipDataset, crop_batches, tile_frames, whole_clip_batches
from hearproto.distributed import World
from hearproto.frontend import FrontEnd
from hearproto.metrics import accuracies
from hearproto.provenance import describe_device
from hearproto.training import checkpoint_dataset, read_checkpoint, resolve_device
from hearproto.training.evaluation import scored_split
from hearproto.training.checkpoints import (data_provenance, require_finite_weights,
                                            rng_snapshot, save_checkpoint)
from hearproto.training.config import BASELINES, BaselineConfig
from hearproto.training.runloop import RunLoop

__all__ = ["BASELINES", "BaselineConfig", "BaselineRun", "build_baseline", "train_baseline",
           "is_baseline_checkpoint", "load_baseline", "evaluate_baseline",
           "apnet_prototype_logmels"]

CHECKPOINT_FORMAT = 1
METRIC_COLUMNS = ["epoch", "train_loss", "val_OA", "val_AA", "val_L_rec", "best",
                  "epoch_seconds", "elapsed_seconds"]


def build_baseline(name: str, n_classes: int, n_mels: int, frames: int,
                   apnet_prototypes: int = 100) -> nn.Module:
    """A fresh baseline network; ``frames`` is the training crop (APNet's fixed length)."""
    if name == "direct":
        return DirectClassifier(n_classes, n_mels)
    if name == "autoencoder":
        return ConvAutoencoder(n_mels)
    if name == "apnet":
        return APNet(n_classes, n_mels, frames, n_prototypes=apnet_prototypes)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def _outputs(model: nn.Module, dataset: ClipDataset, batch_size: int, device: torch.device,
             want: tuple[str, ...], frames: int, world: World = World()) -> dict[str, Tensor]:
    """Per whole clip: ``logits`` ``(N, C)``, ``features`` ``(N, D)``, ``rec_error`` ``(N,)``
    (mean squared error of the reconstruction, over the frames the model reconstructs).
    Clips shorter than the training crop ``frames`` are tiled to it, as in training. Among
    several processes (``world``), each computes its share of the batches, and all get
    every clip's."""
    model.eval()
    parts: dict[str, list] = {name: [None] * len(dataset) for name in want}
    for number, (indices, x) in enumerate(whole_clip_batches(dataset, batch_size)):
        if not world.owns(number):
            continue
        x = tile_frames(x, frames).to(device)
        values = {}
        if "logits" in want:
            values["logits"] = model.logits(x)
        if "features" in want:
            values["features"] = model.features(x)
        if "rec_error" in want:
            target = model.fit_length(x) if hasattr(model, "fit_length") else x
            values["rec_error"] = (model.reconstruct(x) - target).square().mean(dim=(1, 2))
        for name, value in values.items():
            for row, i in zip(value.float().cpu(), indices):
                parts[name][i] = row
    if world.parallel:
        joined = world.join({(name, i): row for name, rows in parts.items()
                             for i, row in enumerate(rows) if row is not None})
        parts = {name: [joined[name, i] for i in range(len(dataset))] for name in want}
    return {name: torch.stack(rows) for name, rows in parts.items()}


def _validation(model: nn.Module, name: str, dataset: ClipDataset, batch_size: int,
                device: torch.device, frames: int, world: World = World()) -> dict[str, float]:
    want = {"direct": ("logits",), "autoencoder": ("rec_error",),
            "apnet": ("logits", "rec_error")}[name]
    out = _outputs(model, dataset, batch_size, device, want, frames, world)
    scores: dict[str, float] = {}
    if "logits" in out:
        scores.update(accuracies(dataset.labels.numpy(), out["logits"].argmax(1).numpy(),
                              dataset.num_classes))
    if "rec_error" in out:
        scores["L_rec"] = 100 * float(out["rec_error"].mean())
    return scores


# --------------------------------------------------------------------------------------------
# Training


def _checkpoint(model: nn.Module, optimizer, config: BaselineConfig, meta: dict, state: dict,
                loader_generator: torch.Generator, device: torch.device) -> dict:
    return {
        "format": CHECKPOINT_FORMAT, "baseline": config.model, "config": asdict(config), **meta,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": dict(state),
        "rng": rng_snapshot(loader_generator, device), "trained_on": describe_device(device),
    }


def _parameter_groups(model: nn.Module, lr: float) -> list[dict]:
    """The optimiser's parameter groups: the model's own (APNet's faster classifier), else
    one group at ``lr``."""
    if hasattr(model, "parameter_groups"):
        return model.parameter_groups(lr)
    return [{"params": list(model.parameters()), "lr": lr}]


APNET_INIT_CLIPS = 4  # APNet's prototypes start from this many training crops per prototype


def _training_crops(train_set: ClipDataset, count: int, generator: torch.Generator) -> Tensor:
    """``count`` (at most all) random training crops ``(count, T, F)``, drawn with
    ``generator``."""
    chosen = torch.randperm(len(train_set), generator=generator)[:count]
    return torch.stack([train_set[int(i)][0] for i in chosen])


def _init_apnet_prototypes(model: APNet, train_set: ClipDataset, seed: int,
                           device: torch.device) -> None:
    """Start APNet's prototypes from encoded training crops (k-means++), reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    clips = _training_crops(train_set, APNET_INIT_CLIPS * model.n_prototypes, generator)
    model.init_prototypes(clips.to(device), generator=generator)


@dataclass
class _State:
    epoch: int = 0
    best_score: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])
    stale_epochs: int = 0
    elapsed_seconds: float = 0.0
    done: bool = False
    stop_reason: str = ""
    steps: int = 0  # optimiser steps taken


STEP_BUDGET = "step budget"


class BaselineRun(RunLoop):
    """A baseline's run on the shared loop: an epoch of its own loss, validation, ``best.pt``
    at each better validation score, and a stop after ``patience`` epochs without one."""

    columns = tuple(METRIC_COLUMNS)
    final_reasons = ("no better validation score", STEP_BUDGET)

    def __init__(self, config: BaselineConfig, progress: bool = True,
                 overrides: Iterable[str] = ()) -> None:
        super().__init__(config, progress, overrides, f"{config.dataset} {config.model}")
        data, device = self.data, self.device
        self.frames = data.crop_frames
        self.meta = {"n_classes": self.train_set.num_classes, "frames": self.frames,
                     "frontend": data.frontend.to_dict(), "classes": list(data.classes),
                     "data": data_provenance(data)}
        self.model = build_baseline(config.model, self.train_set.num_classes,
                                    data.frontend.n_mels, self.frames,
                                    config.apnet_prototypes).to(device)
        self.world.replicate_(self.model)  # batch norm over the global batch, rank 0's weights
        self.optimizer = self._optimizer()
        self.loader_generator.manual_seed(config.seed)
        self.state = _State()

    def _optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        return torch.optim.AdamW(_parameter_groups(self.model, config.lr), lr=config.lr,
                                 weight_decay=config.weight_decay, fused=True)

    def read(self, path: Path) -> dict:
        return _load(path, self.device)

    def start(self) -> None:
        if self.config.model == "apnet":
            if self.world.main:  # decided once, then broadcast
                _init_apnet_prototypes(self.model, self.train_set, self.config.seed, self.device)
            self.world.broadcast_(self.model.state_dict().values())

    def load(self, payload: dict, changed: list[str]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])  # restores the saved lr too
        if "lr" in changed:
            fresh = _parameter_groups(self.model, self.config.lr)
            for group, new in zip(self.optimizer.param_groups, fresh):
                group["lr"] = new["lr"]
        self.state = _State(**payload["state"])
        state, steps = self.state, self.config.steps
        if state.stop_reason == STEP_BUDGET and (steps is None or state.steps < steps):
            state.done, state.stop_reason = False, ""  # a larger step budget: go on

    def payload(self) -> dict:
        return _checkpoint(self.model, self.optimizer, self.config, self.meta,
                           asdict(self.state), self.loader_generator, self.device)

    def train_epoch(self) -> None:
        config, model, state = self.config, self.model, self.state
        model.train()
        loader = crop_batches(self.train_set, config.batch_size, self.loader_generator,
                              drop_last=len(self.train_set) > config.batch_size,
                              pin_memory=self.device.type == "cuda")
        # summed on the device, read once: no host synchronisation per step (float64, the
        # same number as summed in Python)
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        world = self.world
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            share = world.share(len(y))  # every process drew the same batch: each its share
            x, y = world.shard(x), world.shard(y)
            if world.parallel and config.model == "apnet":  # its prototype term reads the batch
                loss, _ = model.loss(x, y, batch_minima=world.stack)
            else:
                loss, _ = model.loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            world.backward(loss, share, model.parameters())
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            self.optimizer.step()
            total += loss.detach().double() * len(y)
            count += len(y)
            state.steps += 1
        state.epoch += 1
        total, count = world.sum_count(total, count)
        self._loss = float(total) / count
        self._val = _validation(model, config.model, self.val_set, config.eval_batch_size,
                                self.device, self.frames, world) if len(self.val_set) else {}
        # validation OA (L_rec for the autoencoder); ties, common while a classifier is still
        # at chance, go to the lower training loss
        primary = self._val.get("OA", -self._val.get("L_rec", math.inf)) if self._val else -math.inf
        score = [primary, -self._loss]
        self._improved = score > list(state.best_score)
        if self._improved:
            state.best_score, state.stale_epochs = score, 0
        else:
            state.stale_epochs += 1

    def metrics_row(self, epoch_seconds: float) -> list:
        val = self._val
        return [self.state.epoch, f"{self._loss:.6f}",
                *(f"{val[k]:.4f}" if k in val else "" for k in ("OA", "AA", "L_rec")),
                int(self._improved), f"{epoch_seconds:.2f}", f"{self.state.elapsed_seconds:.1f}"]

    def postfix(self) -> dict:
        return {"loss": f"{self._loss:.4f}",
                **({"val_OA": f"{self._val['OA']:.1f}"} if "OA" in self._val else {})}

    def expected_epochs(self) -> int:
        if self.config.steps is None:
            return self.config.epochs
        per_epoch = max(1, len(self.train_set) // self.config.batch_size)
        return min(self.config.epochs, -(-self.config.steps // per_epoch))

    def after_epoch(self) -> None:
        state, config = self.state, self.config
        if state.stale_epochs >= config.patience:
            state.done, state.stop_reason = True, "no better validation score"
        elif config.steps is not None and state.steps >= config.steps:
            state.done, state.stop_reason = True, STEP_BUDGET

    def before_save(self) -> None:
        if self._improved:
            self.save(self.checkpoint(), self.out / "best.pt")


def train_baseline(config: BaselineConfig, progress: bool = True,
                   overrides: Iterable[str] = ()) -> dict:
    """Run (or resume, from ``out/last.pt``) a baseline; returns a summary. ``overrides``
    names the settings that may differ from the saved run's when it resumes
    (:func:`~hearproto.training.check_resume`)."""
    return BaselineRun(config, progress, overrides).fit()


# --------------------------------------------------------------------------------------------
# Loading and evaluation of a checkpoint


def _load(path: str | os.PathLike, device: torch.device | str) -> dict:
    payload = read_checkpoint(path, device)
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("baseline") not in BASELINES:
        raise ValueError(f"{path}: not a hearproto baseline checkpoint (our model's "
                         "checkpoints load with hearproto.training.load_checkpoint)")
    return payload


def is_baseline_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a baseline (rather than our model); False if unreadable."""
    try:
        return read_checkpoint(path).get("baseline") in BASELINES
    except (FileNotFoundError, ValueError):
        return False


def load_baseline(path: str | os.PathLike, device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, dict]:
    """A baseline network and its checkpoint dictionary (``weights_only=True``)."""
    payload = _load(path, device)
    require_finite_weights(path, payload["model"])
    config = BaselineConfig.from_dict(payload["config"])
    model = build_baseline(payload["baseline"], payload["n_classes"],
                           FrontEnd(**payload["frontend"]).n_mels, payload["frames"],
                           config.apnet_prototypes)
    model.load_state_dict(payload["model"])
    return model.to(device), payload


def evaluate_baseline(path: str | os.PathLike, split: str = "test", device: str = "auto",
                      root: str | None = None, clustering: bool = False,
                      progress: bool = False, resplit: bool = False,
                      per_clip: bool = False) -> dict:
    """OA, AA (percent) and L_rec (x100, None for Direct Classification) of a baseline
    checkpoint on a split. ``autoencoder`` is always scored by K-means on its features;
    ``apnet`` by its classifier, or with ``clustering`` by K-means on its similarities. Data
    other than the checkpoint's are refused unless ``resplit``, as for our model. With
    ``per_clip``, a classifier's scores also hold ``per_clip``: each clip's ``predicted``
    class index, in the split's order."""
    device = resolve_device(device)
    model, payload = load_baseline(path, device)
    name = payload["baseline"]
    config = BaselineConfig.from_dict(payload["config"])
    data = checkpoint_dataset(path, payload, config, root, progress, resplit)
    target, notes = scored_split(path, payload, data, split, resplit)
    if clustering and name == "direct":
        raise ValueError("Direct Classification has no clustering variant; evaluate it with "
                         "clustering=False")
    clustering = clustering or name == "autoencoder"
    want = ("features",) if clustering else ("logits",)
    if name != "direct":
        want += ("rec_error",)
    frames = payload["frames"]
    out = _outputs(model, target, config.eval_batch_size, device, want, frames)
    labels = target.labels.numpy()
    if clustering:
        train = data.split("train", crop_frames=None)
        train_features = _outputs(model, train, config.eval_batch_size, device, ("features",),
                                  frames)
        scores = kmeans_scores(train_features["features"].numpy(), train.labels.numpy(),
                               out["features"].numpy(), labels, target.num_classes,
                               seed=config.seed)
    else:
        predicted = out["logits"].argmax(1).numpy()
        scores = accuracies(labels, predicted, target.num_classes)
    l_rec = 100 * float(out["rec_error"].mean()) if "rec_error" in out else None
    label = {"direct": "Direct Classification", "autoencoder": "Autoencoder + K-means",
             "apnet": "APNet + K-means" if clustering else "APNet"}[name]
    found = {"OA": scores["OA"], "AA": scores["AA"], "L_rec": l_rec, "stage": "best",
             "dataset": config.dataset, "mode": "unsupervised" if clustering else "supervised",
             "model": label, "split": split, "clips": len(target), **notes}
    if per_clip and not clustering:
        found["per_clip"] = {"predicted": predicted.tolist()}
    return found


@torch.no_grad()
def apnet_prototype_logmels(path: str | os.PathLike, root: str | None = None,
                            examples: int = 64) -> tuple[Tensor, FrontEnd]:
    """APNet's latent prototypes decoded to log-Mels ``(M, frames, F)`` in [0, 1], playable
    with :func:`hearproto.audio.mel_to_audio`, and the front end they belong to. The
    decoder's unpooling masks come from the nearest of ``examples`` training crops (see
    :meth:`APNet.decode_prototypes`)."""
    model, payload = load_baseline(path)
    if payload["baseline"] != "apnet":
        raise ValueError(f"{path}: a {payload['baseline']} baseline has no prototypes to play "
                         "(APNet and our model have)")
    config = BaselineConfig.from_dict(payload["config"])
    data = checkpoint_dataset(path, payload, config, root)
    clips = _training_crops(data.split("train"), examples,
                            torch.Generator().manual_seed(config.seed))
    model.eval()
    return model.decode_prototypes(masks_from=clips), data.frontend
