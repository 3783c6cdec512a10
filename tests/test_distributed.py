"""Data-parallel training (gloo, two processes on the CPU): the same computation as one
process at the same global batch, one set of files, a clear stop and an exact resume."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import multiprocessing, nn

from hearproto.distributed import (SyncedBatchNorm, World, average_gradients, leave_world,
                                   synchronise_norms)
from hearproto.baselines.trainer import BaselineConfig, BaselineRun
from hearproto.training import TrainConfig, Trainer, read_checkpoint

pytestmark = pytest.mark.usefixtures("data_home")

STAGES = ("raw", "gain", "pitch", "filters", "ce", "lr_decay")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, size: int, port: int, target, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    try:
        target(rank, *args)
    finally:
        leave_world()


def run_ranks(target, *args, size: int = 2) -> None:
    """``target(rank, *args)`` in ``size`` processes joined as torchrun joins them."""
    multiprocessing.start_processes(_rank_entry, args=(size, _free_port(), target, args),
                                    nprocs=size, start_method="spawn")


# -- batch norm over processes ----------------------------------------------------------------


def _norm_on_shards(rank: int, x: torch.Tensor, grad: torch.Tensor, out: Path) -> None:
    from hearproto.distributed import join_world

    world, _ = join_world(torch.device("cpu"))
    norm = synchronise_norms(nn.Sequential(nn.BatchNorm2d(x.shape[1])))[0]
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, x.shape[1]))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, x.shape[1]))
    share = world.shard(x).clone().requires_grad_()
    y = norm(share)
    # the loss of the whole batch is the mean over it: each share weighted by its size
    (y * world.shard(grad)).sum().mul(world.size / len(x)).backward()
    average_gradients(norm.parameters(), world)
    torch.save({"y": y.detach(), "dx": share.grad, "dw": norm.weight.grad, "db": norm.bias.grad,
                "mean": norm.running_mean, "var": norm.running_var}, out / f"rank{rank}.pt")


def test_synced_batch_norm_is_batch_norm_of_the_whole_batch(tmp_path):
    """Two processes with 3 and 2 clips of a batch of 5: the outputs, input and parameter
    gradients and running statistics of batch norm over the 5."""
    generator = torch.Generator().manual_seed(0)
    x = 3 + 2 * torch.randn(5, 4, 6, 7, generator=generator, dtype=torch.float64).float()
    grad = torch.randn(5, 4, 6, 7, generator=generator)
    run_ranks(_norm_on_shards, x, grad, tmp_path)

    norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 4))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    whole = x.clone().requires_grad_()
    y = norm(whole)
    (y * grad).sum().div(len(x)).backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [len(r["y"]) for r in ranks] == [3, 2]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
    # each process's input gradient is that of the sum of the processes' losses (as in
    # DistributedDataParallel): twice the whole batch's, until the parameters' gradients are
    # averaged over the two
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]) / 2, whole.grad, atol=1e-6,
                               rtol=1e-4)
    for r in ranks:  # every process holds the same, averaged, gradients and statistics
        torch.testing.assert_close(r["dw"], norm.weight.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(r["db"], norm.bias.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(r["mean"], norm.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r["var"], norm.running_var, atol=1e-6, rtol=1e-5)


def test_a_synced_norm_alone_is_plain_batch_norm():
    x = torch.randn(6, 3, 10)
    plain = nn.BatchNorm1d(3)
    synced = synchronise_norms(nn.Sequential(nn.BatchNorm1d(3)))[0]
    assert isinstance(synced, SyncedBatchNorm)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)
    assert set(synced.state_dict()) == set(plain.state_dict())  # checkpoints move across


def test_a_world_of_one_changes_nothing():
    world = World()
    x = torch.arange(10.0)
    assert world.shard(x) is x and world.share(10) == 1.0 and world.decide(3) == 3
    assert World(1, 3).shard(x).tolist() == [4.0, 5.0, 6.0] and World(1, 3).share(10) == 0.9


# -- training ---------------------------------------------------------------------------------


class _RecordingSgd(torch.optim.SGD):
    """SGD that keeps every step's gradients (after the all-reduce)."""

    def __init__(self, groups: list[dict], lr: float) -> None:
        super().__init__(groups, lr=lr)
        self.record: list[list[torch.Tensor | None]] = []

    def step(self, closure=None):
        self.record.append([None if p.grad is None else p.grad.clone()
                            for group in self.param_groups for p in group["params"]])
        return super().step(closure)


class _SgdTrainer(Trainer):
    """Plain SGD in place of AdamW, recording its gradients: each step's gradient is then
    compared as it is. (AdamW's first steps are lr times the gradient's sign, so a gradient
    that is zero but for rounding moves a parameter by lr one way or the other, in one
    process as in two: docs/design.md.)"""

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = [{"name": g["name"], "params": g["params"], "lr": g["lr"],
                   "base_lr": g["base_lr"], "weight_decay": 0.0}
                  for g in super()._optimizer().param_groups]
        return _RecordingSgd(groups, lr=self.config.lr)


