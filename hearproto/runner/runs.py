"""The training runs behind the experiment notebooks: one per (method, dataset, scale, seed).

Every notebook that needs, say, our supervised model on ``instruments`` at ``small`` scale with
seed 0 asks :func:`ensure_run` for it: the first asker trains it into
``runs_dir/small/instruments/ours-supervised-seed0-HASH``, later ones find it finished and
reuse it (an interrupted run resumes). ``HASH`` digests the run's settings, so a changed
setting (a new release's scale, another data folder) trains a new run instead of clashing with
the old one. What each scale means is :data:`SCALE_SETTINGS`:

* ``ci``: a few clips per class and one epoch per stage, seconds per run (notebook tests);
* ``small``: minutes per run on 2 CPU cores: a subset of each dataset and fixed, short
  schedules (every curriculum stage is reached);
* ``full``: the whole built-in datasets with the default recipe (docs/training.md), each run
  to the end of its own schedule: half an hour or so per run of our model on 2 CPU cores. The
  runs the book ships (``weights/``) are these;
* ``paper``: the paper's recipe (whole datasets, lr 1e-4, batch 128, patience 10, beta from
  softplus(-4); :data:`hearproto.training.RECIPES`), for a GPU.

A run's folder name does not depend on its budgets (epochs, minutes) nor on where it runs:
:func:`train_runs` gives each run a share of a time budget, and a later call with more time
resumes it in the same folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from hearproto.baselines.trainer import BaselineConfig, train_baseline
from hearproto.errors import RunLocked
from hearproto.files import data_home
from hearproto.runner.shipped import (ensure_unpacked, is_finished, is_unpacked, retraining,
                                      shipped_files)
from hearproto.training import RECIPES, RESUMABLE, TrainConfig, train

__all__ = ["METHODS", "SEEDED_METHODS", "HELDOUT_METHODS", "HELDOUT_SPLITS", "scale_methods", "SCALE_SETTINGS", "RunSpec", "default_runs_dir",
           "planned_runs", "run_config", "settings_digest", "holds_clusters", "ensure_run", "shipped_current", "trained_here", "uses_shipped",
           "unpack_shipped",
           "stage_checkpoint",
           "train_runs", "runs_status"]

#: Every trainable method: our model supervised, unsupervised with its held clusters as
#: targets (our recipe's) and with the paper's free assignment (Eq. 7, no cross-entropy), and
#: the three baselines.
METHODS = ("ours-supervised", "ours-unsupervised", "ours-unsupervised-free", "direct",
           "autoencoder", "apnet")

#: The methods trained for every seed; the others (the autoencoder and APNet, each about as
#: long as our model on one CPU thread) for the first seed only.
SEEDED_METHODS = ("ours-supervised", "ours-unsupervised", "ours-unsupervised-free", "direct")

#: The methods also trained on the held-out splits (the free assignment's clusters are scored
#: on the random split only).
HELDOUT_METHODS = tuple(m for m in METHODS if m != "ours-unsupervised-free")

#: Per scale: ``data`` (dataset size), ``ours`` (TrainConfig fields), and per baseline its
#: BaselineConfig fields.
SCALE_SETTINGS: dict[str, dict[str, dict]] = {
    "ci": {
        "data": {"limit_per_class": 5},  # 5: one clip per class for val and test
        "ours": {"stage_epochs": 1, "epochs": 20, "batch_size": 8, "lr": 3e-3,
                 "compile": False, "beta_init": 200.0},
        "direct": {"epochs": 1, "batch_size": 8},
        "autoencoder": {"epochs": 1, "batch_size": 8},
        "apnet": {"epochs": 1, "batch_size": 8},
    },
    "small": {
        "data": {"limit_per_class": 8},
        "ours": {"stage_epochs": 2, "epochs": 100, "batch_size": 16, "lr": 1e-3,
                 "beta_init": 200.0},
        "direct": {"epochs": 20, "patience": 1000, "batch_size": 16},
        "autoencoder": {"epochs": 4, "patience": 1000, "batch_size": 16},
        "apnet": {"epochs": 4, "patience": 1000, "batch_size": 16},
    },
    "full": {
        "data": {},
        "ours": {},  # the default recipe: stages of fixed numbers of optimiser steps
        # optimiser-step budgets, so that a larger dataset does not make a run longer (an
        # epoch of the whole instruments is 225 steps of 32 clips); metrics.csv's validation
        # curve says whether a run had converged
        "direct": {"steps": 1500, "epochs": 1000},
        "autoencoder": {"steps": 400, "epochs": 1000},
        "apnet": {"steps": 400, "epochs": 1000},
    },
    "paper": {
        "data": {},
        "ours": {"recipe": "paper"},  # the paper's recipe; budgets are TrainConfig's
        "direct": {},  # BaselineConfig's defaults
        "autoencoder": {},
        "apnet": {"lr": 1e-4},  # its authors' learning rate
    },
}


def default_runs_dir() -> Path:
    """``$HEARPROTO_RUNS``, else ``runs/`` in the data home (beside the generated data)."""
    if os.environ.get("HEARPROTO_RUNS"):
        return Path(os.environ["HEARPROTO_RUNS"]).expanduser()
    return data_home() / "runs"


#: The held-out splits each dataset is also trained on (seed 0, every method): the built-in
#: instruments hold out each lineage of banks in turn (the unseen-bank column of the tables).
HELDOUT_SPLITS: dict[str, tuple[str, ...]] = {
    "instruments": ("heldout-fluidr3", "heldout-timgm6mb", "heldout-freepats"),
}


@dataclass(frozen=True)
class RunSpec:
    method: str
    dataset: str
    seed: int
    split: str = "random"

    def __str__(self) -> str:
        split = "" if self.split == "random" else f" {self.split}"
        return f"{self.dataset} {self.method} seed {self.seed}{split}"


def planned_runs(scale: str, datasets, methods=METHODS, seeds=(0,), heldout: bool = True
                 ) -> list[RunSpec]:
    """The runs behind the book at ``scale``, in the order they are trained: every method on
    every dataset for the first seed, then the other seeds (:data:`SEEDED_METHODS` only: the
    intervals of Tables 2 and 3), then the held-out splits (:data:`HELDOUT_SPLITS`, first
    seed only, not at ``ci`` scale: one column)."""
    first, *others = seeds
    methods = [m for m in methods if m in scale_methods(scale)]
    runs = [RunSpec(m, d, first) for m in methods for d in datasets]
    runs += [RunSpec(m, d, s) for s in others for m in methods for d in datasets
             if m in SEEDED_METHODS]
    if heldout and scale != "ci":
        runs += [RunSpec(m, d, first, split) for d in datasets
                 for split in HELDOUT_SPLITS.get(d, ()) for m in methods
                 if m in HELDOUT_METHODS]
    return runs


def holds_clusters(scale: str) -> bool:
    """Whether our unsupervised run at ``scale`` holds its clusters in some stage (our
    recipe's cluster labels as targets) rather than assigning freely throughout (the paper's
    Eq. 7): the scale's ``held_stages``, else its recipe's."""
    ours = SCALE_SETTINGS[scale]["ours"]
    return bool(ours.get("held_stages", RECIPES[ours.get("recipe", "default")]["held_stages"]))


def scale_methods(scale: str) -> tuple[str, ...]:
    """The methods trained at ``scale``: all of :data:`METHODS`, less the free assignment
    where the scale's unsupervised run already assigns freely (the ``paper`` scale: its
    unsupervised run is the paper's)."""
    return tuple(m for m in METHODS
                 if holds_clusters(scale) or m != "ours-unsupervised-free")


