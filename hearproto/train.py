"""Training: losses, the curriculum, unsupervised reassignment, checkpoints and resume.

One :class:`TrainConfig` describes a run; :func:`train` runs it into ``config.out``:

- ``config.json`` the exact configuration; ``metrics.csv`` one row per epoch;
- ``stages/STAGE.pt`` the model at the end of each curriculum stage (Table 1's rows);
- ``last.pt`` the latest state (every epoch), from which a killed run resumes exactly.

Curriculum (docs/design.md, "Training"): raw prototypes -> + gain -> + pitch -> + filters (-> + cross-entropy
when supervised) -> learning rate / 10. Under the ``paper`` recipe a stage ends when the
training loss has not improved for ``patience`` epochs; under the ``default`` recipe each stage
lasts a fixed number of optimiser steps (:data:`RECIPES`, docs/training.md). When a
transformation is switched on, the encoder and its decoder warm up linearly from ``lr * 1e-3``
to ``lr``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as nnf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hearproto.frontend import FrontEnd
from hearproto.data import PreparedDataset, prepare_dataset
from hearproto.data.dataset import ClipDataset, clip_statistics, crop_or_tile, whole_clip_batches
from hearproto.files import atomic_path
from hearproto.metrics import evaluate, majority_mapping, supervised_mapping
from hearproto.model import (BETA_PARAMETRISATIONS, TRANSFORMATIONS, UNSUPERVISED_INITS,
                             PrototypeModel, init_prototypes)
from hearproto.provenance import describe_device

__all__ = ["RECIPES", "RunConfig", "TrainConfig", "calibrated_beta", "train", "load_checkpoint",
           "clip_errors", "evaluate_checkpoint", "read_checkpoint", "save_checkpoint", "rng_snapshot",
           "restore_rng", "refuse_another_run", "data_provenance", "evaluation_split",
           "stages_for", "augment", "middle_crops"]

CHECKPOINT_FORMAT = 1
MODES = ("supervised", "unsupervised")


@dataclass
class RunConfig:
    """What every training run (ours or a baseline) shares: data, budgets, optimiser basics,
    device and seed. Subclasses add their own settings and defaults."""

    dataset: str = "instruments"
    out: str = "runs/run"
    root: str | None = None
    limit_per_class: int | None = None
    n_speakers: int | None = 128
    preset: str | None = None  # front end; default: the dataset's
    epochs: int = 1000  # budget
    max_minutes: float | None = None  # time budget, over resumes
    patience: int = 10
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-6
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def budget_spent(self, epochs_done: int, elapsed_seconds: float) -> str:
        """Why the epoch or time budget stops a run at this point, or "" while it lasts."""
        if epochs_done >= self.epochs:
            return f"epoch budget ({self.epochs})"
        if self.max_minutes is not None and elapsed_seconds >= 60 * self.max_minutes:
            return f"time budget ({self.max_minutes} min)"
        return ""

    @classmethod
    def from_dict(cls, values: dict):
        """The config from a saved ``config.json`` (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


#: Named training recipes: every setting in which ours departs from the paper's, with the
#: paper's own values kept exactly under ``paper``. docs/training.md gives the measured reason
#: for each departure.
RECIPES: dict[str, dict] = {
    "paper": {
        "lr": 1e-4, "batch_size": 128, "patience": 10, "stage_steps": None,
        "raw_stage_steps": None, "ce_stage_steps": None, "val_every": 1,
        "beta_init": -4.0, "beta_parametrisation": "softplus", "beta_calibration": False,
        "lambda_ce": 0.01, "ce_warmup": False, "ce_lr_factor": 1.0,
        "error_stride": 1, "augment": True, "unsupervised_init": "kmeans++",
        "recalibrate_norms": False, "held_stages": [],
    },
    "default": {
        "lr": 1e-3, "batch_size": 32, "patience": 10, "stage_steps": 150,
        "raw_stage_steps": 0, "ce_stage_steps": 900, "val_every": 4,
        "beta_init": -4.0, "beta_parametrisation": "log", "beta_calibration": True,
        "lambda_ce": 0.01, "ce_warmup": True, "ce_lr_factor": 0.1,
        "error_stride": 4, "augment": False, "unsupervised_init": "cepstral",
        "recalibrate_norms": True, "held_stages": ["gain", "pitch", "filters", "ce", "lr_decay"],
    },
}


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a run of our model (saved as ``config.json``). The defaults are
    the ``default`` recipe; :meth:`from_recipe` starts from another (``paper``)."""

    out: str = "runs/instruments-supervised"
    mode: str = "supervised"
    recipe: str = "default"  # the name of the recipe these settings started from
    lr: float = RECIPES["default"]["lr"]
    batch_size: int = RECIPES["default"]["batch_size"]
    prototypes: int | None = None  # default: the number of classes
    beta_init: float = -4.0  # beta = softplus(b) or exp(b), b starts here
    beta_parametrisation: str = RECIPES["default"]["beta_parametrisation"]
    # on the first cross-entropy batch, set beta to the value that minimises that batch's
    # cross-entropy (temperature scaling)
    beta_calibration: bool = RECIPES["default"]["beta_calibration"]
    beta_lr_factor: float = 5.0
    lambda_ce: float = 0.01
    warmup_epochs: float = 1.0
    stage_epochs: int | None = None  # each curriculum stage lasts exactly this many epochs
    # (fixed schedules for the quick experiment scales: every stage is reached)
    # each stage lasts this many optimiser steps (rounded up to whole epochs); None: a stage
    # ends after ``patience`` epochs without a lower training loss (the paper)
    stage_steps: int | None = RECIPES["default"]["stage_steps"]
    # the cross-entropy stage's length in steps, where discrimination is learnt (None:
    # stage_steps)
    ce_stage_steps: int | None = RECIPES["default"]["ce_stage_steps"]
    # the learning rate is multiplied by this when the cross-entropy starts (at 1e-3 the
    # first cross-entropy steps wreck the model: accuracy and L_rec both fall back)
    ce_lr_factor: float = RECIPES["default"]["ce_lr_factor"]
    # the raw stage's length in steps (None: stage_steps); 0 keeps the data initialisation
    # as it is (supervised, the class means already minimise the raw loss; unsupervised,
    # training raw prototypes drifts towards clusters of loudness)
    raw_stage_steps: int | None = RECIPES["default"]["raw_stage_steps"]
    val_every: int = RECIPES["default"]["val_every"]  # validate every this many epochs
    # (and at the first epoch and the end of each stage)
    # training errors on every error_stride-th frame (random phase each step): the encoder
    # reads every frame, the error costs 1/error_stride (evaluation uses every frame)
    error_stride: int = RECIPES["default"]["error_stride"]
    # the cross-entropy weight ramps up from 0 over warmup_epochs (a sudden, calibrated
    # cross-entropy first wrecks the reconstructions)
    ce_warmup: bool = RECIPES["default"]["ce_warmup"]
    unsupervised_init: str = RECIPES["default"]["unsupervised_init"]  # see UNSUPERVISED_INITS
    min_share: float = 0.02  # reassignment: share * K below this starves a prototype
    # the authors' augmentation (see :func:`augment`); its mel-axis stretch moves formants and
    # timbre, which is what tells the classes apart
    augment: bool = RECIPES["default"]["augment"]
    # before each validation and the last save, batch norm's running statistics are
    # recomputed on the training clips at the current weights (the lagging running averages
    # tripled the unsupervised validation error)
    recalibrate_norms: bool = RECIPES["default"]["recalibrate_norms"]
    # unsupervised only: in these stages every training clip stays with the cluster that the
    # initialisation put it in (its prototype's error is the loss, as if supervised by those
    # pseudo-labels); elsewhere each clip goes to the prototype that reconstructs it best.
    # Free assignment lets the transformations' first steps scatter the clusters
    held_stages: list[str] = field(default_factory=lambda: list(RECIPES["default"]["held_stages"]))
    k_chunk: int = 8  # prototypes per chunk of the error (8 is fastest on CPU, see bench)
    compile: bool = True  # fuse the error with torch.compile in training (about 2x on CPU)
    bf16: bool = False  # autocast on CUDA

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.beta_parametrisation not in BETA_PARAMETRISATIONS:
            raise ValueError(f"beta_parametrisation must be one of {BETA_PARAMETRISATIONS}, "
                             f"got {self.beta_parametrisation!r}")
        if self.raw_stage_steps is not None and self.raw_stage_steps < 0:
            raise ValueError(f"raw_stage_steps must be at least 0 (or None), "
                             f"got {self.raw_stage_steps}")
        if not self.ce_lr_factor > 0:
            raise ValueError(f"ce_lr_factor must be positive, got {self.ce_lr_factor}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be at least 1, got {self.val_every}")
        for name in ("stage_epochs", "stage_steps", "ce_stage_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None), got {value}")
        if self.k_chunk < 1:
            raise ValueError(f"k_chunk must be at least 1, got {self.k_chunk}")
        if self.unsupervised_init not in UNSUPERVISED_INITS:
            raise ValueError(f"unsupervised_init must be one of {UNSUPERVISED_INITS}, "
                             f"got {self.unsupervised_init!r}")
        if self.error_stride < 1:
            raise ValueError(f"error_stride must be at least 1, got {self.error_stride}")
        self.held_stages = list(self.held_stages)
        allowed = stages_for("supervised")
        unknown = [name for name in self.held_stages if name not in allowed]
        if unknown:
            raise ValueError(f"held_stages: unknown stage {unknown[0]!r}; choose from "
                             f"{', '.join(allowed)}")

    @classmethod
    def from_recipe(cls, recipe: str = "default", **changes) -> "TrainConfig":
        """The config of recipe ``recipe`` (see :data:`RECIPES`), with ``changes`` on top."""
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        return cls(**{**RECIPES[recipe], "recipe": recipe, **changes})


def stages_for(mode: str, held_stages: Iterable[str] = ()) -> list[str]:
    """The curriculum: each stage switches one thing on; ``lr_decay`` divides the lr by 10.
    The cross-entropy stage needs labels: supervised, or unsupervised with the initial
    clusters held through it (``held_stages``)."""
    ce = mode == "supervised" or "ce" in held_stages
    return ["raw", *TRANSFORMATIONS, *(["ce"] if ce else []), "lr_decay"]


# --------------------------------------------------------------------------------------------
# Losses and augmentation


def loss_from_errors(errors: Tensor, labels: Tensor, mode: str, beta: Tensor,
                     lambda_ce: float, use_ce: bool) -> Tensor:
    """Unsupervised: mean of min_k errors. Supervised: mean error of the true class's
    prototype, plus ``lambda_ce`` * cross-entropy of softmax(-beta * errors) when ``use_ce``."""
    if mode == "unsupervised":
        return errors.min(dim=1).values.mean()
    loss = errors.gather(1, labels[:, None]).mean()
    if use_ce:
        loss = loss + lambda_ce * nnf.cross_entropy(-beta * errors, labels)
    return loss


def calibrated_beta(errors: Tensor, labels: Tensor, low: float = 1e-2,
                    high: float = 1e7) -> float:
    """The inverse temperature beta in [low, high] that minimises the mean cross-entropy of
    softmax(-beta * errors) ``(N, K)`` against ``labels`` ``(N,)`` (temperature scaling; the
    loss is convex in beta)."""
    from scipy.optimize import minimize_scalar

    errors = errors.double()
    errors = errors - errors.min(dim=1, keepdim=True).values

    def loss(log_beta: float) -> float:
        return float(nnf.cross_entropy(-math.exp(log_beta) * errors, labels))

    found = minimize_scalar(loss, bounds=(math.log(low), math.log(high)), method="bounded",
                            options={"xatol": 1e-3})
    return math.exp(found.x)


def augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The authors' augmentation of a batch ``(B, T, F)``: a random stretch of the mel axis by
    exp(0.15 N), a global bias 0.05 N and per-bin noise 0.01 N."""
    batch, _, n_bins = x.shape
    options = {"generator": generator, "device": x.device}
    scale = torch.exp(0.15 * torch.randn(batch, 1, **options))
    source = torch.arange(n_bins, device=x.device, dtype=x.dtype)[None, :] / scale  # (B, F)
    source = source.clamp(0, n_bins - 1)
    low = source.floor().long().clamp(max=n_bins - 2)
    weight = (source - low)[:, None, :]
    index = low[:, None, :].expand(-1, x.shape[1], -1)
    stretched = torch.lerp(x.gather(2, index), x.gather(2, index + 1), weight)
    bias = 0.05 * torch.randn(batch, 1, 1, **options)
    return stretched + bias + 0.01 * torch.randn(x.shape, **options)


# --------------------------------------------------------------------------------------------
# Evaluation on whole clips


@torch.no_grad()
def clip_errors(model: PrototypeModel, dataset: ClipDataset, batch_size: int = 64,
                device: torch.device | str = "cpu", k_chunk: int = 8) -> Tensor:
    """Errors ``(N, K)`` of every whole clip of ``dataset`` by every prototype; clips of the
    same length are batched together."""
    model.eval()
    errors = torch.empty(len(dataset), model.num_prototypes)
    for indices, batch in whole_clip_batches(dataset, batch_size):
        errors[torch.from_numpy(indices)] = model.errors(batch.to(device), k_chunk)[0].float().cpu()
    return errors


def mapping_for(model: PrototypeModel, mode: str, train: ClipDataset, device,
                batch_size: int) -> np.ndarray:
    """Prototype -> class: k <-> k when supervised, else the majority class of the whole
    training clips each prototype reconstructs best."""
    if mode == "supervised":
        return supervised_mapping(model.num_prototypes)
    train_errors = clip_errors(model, train, batch_size, device)
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


# --------------------------------------------------------------------------------------------
# Checkpoints


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


def refuse_another_run(out: Path, saved: RunConfig, config: RunConfig,
                       names: tuple[str, ...]) -> None:
    """Raise if the run saved in ``out`` differs from ``config`` in any of ``names``."""
    for name in names:
        if getattr(saved, name) != getattr(config, name):
            raise ValueError(f"{out} holds a run with {name}={getattr(saved, name)!r}, not "
                             f"{getattr(config, name)!r}; use another --out to start a new run")


def data_provenance(data: PreparedDataset) -> dict:
    """What a checkpoint records of its data: the split's hash and the data folder."""
    return {"split_hash": data.info()["split_hash"], "root": str(data.root)}


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """The dictionary in a checkpoint file, loaded with ``weights_only=True`` (no pickles);
    clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a hearproto checkpoint ({err})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a hearproto checkpoint")
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[PrototypeModel, dict]:
    """A model and its checkpoint dictionary (loaded with ``weights_only=True``)."""
    payload = read_checkpoint(path, device)
    if payload.get("baseline"):
        raise ValueError(f"{path}: a {payload['baseline']} baseline, not our model; use "
                         "hearproto.baselines.trainer.load_baseline")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {payload.get('format')!r}")
    parametrisation = payload["config"].get("beta_parametrisation", "softplus")
    model = PrototypeModel(payload["num_prototypes"], FrontEnd(**payload["frontend"]),
                           beta_parametrisation=parametrisation)
    model.load_state_dict(payload["model"])
    return model.to(device), payload


# --------------------------------------------------------------------------------------------
# The trainer


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    stage: int = 0  # index into stages_for(mode)
    stage_epoch: int = 0  # epochs completed in this stage
    stage_start_step: int = 0  # optimiser steps done when this stage began
    ce_start_step: int = -1  # optimiser steps done when the cross-entropy stage began
    beta_pending: bool = False  # beta is to be calibrated on the next cross-entropy batch
    step: int = 0
    warm_start_step: int = 0
    warm_groups: list[str] = field(default_factory=list)
    best_loss: float = math.inf
    stale_epochs: int = 0
    elapsed_seconds: float = 0.0
    done: bool = False
    stop_reason: str = ""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, config: TrainConfig, progress: bool = True) -> None:
        self.config = config
        self.out = Path(config.out)
        self.progress = progress
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # the networks' initial weights
        self.data: PreparedDataset = prepare_dataset(
            config.dataset, root=config.root, limit_per_class=config.limit_per_class,
            n_speakers=config.n_speakers, frontend=config.preset, progress=progress)
        self.train_set = self.data.split("train")
        self.train_clips = self.data.split("train", crop_frames=None)
        self.val_set = self.data.split("val")
        self.provenance = data_provenance(self.data)
        if len(self.train_set) == 0:
            raise ValueError(f"{config.dataset}: the training split is empty")
        k = config.prototypes or self.train_set.num_classes
        if config.mode == "supervised" and k != self.train_set.num_classes:
            raise ValueError(f"supervised training needs one prototype per class "
                             f"({self.train_set.num_classes}), got --prototypes {k}")
        self.stages = stages_for(config.mode, config.held_stages)
        self.model = PrototypeModel(k, self.data.frontend, config.beta_init,
                                    config.beta_parametrisation).to(self.device)
        self.optimizer = self._optimizer()
        self.loader_generator = torch.Generator()
        self.held_labels: Tensor | None = None  # (N,) the initial cluster of each training clip
        self.state = _State()
        self.steps_per_epoch = max(1, len(self.train_set) // config.batch_size)

    # -- setup ----------------------------------------------------------------------------------

    def _optimizer(self) -> torch.optim.AdamW:
        c, model = self.config, self.model
        groups = [
            {"name": "prototypes", "params": [model.prototypes], "weight_decay": 0.0, "lr": c.lr},
            {"name": "beta", "params": [model.beta_raw], "weight_decay": 0.0,
             "lr": c.lr * c.beta_lr_factor},
            {"name": "encoder", "params": list(model.encoder.parameters()),
             "weight_decay": c.weight_decay, "lr": c.lr},
        ] + [
            {"name": name, "params": list(model.decoders[name].parameters()),
             "weight_decay": c.weight_decay, "lr": c.lr}
            for name in TRANSFORMATIONS
        ]
        for group in groups:
            group["base_lr"] = group["lr"]
        # fused: one kernel per step instead of a dozen per tensor (5x faster on 2 CPU cores)
        return torch.optim.AdamW(groups, lr=c.lr, fused=True)

    def _fresh_start(self) -> None:
        self.loader_generator.manual_seed(self.config.seed)
        means, stds = clip_statistics(self.train_clips)
        labels = self.train_clips.labels.numpy() if self.config.mode == "supervised" else None
        clusters = init_prototypes(self.model, means, labels, self.config.seed,
                                   method=self.config.unsupervised_init, clip_stds=stds)
        if clusters is not None and self.config.held_stages:
            self.held_labels = torch.from_numpy(clusters)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
        with open(self.out / "metrics.csv", "w", newline="") as handle:
            csv.writer(handle).writerow(METRIC_COLUMNS)

    def _resume(self, payload: dict) -> None:
        refuse_another_run(self.out, TrainConfig.from_dict(payload["config"]), self.config,
                           ("dataset", "mode", "seed", "prototypes", "batch_size",
                            "limit_per_class", "preset"))
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = _State(**payload["state"])
        if self.config.mode == "unsupervised" and self.config.held_stages:
            if payload.get("held_labels") is None:
                raise ValueError(f"{self.out}: this run was started without held_stages; "
                                 f"resume it without them or start a new --out")
            self.held_labels = payload["held_labels"]
        restore_rng(payload["rng"], self.loader_generator, self.device)
        truncate_metrics(self.out / "metrics.csv", self.state.epoch)
        (self.out / "config.json").write_text(json.dumps(asdict(self.config), indent=1))

    def _payload(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "num_prototypes": self.model.num_prototypes,
            "frontend": self.data.frontend.to_dict(),
            "classes": list(self.train_set.classes),
            "stage": self.stages[self.state.stage],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": asdict(self.state),
            "rng": rng_snapshot(self.loader_generator, self.device),
            "held_labels": self.held_labels,
            "data": self.provenance,
            "trained_on": describe_device(self.device),
        }

    # -- curriculum -----------------------------------------------------------------------------

    def _enter_stage(self, index: int) -> None:
        """Switch on what stage ``index`` adds."""
        name = self.stages[index]
        state = self.state
        state.stage, state.best_loss, state.stale_epochs = index, math.inf, 0
        state.stage_epoch, state.stage_start_step = 0, state.step
        if name == "ce":
            state.ce_start_step = state.step
            state.beta_pending = self.config.beta_calibration
            for group in self.optimizer.param_groups:
                group["base_lr"] *= self.config.ce_lr_factor
        if name in TRANSFORMATIONS:
            self.model.activate(name)
            state.warm_groups = ["encoder", name]
            state.warm_start_step = state.step
        elif name == "lr_decay":
            for group in self.optimizer.param_groups:
                group["base_lr"] /= 10

    def _ce_ramp(self) -> float:
        """The cross-entropy weight's factor: with ``ce_warmup``, linear from 0 to 1 over
        ``warmup_epochs`` after the cross-entropy stage starts; else 1."""
        if not self.config.ce_warmup or self.state.ce_start_step < 0:
            return 1.0
        return min(1.0, (self.state.step - self.state.ce_start_step + 1) / self._warm_steps())

    def _warm_steps(self) -> int:
        """Steps of a warm-up (``warmup_epochs`` worth, at least one)."""
        return max(1, round(self.config.warmup_epochs * self.steps_per_epoch))

    def _set_learning_rates(self) -> None:
        state = self.state
        progress = min(1.0, (state.step - state.warm_start_step) / self._warm_steps())
        warm = 1e-3 + (1 - 1e-3) * progress
        for group in self.optimizer.param_groups:
            factor = warm if group["name"] in state.warm_groups else 1.0
            group["lr"] = group["base_lr"] * factor

    # -- one epoch ------------------------------------------------------------------------------

    def _epoch(self, callback: Callable[[int], None] | None) -> tuple[float, np.ndarray]:
        c, model = self.config, self.model
        model.train()
        held = self._held()
        clips = Relabelled(self.train_set, self.held_labels) if held else self.train_set
        # a last, tiny batch would skew batch norm and cost a recompilation of the fused error
        loader = DataLoader(clips, batch_size=c.batch_size, shuffle=True,
                            generator=self.loader_generator,
                            drop_last=len(self.train_set) > c.batch_size,
                            pin_memory=self.device.type == "cuda")
        # the clips' labels: the classes (supervised), the initial clusters (held stages), or
        # none (each clip trains the prototype that reconstructs it best)
        labelled = c.mode == "supervised" or held
        use_ce = labelled and self.state.ce_start_step >= 0  # from the cross-entropy stage on
        # summed on the device and read once at the end: no host synchronisation per step
        # (float64, so that the epoch's loss is the same number as summed in Python)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        counts = torch.zeros(model.num_prototypes, dtype=torch.int64, device=self.device)
        count = 0
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if c.augment:
                x = augment(x)
            self._set_learning_rates()
            # supervised without cross-entropy, only the class prototype's error is needed
            only_targets = labelled and not use_ce
            frames = None
            if c.error_stride > 1:  # a random phase each step: every frame is used in turn
                frames = slice(int(torch.randint(c.error_stride, ())), None, c.error_stride)
            with torch.autocast("cuda", dtype=torch.bfloat16,
                                enabled=c.bf16 and self.device.type == "cuda"):
                if only_targets:
                    errors = model.target_errors(x, y, c.compile, frames)
                else:
                    errors, _ = model.errors(x, c.k_chunk, c.compile, frames)
            errors = errors.float()
            if use_ce and self.state.beta_pending:
                model.set_beta(calibrated_beta(errors.detach().cpu(), y.cpu()))
                self.optimizer.state.pop(model.beta_raw, None)
                self.state.beta_pending = False
            if only_targets:
                loss = errors.mean()
            else:
                loss = loss_from_errors(errors, y, "supervised" if labelled else "unsupervised",
                                        model.beta, c.lambda_ce * self._ce_ramp(), use_ce)
                counts += torch.bincount(errors.detach().argmin(1),
                                         minlength=model.num_prototypes)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.step += 1
            total += loss.detach().double() * len(y)
            count += len(y)
            if callback is not None:
                callback(self.state.step)
        return float(total) / count, counts.cpu().numpy()

    @torch.no_grad()
    def _reassign(self, counts: np.ndarray) -> list[int]:
        """Unsupervised: replace prototypes chosen by fewer than ``min_share`` of their fair
        share by noisy copies of prototypes drawn in proportion to their share."""
        k = self.model.num_prototypes
        share = counts / max(counts.sum(), 1)
        starved = np.flatnonzero(share * k < self.config.min_share)
        if len(starved) == 0 or len(starved) == k:
            return []
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + self.state.epoch)
        donors = torch.multinomial(torch.as_tensor(share), len(starved), replacement=True,
                                   generator=generator).tolist()
        prototypes = self.model.prototypes
        for target, donor in zip(starved.tolist(), donors):
            prototypes[target] = prototypes[donor]
            for row in (target, donor):
                prototypes[row] += 0.01 * torch.randn(prototypes.shape[1], generator=generator
                                                      ).to(prototypes.device)
            self._copy_rows(target, donor)
        return starved.tolist()

    def _copy_rows(self, target: int, donor: int) -> None:
        """Copy prototype ``donor``'s decoder head rows and optimiser state to ``target``."""
        pairs = [(self.model.prototypes, 1)]
        for decoder in self.model.decoders.values():
            pairs += [(decoder.head.weight, decoder.n_params), (decoder.head.bias, decoder.n_params)]
        for param, rows_per_prototype in pairs:
            t = slice(target * rows_per_prototype, (target + 1) * rows_per_prototype)
            d = slice(donor * rows_per_prototype, (donor + 1) * rows_per_prototype)
            if param is not self.model.prototypes:
                param.data[t] = param.data[d]
            for key, value in self.optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0:
                    value[t] = value[d]

    # -- the loop -------------------------------------------------------------------------------

    def fit(self, callback: Callable[[int], None] | None = None) -> dict:
        c = self.config
        last = self.out / "last.pt"
        if last.is_file():
            _, payload = load_checkpoint(last, self.device)
            self._resume(payload)
            if self.state.done and self._budget_left():
                self.state.done, self.state.stop_reason = False, ""  # a larger budget: go on
            if self.state.done:
                return self._summary()
        else:
            self._fresh_start()
            self._enter_stage(0)
            if c.raw_stage_steps == 0:  # the data initialisation is the raw stage
                save_checkpoint(self._payload(), self.out / "stages" / f"{self.stages[0]}.pt")
                self._enter_stage(1)
        started = time.perf_counter() - self.state.elapsed_seconds
        bar = tqdm(total=c.epochs, initial=self.state.epoch, unit="epoch",
                   desc=f"{c.dataset} {c.mode}", disable=not self.progress)
        while not self.state.done:
            epoch_start = time.perf_counter()
            loss, counts = self._epoch(callback)
            state = self.state
            state.epoch += 1
            state.stage_epoch += 1
            free = c.mode == "unsupervised" and not self._held()
            reassigned = self._reassign(counts) if free else []
            stage_ends = self._stage_over()
            validate = stage_ends or state.epoch % c.val_every == 0 or state.epoch == 1
            val = self._validate() if validate else {}
            if loss < state.best_loss * (1 - 1e-4):
                state.best_loss, state.stale_epochs = loss, 0
            else:
                state.stale_epochs += 1
            state.elapsed_seconds = time.perf_counter() - started
            self._log(loss, val, reassigned, time.perf_counter() - epoch_start)
            bar.update(1)
            bar.set_postfix(stage=self.stages[state.stage], loss=f"{loss:.4f}",
                            val_OA=f"{val.get('OA', float('nan')):.1f}")
            if stage_ends or (not c.stage_epochs and not c.stage_steps
                              and state.stale_epochs >= c.patience):
                save_checkpoint(self._payload(), self.out / "stages" / f"{self.stages[state.stage]}.pt")
                if state.stage + 1 < len(self.stages):
                    self._enter_stage(state.stage + 1)
                else:
                    state.done, state.stop_reason = True, "curriculum complete"
            spent = "" if state.done else c.budget_spent(state.epoch, state.elapsed_seconds)
            if spent:
                state.done, state.stop_reason = True, spent
            if state.done and not validate:
                self._recalibrate_norms()  # the saved model is evaluated as it is
            save_checkpoint(self._payload(), last)
        bar.close()
        return self._summary()

    def _held(self) -> bool:
        """Whether this stage keeps the clips in their initial clusters (``held_stages``,
        unsupervised)."""
        stage = self.stages[self.state.stage]
        return self.held_labels is not None and stage in self.config.held_stages

    def _stage_over(self) -> bool:
        """Whether a fixed-length stage has run its epochs or steps (patience is judged
        after the epoch's loss)."""
        c, state = self.config, self.state
        if c.stage_epochs:
            return state.stage_epoch >= c.stage_epochs
        if c.stage_steps:
            name = self.stages[state.stage]
            limit = c.stage_steps
            if name == "ce" and c.ce_stage_steps:
                limit = c.ce_stage_steps
            elif name == "raw" and c.raw_stage_steps is not None:
                limit = c.raw_stage_steps
            return state.step - state.stage_start_step >= limit
        return False

    def _budget_left(self) -> bool:
        """Whether a run stopped by its epoch or time budget may go on under this config."""
        state = self.state
        if state.stop_reason == "curriculum complete":
            return False
        return not self.config.budget_spent(state.epoch, state.elapsed_seconds)

    def _recalibrate_norms(self) -> None:
        """With ``recalibrate_norms``, batch-norm statistics from the training clips."""
        c = self.config
        if not c.recalibrate_norms:
            return
        self.model.recalibrate_norms(middle_crops(self.train_clips, self.train_set.crop_frames,
                                                  c.batch_size, c.seed, self.device))

    def _validate(self) -> dict:
        self._recalibrate_norms()
        if len(self.val_set) == 0:
            return {}
        errors = clip_errors(self.model, self.val_set, self.config.eval_batch_size, self.device,
                             self.config.k_chunk)
        # unsupervised: the majority mapping of the whole training clips, as at evaluation
        mapping = mapping_for(self.model, self.config.mode, self.train_clips, self.device,
                              self.config.eval_batch_size)
        return evaluate(errors.numpy(), self.val_set.labels.numpy(), mapping,
                        self.val_set.num_classes)

    def _log(self, loss: float, val: dict, reassigned: list[int], seconds: float) -> None:
        state = self.state
        row = [state.epoch, self.stages[state.stage], f"{loss:.6f}",
               *(f"{val[k]:.4f}" if k in val else "" for k in ("OA", "AA", "L_rec")),
               f"{self.optimizer.param_groups[0]['lr']:.3g}", " ".join(sorted(self.model.active)),
               len(reassigned), f"{float(self.model.beta.detach()):.4g}", f"{seconds:.2f}",
               f"{state.elapsed_seconds:.1f}"]
        with open(self.out / "metrics.csv", "a", newline="") as handle:
            csv.writer(handle).writerow(row)

    def _summary(self) -> dict:
        return {"out": str(self.out), "epochs": self.state.epoch,
                "stage": self.stages[self.state.stage], "stop_reason": self.state.stop_reason,
                "minutes": round(self.state.elapsed_seconds / 60, 2)}


class Relabelled(torch.utils.data.Dataset):
    """``dataset``'s clips with ``labels`` ``(N,)`` in place of its own."""

    def __init__(self, dataset: torch.utils.data.Dataset, labels: Tensor) -> None:
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} clips")
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.dataset[i][0], int(self.labels[i])