def _config(root: Path, out: Path, **changes) -> TrainConfig:
    values = dict(dataset="folder", root=str(root), out=str(out), preset="speakers",
                  compile=False, batch_size=8, k_chunk=2, seed=0, eval_batch_size=8,
                  threads=1, stage_steps=2, raw_stage_steps=2, ce_stage_steps=4, val_every=1,
                  validation_train_clips=None, error_stride=2)
    values.update(changes)
    return TrainConfig.from_recipe("default", **values)


def _train_sgd(rank: int, config: TrainConfig, record: Path) -> None:
    trainer = _SgdTrainer(config, progress=False)
    trainer.fit()
    torch.save(trainer.optimizer.record, record / f"gradients-{rank}.pt")


def _assert_same_gradients(alone: list, ranks: list[list], label: str) -> None:
    """Each step's gradients: the same on every process, and those of one process."""
    # measured: the whole step at most 1.7e-4 apart (relative), one parameter's 4.3e-2 (a
    # gradient that is mostly cancellation); batch norm on each share instead of the whole
    # batch puts them 0.66-1.0 and 3-4 apart. A parameter whose gradient is below 1e-6 of the
    # step's (a bias before a batch norm: zero but for rounding) is rounding on both sides.
    assert len(alone) == len(ranks[0]) == len(ranks[1])
    for step, (a, b, c) in enumerate(zip(alone, *ranks)):
        assert [g is None for g in a] == [g is None for g in b]  # switched on alike
        present = [i for i, g in enumerate(a) if g is not None]
        for i in present:
            torch.testing.assert_close(b[i], c[i], rtol=0, atol=0)  # the same on every process
        whole_a = torch.cat([a[i].reshape(-1) for i in present])
        whole_b = torch.cat([b[i].reshape(-1) for i in present])
        apart = float((whole_a - whole_b).norm() / whole_a.norm())
        assert apart <= 1e-3, f"{label}, step {step + 1}: the gradients {apart:.1e} apart"
        for i in present:
            size = float(a[i].norm())
            if size > 1e-6 * float(whole_a.norm()):
                apart = float((a[i] - b[i]).norm()) / size
                assert apart <= 0.1, f"{label}, step {step + 1}, parameter {i}: {apart:.1e} apart"


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_two_processes_train_as_one_at_the_same_global_batch(tones, tmp_path, mode, monkeypatch):
    """Every step's gradients, through each stage of the curriculum (gain, pitch, filters,
    the cross-entropy with beta calibrated on the global batch, the lr decay) and,
    unsupervised, the free assignment with prototypes reassigned after every epoch; then the
    parameters, losses, choices and files."""
    changes = {} if mode == "supervised" else dict(mode="unsupervised", held_stages=[],
                                                  prototypes=4, min_share=0.9,
                                                  unsupervised_init="kmeans++")
    # the processes of a run normalise the encoder's first level unfused (their batch norm
    # needs each other's statistics); one process does so too here, so that the comparison is
    # of the data parallelism alone (the fused kernel is checked against the unfused one in
    # test_encoder_kernel.py; in a free assignment, its rounding can flip a clip between two
    # near-equal prototypes)
    monkeypatch.setenv("HEARPROTO_KERNEL", "torch")
    one, two = tmp_path / "one", tmp_path / "two"
    _train_sgd(0, _config(tones, one, **changes), one)
    run_ranks(_train_sgd, _config(tones, two, **changes), two)
    alone = torch.load(one / "gradients-0.pt")
    ranks = [torch.load(two / f"gradients-{r}.pt") for r in range(2)]
    epochs = 7 if mode == "supervised" else 5  # unsupervised and free: no cross-entropy stage
    assert len(alone) == len(ranks[0]) == len(ranks[1]) == epochs * 2  # 2 steps an epoch
    _assert_same_gradients(alone, ranks, mode)
    a, b = read_checkpoint(one / "last.pt")["model"], read_checkpoint(two / "last.pt")["model"]
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=1e-4, atol=1e-6, msg=name)
    rows = [(p / "metrics.csv").read_text().splitlines() for p in (one, two)]
    assert len(rows[0]) == len(rows[1]) == 1 + epochs
    for row_a, row_b in zip(rows[0][1:], rows[1][1:]):
        row_a, row_b = row_a.split(","), row_b.split(",")
        assert row_a[1] == row_b[1] and row_a[3] == row_b[3] and row_a[8] == row_b[8]  # stage, val_OA, reassigned
        assert float(row_a[2]) == pytest.approx(float(row_b[2]), rel=1e-4)  # the epoch's loss
        assert float(row_a[9]) == pytest.approx(float(row_b[9]), rel=1e-4)  # beta
    if mode == "unsupervised":
        assert sum(int(row.split(",")[8]) for row in rows[0][1:]) > 0  # reassignment ran
    else:
        assert float(rows[0][-1].split(",")[9]) > 1  # beta was calibrated
    assert read_checkpoint(two / "last.pt")["config"]["world_size"] == 2
    assert sorted(p.name for p in two.iterdir()) == [".lock", "config.json", "gradients-0.pt",
                                                       "gradients-1.pt", "last.pt",
                                                       "metrics.csv", "stages"]


