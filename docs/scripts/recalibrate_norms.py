"""Recompute the batch-norm statistics of checkpoints trained before ``recalibrate_norms``
existed, as the default recipe now does before each validation and the last save.

    python docs/scripts/recalibrate_norms.py RUN/last.pt RUN/stages/*.pt

Only the running means and variances change; weights, optimiser and training state stay as
they were, so the result equals what a run of the same commit with the setting on would have
saved (training normalises with each batch's own statistics and never reads the running
ones). Each file is rewritten atomically; a checkpoint whose config already has the setting
on is left alone.
"""

from __future__ import annotations

import argparse

from hearproto.training import checkpoint_dataset, load_checkpoint, TrainConfig
from hearproto.training.checkpoints import save_checkpoint
from hearproto.training.evaluation import middle_crops


def recalibrate(path: str) -> str:
    model, payload = load_checkpoint(path)
    config = TrainConfig.from_dict(payload["config"])
    if payload["config"].get("recalibrate_norms"):
        return f"{path}: already recalibrated when trained; left alone"
    data = checkpoint_dataset(path, payload, config)
    model.recalibrate_norms(middle_crops(data.split("train", crop_frames=None),
                                         data.crop_frames, config.batch_size, config.seed))
    payload["model"] = model.state_dict()
    save_checkpoint(payload, path)
    return f"{path}: batch-norm statistics recomputed"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    for checkpoint in parser.parse_args().checkpoints:
        print(recalibrate(checkpoint))
