"""What defines a training run: :class:`RunConfig` (what ours and the baselines share),
:class:`TrainConfig` (our model) and the named recipes, the one place for their defaults."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

import torch

from hearproto.data.splits import heldout_source
from hearproto.errors import SettingError
from hearproto.model import BETA_PARAMETRISATIONS
from hearproto.training.initialisation import UNSUPERVISED_INITS
from hearproto.training.curriculum import stages_for

__all__ = ["MODES", "RunConfig", "RECIPES", "TrainConfig", "BASELINES", "BaselineConfig",
           "resolve_device"]

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
    split: str = "random"  # or heldout-SOURCE (hearproto.data.splits)
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
    # processes that train the run together (torchrun); recorded, like the device, not chosen
    # here: the global batch is batch_size whatever it is
    world_size: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise SettingError(name, f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes)
                                                 and self.max_minutes > 0):
            raise SettingError("max_minutes", "max_minutes must be a positive, finite number of "
                               f"minutes (or None: no time budget), got {self.max_minutes}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SettingError("lr", f"lr must be a positive, finite learning rate, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise SettingError("weight_decay", "weight_decay must be finite and at least 0, got "
                               f"{self.weight_decay}")
        if self.threads is not None and self.threads < 1:
            raise SettingError("threads", f"threads must be at least 1 (or None: torch's "
                               f"default), got {self.threads}")
        check_device_name(self.device)
        try:
            heldout_source(self.split)
        except ValueError as err:
            raise SettingError("split", str(err)) from None

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
        "recalibrate_norms": False, "held_stages": [], "validation_train_clips": None,
    },
    "default": {
        "lr": 1e-3, "batch_size": 32, "patience": 10, "stage_steps": 150,
        "raw_stage_steps": 0, "ce_stage_steps": 2700, "val_every": 4,
        "beta_init": -4.0, "beta_parametrisation": "log", "beta_calibration": True,
        "lambda_ce": 0.01, "ce_warmup": True, "ce_lr_factor": 0.3,
        "error_stride": 4, "augment": False, "unsupervised_init": "cepstral",
        "recalibrate_norms": True, "held_stages": ["gain", "pitch", "filters", "ce", "lr_decay"],
        "validation_train_clips": 2048,
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
    # the training clips that a validation reads (batch-norm statistics, an unsupervised
    # model's prototype -> class mapping): at most this many, a fixed draw of the seed; None:
    # all of them. Reading 7,000 clips made validation cost more than the epoch it follows
    validation_train_clips: int | None = RECIPES["default"]["validation_train_clips"]
    # unsupervised only: in these stages every training clip stays with the cluster that the
    # initialisation put it in (its prototype's error is the loss, as if supervised by those
    # pseudo-labels); elsewhere each clip goes to the prototype that reconstructs it best.
    # Free assignment lets the transformations' first steps scatter the clusters
    held_stages: list[str] = field(default_factory=lambda: list(RECIPES["default"]["held_stages"]))
    k_chunk: int = 8  # prototypes per chunk of the error (8 is fastest on CPU, see bench)
    compile: bool = True  # fuse the error with torch.compile in training (about 2x on CPU)
    bf16: bool = False  # autocast on CUDA
    # on CUDA, each training step recorded once as a CUDA graph and replayed (the same
    # numbers, a fraction of the launches; hearproto.training.graphs); ignored on the CPU
    cuda_graphs: bool = False

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
        if self.validation_train_clips is not None and self.validation_train_clips < 1:
            raise SettingError("validation_train_clips", "validation_train_clips must be at "
                               f"least 1 (or None: all), got {self.validation_train_clips}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be at least 1, got {self.val_every}")
        for name in ("stage_epochs", "stage_steps", "ce_stage_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None), got {value}")
        if self.prototypes is not None and self.prototypes < 2:
            raise SettingError("prototypes", "prototypes must be at least 2 (or None: one per "
                               f"class), got {self.prototypes}")
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


#: The baselines of Tables 2 and 3 (hearproto.baselines).
BASELINES = ("direct", "autoencoder", "apnet")


@dataclass
class BaselineConfig(RunConfig):
    """Everything that defines a baseline run (saved as ``config.json``)."""

    model: str = "direct"
    out: str = "runs/instruments-direct"
    epochs: int = 200
    patience: int = 20  # epochs without a better validation score
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None  # gradient-norm clipping; None: 0.5 for apnet (as its authors)
    apnet_prototypes: int = 100
    steps: int | None = None  # optimiser-step budget (whole epochs: it ends the epoch it falls in)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps is not None and self.steps < 1:
            raise SettingError("steps", f"steps must be at least 1 (or None: no step budget), "
                               f"got {self.steps}")
        if self.model not in BASELINES:
            raise ValueError(f"model must be one of {BASELINES}, got {self.model!r}")
        if self.grad_clip is None and self.model == "apnet":
            self.grad_clip = 0.5


def check_device_name(name: str) -> None:
    """Refuse a device other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(name)):
        raise SettingError("device", f"device must be cpu, cuda, cuda:N or auto, got {name!r}")


def resolve_device(name: str) -> torch.device:
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked, but torch sees no CUDA device; use 'cpu'")
    return torch.device(name)