METRIC_COLUMNS = ["epoch", "stage", "train_loss", "val_OA", "val_AA", "val_L_rec", "lr",
                  "active", "reassigned", "beta", "epoch_seconds", "elapsed_seconds"]


def truncate_metrics(path: str | os.PathLike, epochs: int) -> None:
    """Drop rows logged after the checkpoint (an epoch that was interrupted and is redone)."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= epochs]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)


def train(config: TrainConfig, progress: bool = True,
          callback: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) ``config``; returns a summary. ``callback(step)`` runs after every
    optimisation step."""
    return Trainer(config, progress).fit(callback)


def checkpoint_dataset(path: str | os.PathLike, payload: dict, config: RunConfig,
                       root: str | None = None, progress: bool = False) -> PreparedDataset:
    """The dataset a checkpoint was trained on (``root`` if it moved), with its front end;
    refuses one whose classes differ."""
    data = prepare_dataset(config.dataset, root=root or config.root,
                           limit_per_class=config.limit_per_class, n_speakers=config.n_speakers,
                           frontend=FrontEnd(**payload["frontend"]), progress=progress)
    if data.classes != payload["classes"]:
        raise ValueError(f"{path}: the dataset's classes differ from the checkpoint's")
    return data


def evaluation_split(data: PreparedDataset, split: str) -> ClipDataset:
    """The whole clips of ``split``; a clear error if the split is empty."""
    target = data.split(split, crop_frames=None)
    if len(target) == 0:
        raise ValueError(f"{data.name}: the {split} split is empty (a dataset this small "
                         "has no clip to spare for it); evaluate on another split")
    return target


def evaluate_checkpoint(path: str | os.PathLike, split: str = "test", device: str = "auto",
                        root: str | None = None, progress: bool = False) -> dict:
    """OA, AA (percent) and L_rec (x100) of a checkpoint on a split of its dataset."""
    device = resolve_device(device)
    model, payload = load_checkpoint(path, device)
    config = TrainConfig.from_dict(payload["config"])
    data = checkpoint_dataset(path, payload, config, root, progress)
    target = evaluation_split(data, split)
    mapping = mapping_for(model, config.mode, data.split("train", crop_frames=None), device,
                          config.eval_batch_size)
    errors = clip_errors(model, target, config.eval_batch_size, device, config.k_chunk)
    scores = evaluate(errors.numpy(), target.labels.numpy(), mapping, target.num_classes)
    return {"OA": scores["OA"], "AA": scores["AA"], "L_rec": scores["L_rec"],
            "stage": payload["stage"], "dataset": config.dataset, "mode": config.mode,
            "split": split, "clips": len(target)}
