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

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from hearproto.data.dataset import clip_statistics, crop_batches, subset
from hearproto.errors import RunMismatch
from hearproto.metrics import evaluate
from hearproto.model import TRANSFORMATIONS, PrototypeModel
from hearproto.provenance import describe_device
from hearproto.training.checkpoints import (CHECKPOINT_FORMAT, data_provenance, load_checkpoint,
                                            rng_snapshot)
from hearproto.training.config import TrainConfig
from hearproto.training.curriculum import stages_for
from hearproto.training.evaluation import clip_errors, mapping_for, middle_crops
from hearproto.training.initialisation import init_prototypes
from hearproto.training.graphs import (CudaGraph, GraphedStep, float_learning_rates,
                                       set_learning_rate, use_tensor_learning_rates)
from hearproto.training.runloop import RunLoop
from hearproto.training.losses import augment, calibrated_beta, loss_from_errors

__all__ = ["Trainer", "train", "METRIC_COLUMNS", "Relabelled"]


@dataclass(frozen=True)
class _StepPlan:
    """What one training step computes; a step recorded as a CUDA graph is replayed only for
    the same plan."""

    active: frozenset[str]  # the transformations switched on
    labelled: bool  # the clips' labels (classes or held clusters) pick the prototype
    use_ce: bool  # the cross-entropy term is on
    frames: tuple[int, int] | None  # the error's time steps: (first, stride); None: all
    calibrate: bool = False  # beta is calibrated on this step's errors first

    @property
    def frame_slice(self) -> slice | None:
        return None if self.frames is None else slice(self.frames[0], None, self.frames[1])

    @property
    def only_targets(self) -> bool:
        """Supervised without cross-entropy only the label's prototype's error is needed."""
        return self.labelled and not self.use_ce


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


#: metrics.csv's columns.
METRIC_COLUMNS = ["epoch", "stage", "train_loss", "val_OA", "val_AA", "val_L_rec", "lr",
                  "active", "reassigned", "beta", "epoch_seconds", "elapsed_seconds"]


