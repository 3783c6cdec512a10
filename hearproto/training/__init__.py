"""Training our model: configurations and recipes (:mod:`~hearproto.training.config`), the
curriculum, the losses, checkpoints and strict resume, evaluation on whole clips, and the
training loop (:mod:`~hearproto.training.loop`). The names below are the public API."""

from hearproto.training.checkpoints import (RESUMABLE, check_resume, checkpoint_dataset,
                                            load_checkpoint, read_checkpoint)
from hearproto.training.config import MODES, RECIPES, RunConfig, TrainConfig, resolve_device
from hearproto.training.curriculum import stages_for
from hearproto.training.evaluation import clip_errors, evaluate_checkpoint, evaluation_split
from hearproto.training.loop import Trainer, train

__all__ = ["MODES", "RECIPES", "RESUMABLE", "RunConfig", "TrainConfig", "Trainer", "train",
           "check_resume", "checkpoint_dataset", "clip_errors", "evaluate_checkpoint",
           "evaluation_split", "load_checkpoint", "read_checkpoint", "resolve_device",
           "stages_for"]