def run_config(method: str, dataset: str, scale: str, seed: int = 0, root: str | None = None,
               device: str = "auto", runs_dir: str | os.PathLike | None = None,
               n_speakers: int | None = 128, split: str = "random"
               ) -> TrainConfig | BaselineConfig:
    """The config of ``method`` on ``dataset`` at ``scale``, writing into the shared run
    directory ``runs_dir/scale/dataset/method-seedS[-SPLIT]-HASH`` (see
    :func:`settings_digest`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if scale not in SCALE_SETTINGS:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALE_SETTINGS)}")
    settings = SCALE_SETTINGS[scale]
    common = dict(dataset=dataset, root=root, seed=seed, device=device, n_speakers=n_speakers,
                  split=split, **settings["data"])
    if method.startswith("ours-"):
        ours = dict(settings["ours"])
        if method == "ours-unsupervised-free":  # the paper's Eq. 7: no held clusters, no CE
            ours["held_stages"] = []
        mode = "supervised" if method == "ours-supervised" else "unsupervised"
        config = TrainConfig.from_recipe(ours.pop("recipe", "default"), mode=mode, **common,
                                         **ours)
    else:
        config = BaselineConfig(model=method, **common, **settings[method])
    named = "" if split == "random" else f"-{split}"
    config.out = str(Path(runs_dir or default_runs_dir()) / scale / dataset
                     / f"{method}-seed{seed}{named}-{settings_digest(config)}")
    return config


#: Settings added after runs were first named, with the value that reproduces what runs did
#: before them: at that value a setting stays out of the digest, so older runs keep their
#: folders.
LATER_SETTINGS = {"split": "random", "validation_train_clips": None}


def settings_digest(config: TrainConfig | BaselineConfig) -> str:
    """8 hex digits of what makes a run: every setting but those a run may change when it
    resumes (:data:`~hearproto.training.RESUMABLE`: its budgets, where it is written, the
    device and the thread count)."""
    values = {k: v for k, v in asdict(config).items() if k not in RESUMABLE
              and (k not in LATER_SETTINGS or v != LATER_SETTINGS[k])}
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def _run_settings(config: dict) -> dict:
    """The settings of a run's ``config`` (as a dict) that make it: all but the resumable ones,
    with :data:`LATER_SETTINGS` at their earlier value where a config predates them."""
    return {**LATER_SETTINGS, **{k: v for k, v in config.items() if k not in RESUMABLE}}


@functools.lru_cache(maxsize=32)
def _split_hash(dataset: str, root: str | None, limit_per_class: int | None,
                n_speakers: int | None, preset: str | None, split: str) -> str:
    from hearproto.data import prepare_dataset

    data = prepare_dataset(dataset, root=root, limit_per_class=limit_per_class,
                           n_speakers=n_speakers, frontend=preset, progress=False, split=split)
    return data.info()["split_hash"]


def shipped_current(config: TrainConfig | BaselineConfig) -> bool:
    """Whether ``weights/`` ships the run of ``config`` as these settings train it on the data
    here: the same settings (but budgets, device and threads) and the same files and split
    (by the split hash). Such a run need not be trained again; a run shipped from other data
    (an earlier version of a built-in dataset keeps its folder name) must be."""
    out = Path(config.out)
    _, sidecar_file = shipped_files(out, out.parent.parent.name, config.dataset)
    if not sidecar_file.is_file():
        return False
    sidecar = json.loads(sidecar_file.read_text())
    if not isinstance(sidecar.get("config"), dict):  # not a sidecar ship_run wrote
        return False
    if _run_settings(sidecar["config"]) != _run_settings(asdict(config)):
        return False
    saved = (sidecar.get("data") or {}).get("split_hash")
    return saved == _split_hash(config.dataset, config.root, config.limit_per_class,
                                config.n_speakers, config.preset, config.split)


def trained_here(out: str | os.PathLike) -> bool:
    """Whether the run folder ``out`` holds a run trained on this machine (its ``last.pt``),
    rather than one unpacked from ``weights/``."""
    out = Path(out)
    return (out / "last.pt").is_file() and not is_unpacked(out)


def uses_shipped(config: TrainConfig | BaselineConfig) -> bool:
    """Whether ``config``'s run comes from ``weights/`` instead of being trained: nothing was
    trained in its folder here, ``HEARPROTO_RETRAIN=1`` is not set, and ``weights/`` ships it
    from these settings and data (:func:`shipped_current`)."""
    return (not trained_here(config.out) and not retraining()
            and shipped_current(config))


def unpack_shipped(config: TrainConfig | BaselineConfig) -> Path | None:
    """``config``'s run folder, unpacked from ``weights/``, where :func:`uses_shipped`; else
    None."""
    if not uses_shipped(config):
        return None
    out = Path(config.out)
    ensure_unpacked(out, out.parent.parent.name, config.dataset)  # runs_dir/SCALE/DATASET/RUN
    return out


def ensure_run(config: TrainConfig | BaselineConfig, progress: bool = True) -> Path:
    """Train ``config`` unless its run directory already holds the finished run (an
    unfinished one resumes) or ``weights/`` ships it from these settings and data
    (:func:`shipped_current`; it is unpacked there, unless ``HEARPROTO_RETRAIN=1``); returns
    the run directory."""
    out = Path(config.out)
    if (shipped := unpack_shipped(config)) is not None:
        return shipped
    if is_unpacked(out):  # shipped from other data, or retraining
        shutil.rmtree(out)
    if isinstance(config, BaselineConfig):
        train_baseline(config, progress=progress)
    else:
        train(config, progress=progress)
    return Path(config.out)


def stage_checkpoint(run: str | os.PathLike, stage: str) -> Path:
    """The checkpoint saved at the end of ``stage`` of our model's run ``run``."""
    path = Path(run) / "stages" / f"{stage}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run has not finished its {stage!r} stage; "
                                "run it longer (a larger epochs or max_minutes budget)")
    return path