class Trainer(RunLoop):
    """Our model's run: the curriculum's stages (each saved as ``stages/STAGE.pt``), the
    unsupervised reassignment, and validation every ``val_every`` epochs, on the shared loop
    (:class:`~hearproto.training.runloop.RunLoop`)."""

    columns = tuple(METRIC_COLUMNS)
    final_reasons = ("curriculum complete",)
    #: How ``cuda_graphs`` records steps (tests substitute a CPU stand-in).
    graph_type: type | None = CudaGraph

    def __init__(self, config: TrainConfig, progress: bool = True,
                 overrides: Iterable[str] = ()) -> None:
        """``overrides``: settings that may differ from those of the run already in
        ``config.out`` when it resumes (:func:`~hearproto.training.checkpoints.check_resume`)."""
        super().__init__(config, progress, overrides, f"{config.dataset} {config.mode}")
        self.train_clips = self.data.split("train", crop_frames=None)
        self.validation_clips = subset(self.train_clips, self.config.validation_train_clips,
                                       self.config.seed)
        self.provenance = data_provenance(self.data)
        k = config.prototypes or self.train_set.num_classes
        if config.mode == "supervised" and k != self.train_set.num_classes:
            raise ValueError(f"supervised training needs one prototype per class "
                             f"({self.train_set.num_classes}), got prototypes={k}")
        self.stages = stages_for(config.mode, config.held_stages)
        self.model = PrototypeModel(k, self.data.frontend, config.beta_init,
                                    config.beta_parametrisation).to(self.device)
        self.world.replicate_(self.model)  # batch norm over the global batch, rank 0's weights
        self.optimizer = self._optimizer()
        self.held_labels: Tensor | None = None  # (N,) the initial cluster of each training clip
        self.state = _State()
        self.steps_per_epoch = max(1, len(self.train_set) // config.batch_size)
        # the step's persistent tensors: a recorded step writes into these same ones
        self._counts = torch.zeros(k, dtype=torch.int64, device=self.device)
        self._ce_weight = torch.zeros((), device=self.device)
        self._ce_weight_now: float | Tensor = 0.0  # this step's cross-entropy weight
        self._last_val_oa: tuple[int, float] | None = None  # (epoch, OA): the progress bar's
        self._graphed = GraphedStep(self._step, self.device,
                                    graph_type=self.graph_type if config.cuda_graphs else None)
        if config.cuda_graphs and not self._graphed.enabled:
            warnings.warn(f"cuda_graphs: CUDA graphs need a CUDA device; on {self.device} "
                          "every step runs eagerly", RuntimeWarning, stacklevel=2)

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

    def start(self) -> None:
        self.loader_generator.manual_seed(self.config.seed)
        clusters = None
        if self.world.main:  # decided once, then broadcast
            means, stds = clip_statistics(self.train_clips)
            labels = self.train_clips.labels.numpy() if self.config.mode == "supervised" else None
            clusters = init_prototypes(self.model, means, labels, self.config.seed,
                                       method=self.config.unsupervised_init, clip_stds=stds)
        clusters = self.world.decide(clusters)
        self.world.broadcast_([self.model.prototypes])
        if clusters is not None and self.config.held_stages:
            self.held_labels = torch.from_numpy(clusters)
        self._enter_stage(0)
        if self.config.raw_stage_steps == 0:  # the data initialisation is the raw stage
            self.save(self.checkpoint(), self.out / "stages" / f"{self.stages[0]}.pt")
            self._enter_stage(1)

    def read(self, path: Path) -> dict:
        return load_checkpoint(path, self.device)[1]

    def load(self, payload: dict, changed: list[str]) -> None:
        self._graphed.reset()
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])  # restores the saved lr too
        if "lr" in changed:  # an overridden lr: scale every group's, keeping stage factors
            ratio = self.config.lr / TrainConfig.from_dict(payload["config"]).lr
            for group in self.optimizer.param_groups:
                group["base_lr"] *= ratio
        self.state = _State(**payload["state"])
        if self.config.mode == "unsupervised" and self.config.held_stages:
            if payload.get("held_labels") is None:
                raise RunMismatch(f"{self.out}: this run was started without held_stages; "
                                  "resume it without them or start a new run elsewhere")
            self.held_labels = payload["held_labels"]

    def payload(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "num_prototypes": self.model.num_prototypes,
            "frontend": self.data.frontend.to_dict(),
            "classes": list(self.train_set.classes),
            "stage": self.stages[self.state.stage],
            "model": self.model.state_dict(),
            "optimizer": float_learning_rates(self.optimizer.state_dict()),
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
        self._graphed.reset()
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
            set_learning_rate(group, group["base_lr"] * factor)

    # -- one epoch ------------------------------------------------------------------------------

    def _epoch(self, callback: Callable[[int], None] | None) -> tuple[float, np.ndarray]:
        c, model = self.config, self.model
        model.train()
        held = self._held()
        clips = Relabelled(self.train_set, self.held_labels) if held else self.train_set
        # a last, tiny batch would skew batch norm and cost a recompilation of the fused error
        loader = crop_batches(clips, c.batch_size, self.loader_generator,
                              drop_last=len(self.train_set) > c.batch_size,
                              pin_memory=self.device.type == "cuda")
        # the clips' labels: the classes (supervised), the initial clusters (held stages), or
        # none (each clip trains the prototype that reconstructs it best)
        labelled = c.mode == "supervised" or held
        use_ce = labelled and self.state.ce_start_step >= 0  # from the cross-entropy stage on
        active = frozenset(model.active)
        graphed = self._graphed.enabled
        if graphed and use_tensor_learning_rates(self.optimizer, self.device):
            self._graphed.reset()  # the recorded steps read the learning rates given before
        # summed on the device and read once at the end: no host synchronisation per step
        # (float64, so that the epoch's loss is the same number as summed in Python)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        self._counts.zero_()
        count = 0
        world = self.world
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if c.augment:
                x = augment(x)
            # every process drew the same global batch (the same random states): each takes
            # its share, its loss weighted so that the averaged gradient is the batch's
            self._share = world.share(len(y))
            x, y = world.shard(x), world.shard(y)
            self._set_learning_rates()
            frames = None
            if c.error_stride > 1:  # a random phase each step: every frame is used in turn
                frames = (int(torch.randint(c.error_stride, ())), c.error_stride)
            plan = _StepPlan(active, labelled, use_ce, frames,
                             calibrate=use_ce and self.state.beta_pending)
            if use_ce:
                self._ce_weight_now = c.lambda_ce * self._ce_ramp()
                if graphed:  # a recorded step reads the weight from its tensor
                    self._ce_weight.fill_(self._ce_weight_now)
                    self._ce_weight_now = self._ce_weight
            if plan.calibrate:  # reads errors back to the host: never recorded
                loss = self._step(x, y, plan)
                self._graphed.reset()  # beta's optimiser state is new
            else:
                loss = self._graphed(x, y, plan)
            self.state.step += 1
            total += loss.double() * len(y)
            count += len(y)
            if callback is not None:
                callback(self.state.step)
        # the epoch's loss and choices over every process's clips
        total, count = world.sum_count(total, count)
        world.sum(self._counts)
        return float(total) / count, self._counts.cpu().numpy().copy()

    def _step(self, x: Tensor, y: Tensor, plan: _StepPlan) -> Tensor:
        """One optimiser step on clips ``x`` ``(B, T, F)`` with labels ``y`` ``(B,)``: the
        errors, the loss, backward and AdamW; returns the loss (detached). Everything it
        reads that changes from step to step is a tensor (learning rates, the cross-entropy
        weight) or in ``plan``, so that it can be recorded as a CUDA graph
        (:mod:`~hearproto.training.graphs`)."""
        c, model = self.config, self.model
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False,
                            enabled=c.bf16 and self.device.type == "cuda"):
            if plan.only_targets:
                errors = model.target_errors(x, y, c.compile, plan.frame_slice)
            else:
                errors, _ = model.errors(x, c.k_chunk, c.compile, plan.frame_slice)
        errors = errors.float()
        if plan.calibrate:  # on the global batch, decided once
            world = self.world
            batch_errors, labels = world.gather(errors.detach()), world.gather(y)
            model.set_beta(world.decide(calibrated_beta(batch_errors.cpu(), labels.cpu())
                                        if world.main else None))
            self.optimizer.state.pop(model.beta_raw, None)
            self.state.beta_pending = False
        if plan.only_targets:
            loss = errors.mean()
        else:
            loss = loss_from_errors(errors, y, "supervised" if plan.labelled else "unsupervised",
                                    model.beta, self._ce_weight_now if plan.use_ce else 0.0,
                                    plan.use_ce)
            # a scatter, not bincount: bincount on a GPU reads its input's maximum back
            winners = errors.detach().argmin(1)
            self._counts.index_add_(0, winners, torch.ones_like(winners))
        self.optimizer.zero_grad(set_to_none=True)
        self.world.backward(loss, self._share, self.model.parameters())
        self.optimizer.step()
        return loss.detach()

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
        # decided once (every process holds the same counts and seed; rank 0's word is final)
        starved, donors = self.world.decide((starved, donors))
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
        """Run or resume the curriculum; ``callback(step)`` runs after every optimiser
        step."""
        self._callback = callback
        return super().fit()

    def train_epoch(self) -> None:
        c, state = self.config, self.state
        self._loss, counts = self._epoch(self._callback)
        state.epoch += 1
        state.stage_epoch += 1
        free = c.mode == "unsupervised" and not self._held()
        self._reassigned = self._reassign(counts) if free else []
        self._stage_ends = self._stage_over()
        self._validated = self._stage_ends or state.epoch % c.val_every == 0 or state.epoch == 1
        self._val = self._validate() if self._validated else {}
        if "OA" in self._val:
            self._last_val_oa = (state.epoch, self._val["OA"])
        if self._loss < state.best_loss * (1 - 1e-4):
            state.best_loss, state.stale_epochs = self._loss, 0
        else:
            state.stale_epochs += 1

    def expected_epochs(self) -> int:
        c = self.config
        if c.stage_epochs:
            return min(c.epochs, c.stage_epochs * len(self.stages))
        if not c.stage_steps:
            return c.epochs  # stages end on patience: no telling
        limits = {"raw": c.stage_steps if c.raw_stage_steps is None else c.raw_stage_steps,
                  "ce": c.ce_stage_steps or c.stage_steps}
        steps = [limits.get(name, c.stage_steps) for name in self.stages]
        return min(c.epochs, sum(-(-n // self.steps_per_epoch) for n in steps if n))

    def postfix(self) -> dict:
        """Stage, loss, and the last validation OA measured (with its epoch where validation
        skipped this one; none before the first)."""
        shown = {"stage": self.stages[self.state.stage], "loss": f"{self._loss:.4f}"}
        if self._last_val_oa is not None:
            epoch, oa = self._last_val_oa
            shown["val_OA"] = f"{oa:.1f}" + ("" if epoch == self.state.epoch else f" (epoch {epoch})")
        return shown

    def after_epoch(self) -> None:
        c, state = self.config, self.state
        if self._stage_ends or (not c.stage_epochs and not c.stage_steps
                                and state.stale_epochs >= c.patience):
            self.save(self.checkpoint(), self.out / "stages" / f"{self.stages[state.stage]}.pt")
            if state.stage + 1 < len(self.stages):
                self._enter_stage(state.stage + 1)
            else:
                state.done, state.stop_reason = True, "curriculum complete"

    def before_save(self) -> None:
        if self.state.done and not self._validated:
            self._recalibrate_norms()  # the saved model is evaluated as it is

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

    def _recalibrate_norms(self) -> None:
        """With ``recalibrate_norms``, batch-norm statistics from the training clips."""
        c = self.config
        if not c.recalibrate_norms:
            return
        self.model.recalibrate_norms(self.world.shards(middle_crops(
            self.validation_clips, self.train_set.crop_frames, c.batch_size, c.seed, self.device)))

    def _validate(self) -> dict:
        self._recalibrate_norms()
        if len(self.val_set) == 0:
            return {}
        errors = clip_errors(self.model, self.val_set, self.config.eval_batch_size, self.device,
                             self.config.k_chunk, world=self.world)
        # unsupervised: the majority mapping of the whole training clips, as at evaluation
        mapping = mapping_for(self.model, self.config.mode, self.validation_clips, self.device,
                              self.config.eval_batch_size, world=self.world)
        return evaluate(errors.numpy(), self.val_set.labels.numpy(), mapping,
                        self.val_set.num_classes)

    def metrics_row(self, epoch_seconds: float) -> list:
        state, loss, val = self.state, self._loss, self._val
        return [state.epoch, self.stages[state.stage], f"{loss:.6f}",
                *(f"{val[k]:.4f}" if k in val else "" for k in ("OA", "AA", "L_rec")),
                f"{float(self.optimizer.param_groups[0]['lr']):.3g}",
                " ".join(sorted(self.model.active)),
                len(self._reassigned), f"{float(self.model.beta.detach()):.4g}",
                f"{epoch_seconds:.2f}", f"{state.elapsed_seconds:.1f}"]

    def summary(self) -> dict:
        return {**super().summary(), "stage": self.stages[self.state.stage]}


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

    def batch(self, indices: list[int], pin_memory: bool = False) -> tuple[Tensor, Tensor]:
        """As :meth:`hearproto.data.dataset.ClipDataset.batch`, with these labels."""
        return self.dataset.batch(indices, pin_memory)[0], self.labels[list(indices)]




def train(config: TrainConfig, progress: bool = True,
          callback: Callable[[int], None] | None = None, overrides: Iterable[str] = ()) -> dict:
    """Run (or resume) ``config``; returns a summary. ``callback(step)`` runs after every
    optimisation step; ``overrides`` names the settings that may change on resume."""
    return Trainer(config, progress, overrides).fit(callback)