class _SgdBaseline(BaselineRun):
    """A baseline's run with :class:`_RecordingSgd` in place of AdamW."""

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": g["params"], "lr": g["lr"]} for g in super()._optimizer().param_groups]
        return _RecordingSgd(groups, lr=self.config.lr)


def _train_baseline_sgd(rank: int, config: BaselineConfig, record: Path) -> None:
    run = _SgdBaseline(config, progress=False)
    run.fit()
    torch.save(run.optimizer.record, record / f"gradients-{rank}.pt")


@pytest.mark.parametrize("model", ["direct", "autoencoder", "apnet"])
def test_the_baselines_train_in_two_processes_as_in_one(tones, tmp_path, model):
    """Direct Classification (batch norm), the autoencoder, and APNet, whose prototype loss
    reads each prototype's nearest clip of the whole batch and whose prototypes start from
    rank 0's clustering."""
    config = dict(model=model, dataset="folder", root=str(tones), preset="speakers",
                  batch_size=8, epochs=3, threads=1, seed=0, eval_batch_size=8, lr=1e-4,
                  apnet_prototypes=6)
    one, two = tmp_path / "one", tmp_path / "two"
    _train_baseline_sgd(0, BaselineConfig(out=str(one), **config), one)
    run_ranks(_train_baseline_sgd, BaselineConfig(out=str(two), **config), two)
    alone = torch.load(one / "gradients-0.pt")
    ranks = [torch.load(two / f"gradients-{r}.pt") for r in range(2)]
    assert len(alone) == len(ranks[0]) == 3 * 2
    if model == "direct":
        # Direct Classification's gradient moves by 2e-3 (relative) when its input moves by
        # 1e-7, or from float32 to float64 (batch norm of a few clips after a max over
        # time): one process and two agree on the first step (1.4e-4), then part as two
        # runs of one process on different rounding would
        _assert_same_gradients(alone[:1], [r[:1] for r in ranks], model)
        return
    _assert_same_gradients(alone, ranks, model)
    a, b = read_checkpoint(one / "last.pt"), read_checkpoint(two / "last.pt")
    for name, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][name], rtol=1e-4, atol=1e-6, msg=name)
    rows = [(p / "metrics.csv").read_text().splitlines()[1:] for p in (one, two)]
    for row_a, row_b in zip(*rows):
        row_a, row_b = row_a.split(","), row_b.split(",")
        assert float(row_a[1]) == pytest.approx(float(row_b[1]), rel=1e-4)  # training loss
        assert row_a[2:6] == row_b[2:6]  # validation scores, best


class Crash(Exception):
    pass


def _train_until(rank: int, config: TrainConfig, crash_step: int | None) -> None:
    def crash(step: int) -> None:
        if rank == 1 and step == crash_step:
            raise Crash(f"rank {rank} stops at step {step}")

    Trainer(config, progress=False).fit(crash if crash_step else None)


def test_a_process_that_dies_stops_the_run_and_it_resumes_exactly(tones, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_ranks(_train_until, _config(tones, straight, lr=1e-3), None)
    with pytest.raises(Exception, match="Crash|stopped"):
        run_ranks(_train_until, _config(tones, resumed, lr=1e-3), 7)
    assert read_checkpoint(resumed / "last.pt")["state"]["step"] < 7
    run_ranks(_train_until, _config(tones, resumed, lr=1e-3), None)
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    assert a["state"]["step"] == b["state"]["step"] and a["stage"] == b["stage"] == "lr_decay"
    for name, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][name], rtol=1e-5, atol=1e-6, msg=name)


def test_torchrun_trains_writes_once_and_resumes_in_another_world_size(tones, tmp_path):
    """``hearproto train --nproc 2`` (torchrun underneath): one summary line, one set of
    files; the run then resumes in one process with a larger budget, to the end of its
    curriculum."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "hearproto", "train", "--dataset", "folder", "--root",
               str(tones), "--preset", "speakers", "--out", str(out), "--batch-size", "8",
               "--no-compile", "--threads", "1", "--set", "stage_steps=2",
               "--set", "raw_stage_steps=2", "--set", "ce_stage_steps=2", "--epochs", "3"]
    done = subprocess.run(command + ["--nproc", "2"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = [line for line in done.stdout.splitlines() if line.startswith(str(out))]
    assert len(summaries) == 1 and "3 epochs" in summaries[0]
    assert read_checkpoint(out / "last.pt")["config"]["world_size"] == 2
    assert not list(out.glob(".*-*"))  # no temporary file left behind
    again = subprocess.run(command[:-1] + ["100"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    payload = read_checkpoint(out / "last.pt")
    assert payload["state"]["epoch"] == 6 and payload["config"]["world_size"] == 1
    assert payload["state"]["stop_reason"] == "curriculum complete"  # raw ... lr_decay
    assert np.isfinite([float(row.split(",")[2]) for row in
                        (out / "metrics.csv").read_text().splitlines()[1:]]).all()


def test_cuda_graphs_are_refused_over_several_processes(tones, tmp_path):
    with pytest.raises(Exception, match="cuda_graphs"):
        run_ranks(_train_until, _config(tones, tmp_path / "run", cuda_graphs=True), None)