def _elapsed_minutes(run: Path) -> float:
    """Minutes a run folder has trained so far (0 for a new one)."""
    from hearproto.training import read_checkpoint

    last = run / "last.pt"
    return read_checkpoint(last)["state"]["elapsed_seconds"] / 60 if last.is_file() else 0.0


def train_runs(scale: str, datasets, methods=METHODS, seeds=(0,), max_minutes: float | None = None,
               device: str = "auto", threads: int | None = None, root: str | None = None,
               runs_dir: str | os.PathLike | None = None, progress: bool = True,
               report=print, shard: tuple[int, int] = (1, 1), heldout: bool = True
               ) -> list[dict]:
    """Train, or resume, the runs the experiment notebooks need at ``scale``
    (:func:`planned_runs`), within ``max_minutes`` in all (None: no limit). A run cut by the
    budget resumes, in the same folder, at the next call. ``shard=(I, N)`` trains only the
    I-th of N disjoint shares of the runs (every N-th run from the I-th), so that N processes
    or machines can share them. Processes that train the same runs at once share them too: a
    run that another process holds (its folder is locked while it trains) is skipped, so each
    process takes the next free run. A run that ``weights/`` ships from these settings and
    data (:func:`shipped_current`) is not trained again unless ``HEARPROTO_RETRAIN=1``, so
    that runs shipped on one machine are not repeated on the next. ``report`` gets one line per run; returns one summary per run
    (``done`` False for those not finished). ``root``: the data folder of a single dataset
    that is not built in."""
    index, count = shard
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: I must lie in 1..N")
    start, summaries = time.perf_counter(), []
    runs = planned_runs(scale, datasets, methods, seeds, heldout)[index - 1::count]
    for spec in runs:
        config = run_config(spec.method, spec.dataset, scale, spec.seed, root=root,
                            device=device, runs_dir=runs_dir, split=spec.split)
        config.threads = threads
        left = None if max_minutes is None else max_minutes - (time.perf_counter() - start) / 60
        name = str(spec)
        if left is not None and left <= 0:
            summaries.append({"run": name, "out": config.out, "done": False,
                              "stop_reason": "not started (budget spent)"})
            report(f"{name}: not started, the budget is spent")
            continue
        if uses_shipped(config):
            summaries.append({"run": name, "out": config.out, "done": True,
                              "stop_reason": "shipped in weights/"})
            report(f"{name}: weights/ ships it, trained on these data; not trained again "
                   "(HEARPROTO_RETRAIN=1 trains it afresh)")
            continue
        if is_unpacked(config.out):  # shipped from other data, or retraining: train afresh
            shutil.rmtree(config.out)
        if left is not None:
            config.max_minutes = _elapsed_minutes(Path(config.out)) + left
        try:
            summary = (train_baseline(config, progress=progress)
                       if isinstance(config, BaselineConfig) else train(config, progress))
        except RunLocked:  # another process trains it: take the next run
            summaries.append({"run": name, "out": config.out, "done": False,
                              "stop_reason": "in use by another process"})
            report(f"{name}: another process is training it, skipped")
            continue
        done = not summary["stop_reason"].startswith("time budget")
        summaries.append({"run": name, "done": done, **summary})
        report(f"{name}: {summary['stop_reason']}, {summary['epochs']} epochs, "
               f"{summary['minutes']} min -> {summary['out']}")
    return summaries


