"""Seconds per training epoch and per validation, from a run's filters checkpoint: one epoch of
the filters stage (the class prototype's error only) and one of the cross-entropy stage (all K
errors), each after a warm-up epoch, then a validation. docs/kernels.md, "Training end to end".

    python docs/scripts/epoch_times.py /work/runs/instruments-supervised/stages/filters.pt \
        --kernel fused --threads 2

``--kernel`` fused or torch (hearproto.kernels.use_backend); run the script from a checkout of
an older commit (``git worktree add``, then ``python path/to/epoch_times.py`` there with
``--kernel none``) to time the code of that commit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time

import torch

from hearproto.training import load_checkpoint, TrainConfig, Trainer
from hearproto.training.loop import _State


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a stages/filters.pt of a supervised run")
    parser.add_argument("--kernel", default="fused", choices=["fused", "torch", "none"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, payload = load_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        fields = dict(payload["config"], out=scratch, threads=args.threads)
        trainer = Trainer(TrainConfig(**fields), progress=False)
        trainer.model.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.state = _State(**payload["state"])
        if args.kernel == "none":
            backend = contextlib.nullcontext()
        else:
            from hearproto.kernels import use_backend
            backend = use_backend(args.kernel)
        rows = []
        with backend:
            for stage in ("filters", "ce"):
                trainer._enter_stage(trainer.stages.index(stage))
                trainer._epoch(None)  # warm-up: first calls, compiling
                start = time.perf_counter()
                trainer._epoch(None)
                epoch = time.perf_counter() - start
                start = time.perf_counter()
                trainer._validate()
                rows.append({"stage": stage, "kernel": args.kernel, "threads": args.threads,
                             "steps": trainer.steps_per_epoch, "epoch_s": round(epoch, 1),
                             "validation_s": round(time.perf_counter() - start, 1)})
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
