"""The loop every training run shares, ours and the baselines': a run folder, a fresh start or
an exact and strict resume, epochs until the run's own rule or its budget stops it.

A run folder holds ``config.json`` (the effective settings), ``metrics.csv`` (one row per
epoch) and ``last.pt`` (the latest state, every random state and the metrics included), from
which a killed run resumes exactly. Every file is written atomically, and ``metrics.csv`` is
rewritten from the checkpoint's rows on resume, so a kill at any point (even inside a write)
loses at most the epoch in progress. A subclass says what an epoch is and when the run is
over; the loop owns the folder, the budgets, the metrics file, the checkpoint and the
progress bar.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from hearproto.data import prepare_dataset
from hearproto.distributed import join_world
from hearproto.errors import (CheckpointError, DatasetError, RunLocked, SettingError,
                              TrainingDiverged)
from hearproto.files import atomic_path
from hearproto.frontend import FrontEnd
from hearproto.memory import retain_freed_memory
from hearproto.provenance import git_commit
from hearproto.training.checkpoints import check_resume, restore_rng, save_checkpoint
from hearproto.training.config import RunConfig, resolve_device

__all__ = ["RunLoop", "exclusive"]


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (``folder/.lock``, an fcntl lock holding the owner's pid) while
    the block runs; raise :class:`~hearproto.errors.RunLocked`, naming the holder, if another
    process holds it. The lock goes with its process, so a crashed run leaves none behind."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunLocked(f"{folder} is in use by another run (pid {holder}); wait for it to "
                        "finish, or train into another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def locked_elsewhere(folder: Path) -> bool:
    """Whether another process holds ``folder``'s lock (:func:`exclusive`) right now."""
    lock = Path(folder) / ".lock"
    if not lock.is_file():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class RunLoop:
    """Subclasses set :attr:`columns` and :attr:`final_reasons`, hold ``self.state`` (a
    dataclass with at least ``epoch``, ``elapsed_seconds``, ``done`` and ``stop_reason``) and
    ``self.loader_generator``, and implement the hooks below."""

    #: metrics.csv's header.
    columns: tuple[str, ...] = ()
    #: Stop reasons after which a larger budget does not make a finished run go on.
    final_reasons: tuple[str, ...] = ()

    def __init__(self, config: RunConfig, progress: bool, overrides: Iterable[str],
                 description: str) -> None:
        """The device, threads and seed of ``config``, and its data: ``self.data``,
        ``self.train_set`` and ``self.val_set`` (training crops)."""
        self.world, self.device = join_world(resolve_device(config.device))
        world = self.world
        config.world_size = world.size
        if world.parallel and getattr(config, "cuda_graphs", False):
            raise SettingError("cuda_graphs", "cuda_graphs: a recorded step cannot hold the "
                               "all-reduces of a run over several processes; train without it")
        self.config, self.progress = config, progress and world.main
        if config.threads:
            torch.set_num_threads(config.threads)
        elif world.parallel and self.device.type == "cpu":  # the processes share the cores
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        if self.device.type == "cpu":
            retain_freed_memory()
        torch.manual_seed(config.seed)  # the networks' initial weights
        if not world.main:
            world.barrier()  # rank 0 prepares the data (and writes the cache) first
        self.data = data = prepare_dataset(
            config.dataset, root=config.root, limit_per_class=config.limit_per_class,
            n_speakers=config.n_speakers, frontend=self._resumed_frontend(config),
            progress=self.progress, split=config.split)
        if world.main:
            world.barrier()
        if len(data.classes) < 2:
            raise DatasetError(f"{config.dataset} ({data.root}) has one class "
                               f"({', '.join(map(str, data.classes))}): identification needs "
                               "two or more")
        self.train_set, self.val_set = data.split("train"), data.split("val")
        if len(self.train_set) == 0:
            raise DatasetError(f"{config.dataset}: the training split is empty")
        self.out = Path(config.out)
        self.overrides = tuple(overrides)
        self.description = description
        self.loader_generator = torch.Generator()

    @staticmethod
    def _resumed_frontend(config: RunConfig) -> FrontEnd | str | None:
        """``config.preset``; without one, the front end a run being resumed began with (a
        local dataset's is chosen from its files, and the rule may have changed since)."""
        last = Path(config.out) / "last.pt"
        if config.preset is not None or not last.is_file():
            return config.preset
        from hearproto.training.checkpoints import read_checkpoint

        try:
            saved = read_checkpoint(last).get("frontend")
        except (OSError, CheckpointError):
            return None  # the loop names what is wrong with last.pt
        return FrontEnd(**saved) if saved else None

    # -- hooks ----------------------------------------------------------------------------------

    def read(self, path: Path) -> dict:
        """The checkpoint dictionary in ``path``."""
        raise NotImplementedError

    def start(self) -> None:
        """Initialise a fresh run (the folder exists)."""
        raise NotImplementedError

    def load(self, payload: dict, changed: list[str]) -> None:
        """Take the model, optimiser and state from ``payload``; ``changed`` are the settings
        that differ from the saved run's by an override."""
        raise NotImplementedError

    def payload(self) -> dict:
        """Everything a checkpoint holds (the random states included); the loop adds the
        metrics (:meth:`checkpoint`)."""
        raise NotImplementedError

    def train_epoch(self) -> None:
        """One epoch: train, count it in ``state.epoch``, validate when due."""
        raise NotImplementedError

    def metrics_row(self, epoch_seconds: float) -> list:
        """The epoch's row of metrics.csv (``state.elapsed_seconds`` is up to date)."""
        raise NotImplementedError

    def epoch_loss(self) -> float:
        """The epoch's mean training loss (a run stops when it is not finite)."""
        return float(self._loss)

    def postfix(self) -> dict:
        """What the progress bar shows after the epoch."""
        return {}

    def expected_epochs(self) -> int:
        """How many epochs the run should take, for the progress bar: its epoch budget unless
        its own schedule is shorter."""
        return self.config.epochs

    def after_epoch(self) -> None:
        """The run's own rules after the epoch is logged: may set ``state.done``."""

    def before_save(self) -> None:
        """Last changes before ``last.pt`` is written (the budget has been checked)."""

    def summary(self) -> dict:
        state = self.state
        among = {"rank": self.world.rank, "world_size": self.world.size} if self.world.parallel else {}
        return {"out": str(self.out), "epochs": state.epoch, "stop_reason": state.stop_reason,
                "minutes": round(state.elapsed_seconds / 60, 2), **among}

    # -- the loop -------------------------------------------------------------------------------

    def checkpoint(self) -> dict:
        """:meth:`payload` with the metrics rows so far and the commits of the code that
        trained it: what every checkpoint file holds."""
        return {**self.payload(), "metrics": [list(row) for row in self.metrics],
                "commits": list(self.commits)}

    def _write_metrics(self) -> None:
        if not self.world.main:
            return
        with atomic_path(self.out / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as handle:
                csv.writer(handle).writerows([list(self.columns), *self.metrics])

    def _read_last(self, last: Path) -> dict:
        try:
            return self.read(last)
        except CheckpointError as err:
            stages = sorted((self.out / "stages").glob("*.pt"), key=lambda p: p.stat().st_mtime)
            from_stage = (f", or resume from the last stage saved: copy {stages[-1]} to {last}"
                          if stages else "")
            raise CheckpointError(f"{err}. To recover: start afresh (delete {last}, or train "
                                  f"into another folder){from_stage}") from None

    def fit(self) -> dict:
        """Run, or resume from ``out/last.pt``, until done; returns :meth:`summary`. The run
        folder is locked meanwhile (:func:`exclusive`); among several processes, rank 0
        alone locks and writes it."""
        with exclusive(self.out) if self.world.main else nullcontext():
            if not self.world.parallel:
                return self._fit()
            try:
                return self._fit()
            except RuntimeError as err:  # a collective that failed: say what to do, once
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise RuntimeError(
                    f"{self.out}: process {self.world.rank} of {self.world.size} stopped: "
                    f"{first}. If another process of the run died, run the same command again: "
                    "it resumes from the last epoch saved") from err

    def save(self, payload: dict, path: Path) -> None:
        """Write checkpoint ``payload`` to ``path`` (rank 0 only)."""
        if self.world.main:
            save_checkpoint(payload, path)

    def _fit(self) -> dict:
        config, last = self.config, self.out / "last.pt"
        commit = git_commit()
        if self.world.main:
            _remove_stale_writes(self.out)
        if last.is_file():
            payload = self._read_last(last)
            if payload.get("shipped"):
                raise CheckpointError(
                    f"{self.out} holds a shipped run (unpacked from weights/): it can be "
                    "evaluated, played and explored, not trained further. Train into another "
                    "folder, or retrain the book's runs (hearproto experiments train)")
            changed = check_resume(self.out, payload, config, self.data, self.overrides)
            self.load(payload, changed)
            restore_rng(payload["rng"], self.loader_generator, self.device)
            self.metrics = _saved_metrics(payload, self.out / "metrics.csv", self.state.epoch)
            self._write_metrics()
            self.commits = list(payload.get("commits") or [])
            if not self.commits or self.commits[-1] != commit:
                self.commits.append(commit)  # the code that trains from here on
            state = self.state
            if (state.done and state.stop_reason not in self.final_reasons
                    and not config.budget_spent(state.epoch, state.elapsed_seconds)):
                state.done, state.stop_reason = False, ""  # a larger budget: go on
        else:
            if self.world.main:
                self.out.mkdir(parents=True, exist_ok=True)
            self.metrics, self.commits = [], [commit]
            self._write_metrics()
            self.start()
        if self.world.main:
            with atomic_path(self.out / "config.json") as tmp:
                tmp.write_text(json.dumps(asdict(config), indent=1))
        state = self.state
        started = time.perf_counter() - state.elapsed_seconds
        bar = tqdm(total=self.expected_epochs(), initial=state.epoch, unit="epoch",
                   desc=self.description, disable=not self.progress or state.done)
        while not state.done:
            epoch_start = time.perf_counter()
            self.train_epoch()
            if not math.isfinite(self.epoch_loss()):
                bar.close()
                kept = (f"last.pt keeps epoch {state.epoch - 1}, the last finite one"
                        if last.is_file() else "nothing was saved")
                raise TrainingDiverged(
                    f"{self.out}: the training loss became {self.epoch_loss()} in epoch "
                    f"{state.epoch}; {kept}. Try a smaller learning rate (lr={config.lr:g})")
            # rank 0's clock, so that a time budget stops every process after the same epoch
            state.elapsed_seconds = self.world.decide(time.perf_counter() - started)
            self.metrics.append(self.metrics_row(time.perf_counter() - epoch_start))
            self._write_metrics()
            bar.update(1)
            bar.set_postfix(**self.postfix())
            self.after_epoch()
            spent = "" if state.done else config.budget_spent(state.epoch, state.elapsed_seconds)
            if spent:
                state.done, state.stop_reason = True, spent
            self.before_save()
            self.save(self.checkpoint(), last)
        bar.close()
        return self.summary()


def _remove_stale_writes(out: Path) -> None:
    """Remove the temporary files of writes a killed run left in ``out`` (the caller holds
    its lock, so no write is under way)."""
    for pattern in (".last-*.pt", ".best-*.pt", ".metrics-*.csv", ".config-*.json",
                    "stages/.*-*.pt"):
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


def _saved_metrics(payload: dict, csv_path: Path, epochs: int) -> list[list]:
    """The metrics rows of the first ``epochs`` epochs: the checkpoint's, or, for a checkpoint
    that predates them, those of ``metrics.csv`` (empty if it is missing or damaged)."""
    if payload.get("metrics") is not None:
        return [list(row) for row in payload["metrics"]]
    try:
        with open(csv_path, newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        return [row for row in rows if row and int(row[0]) <= epochs]
    except (OSError, ValueError):
        return []