def runs_status(scale: str, datasets, methods=METHODS, seeds=(0,), heldout: bool = True,
                runs_dir: str | os.PathLike | None = None, root: str | None = None
                ) -> pd.DataFrame:
    """One row per planned run (:func:`planned_runs`): ``state`` (done, training now,
    stopped, not started, shipped in ``weights/`` from these data (:func:`shipped_current`),
    or unpacked from a shipped run of other data), its epochs and training minutes so
    far, why it stopped, and its folder. Reads the runs; trains and locks nothing."""
    from hearproto.training import read_checkpoint
    from hearproto.training.runloop import locked_elsewhere

    rows = []
    for spec in planned_runs(scale, datasets, methods, seeds, heldout):
        config = run_config(spec.method, spec.dataset, scale, spec.seed, root=root,
                            runs_dir=runs_dir, split=spec.split)
        out = Path(config.out)
        row = {"run": str(spec), "state": "not started", "epochs": 0, "minutes": 0.0,
               "stop reason": "", "folder": str(out)}
        if uses_shipped(config):
            # what training it took where it was trained, so that the total is every run's
            sidecar = json.loads(shipped_files(out, scale, spec.dataset)[1].read_text())
            row.update(state="shipped in weights/", epochs=len(sidecar.get("metrics") or []),
                       minutes=round(float(sidecar.get("minutes") or 0.0), 1))
        elif is_unpacked(out):
            row["state"] = "unpacked, shipped from other data"
        elif trained_here(out):
            state = read_checkpoint(out / "last.pt")["state"]
            row.update(epochs=state["epoch"], minutes=round(state["elapsed_seconds"] / 60, 1),
                       **{"stop reason": state.get("stop_reason") or ""})
            row["state"] = ("training now" if locked_elsewhere(out) else
                            "done" if is_finished(out) else "stopped")
        elif locked_elsewhere(out):
            row["state"] = "training now"
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "state", "epochs", "minutes", "stop reason",
                                       "folder"])
