"""Data parallelism over processes: torch.distributed, launched by ``torchrun`` (one process
per CPU share or per GPU; gloo on the CPU, NCCL on CUDA).

Every process builds the same global batch from the same random states and takes its share
(:meth:`World.shard`), so that N processes at a global batch B compute what one process at B
computes: the gradients are averaged in one all-reduce after the backward pass
(:func:`average_gradients`, what ``DistributedDataParallel`` does in buckets), batch norm
normalises with the statistics of the global batch (:class:`SyncedBatchNorm`), and every
decision taken from data (initial clusters, reassignment, beta's calibration, a time
budget) is taken once, on rank 0, and broadcast. Rank 0 alone writes. docs/design.md, "More
than one process", gives the reasons and the measured tolerances.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch import distributed as dist

__all__ = ["World", "join_world", "leave_world", "current_world", "average_gradients", "SyncedBatchNorm",
           "synchronise_norms", "COLLECTIVE_TIMEOUT_S"]

#: How long a collective may wait for the other processes before the run stops with an error
#: (``HEARPROTO_COLLECTIVE_TIMEOUT_S``): a process that dies is usually seen at once (its
#: connections close), this bounds the rest. Rank 0 may spend minutes alone preparing data.
COLLECTIVE_TIMEOUT_S = 1800


@dataclass(frozen=True)
class World:
    """This process's place among those of a run: ``rank`` of ``size`` (1: alone)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that decides, writes and shows progress."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's share of ``batch`` (its first dimension in ``size`` contiguous parts,
        the first ones longer by one where it does not divide)."""
        if not self.parallel:
            return batch
        return torch.tensor_split(batch, self.size)[self.rank]

    def share(self, count: int) -> float:
        """The weight of this rank's mean loss over its share of a global batch of ``count``
        items, so that averaging the ranks' gradients gives the global mean's gradient:
        ``len(share) * size / count``."""
        if not self.parallel:
            return 1.0
        return len(range(count)[self.rank::self.size]) * self.size / count

    def owns(self, index: int) -> bool:
        """Whether the ``index``-th item of a sequence every rank walks is this rank's."""
        return index % self.size == self.rank

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks, in place (and returned)."""
        if self.parallel:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def decide(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.parallel:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        """Rank 0's values of ``tensors`` copied into every rank's, in place."""
        if self.parallel:
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def gather(self, tensor: Tensor) -> Tensor:
        """The ranks' ``tensor`` (shares of one batch, as :meth:`shard` cut it) put back
        together along the first dimension, in rank order."""
        if not self.parallel:
            return tensor
        lengths = [torch.zeros((), dtype=torch.int64, device=tensor.device)
                   for _ in range(self.size)]
        dist.all_gather(lengths, torch.tensor(tensor.shape[0], device=tensor.device))
        longest = int(max(lengths))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype,
                             device=tensor.device)
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:int(n)] for part, n in zip(parts, lengths)])

    def stack(self, tensor: Tensor) -> Tensor:
        """The ranks' ``tensor`` (the same shape on each) stacked ``(size, ...)``, with the
        gradient of each rank's row flowing back to that rank."""
        if not self.parallel:
            return tensor[None]
        return _Stacked.apply(tensor)

    def join(self, rows: dict) -> dict:
        """Every rank's ``rows`` (a dict of picklable items, keyed by index) in one dict."""
        if not self.parallel:
            return rows
        everyone: list = [None] * self.size
        dist.all_gather_object(everyone, rows)
        return {key: value for part in everyone for key, value in part.items()}

    def replicate_(self, model: nn.Module) -> nn.Module:
        """``model`` ready to train among the processes, in place: its batch norms
        synchronised (:func:`synchronise_norms`) and rank 0's weights on every rank."""
        if self.parallel:
            synchronise_norms(model)
            self.broadcast_(model.state_dict().values())
        return model

    def backward(self, loss: Tensor, share: float, parameters: Iterable[nn.Parameter]) -> None:
        """``loss.backward()``; among several processes, with the loss of this rank's share
        weighted by ``share`` (:meth:`share`) and the gradients then averaged over the ranks
        (:func:`average_gradients`)."""
        if not self.parallel:
            loss.backward()
            return
        (loss * share).backward()
        average_gradients(parameters, self)

    def sum_count(self, total: Tensor, count: int) -> tuple[Tensor, int]:
        """A summed ``total`` (a scalar) and the ``count`` of items it sums, each added up
        over the ranks."""
        if not self.parallel:
            return total, count
        sums = self.sum(torch.stack([total.double(), torch.tensor(
            float(count), dtype=torch.float64, device=total.device)]))
        return sums[0], int(sums[1])

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def shards(self, batches: Iterable[Tensor]) -> Iterator[Tensor]:
        """This rank's share of each of ``batches`` (every rank walks the same batches)."""
        for batch in batches:
            yield self.shard(batch)


def current_world() -> World:
    """The world of the process group this process belongs to, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_size() -> int:
    """The number of processes ``torchrun`` started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_world(device: torch.device) -> tuple[World, torch.device]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), join the run's process group, once: gloo for a
    CPU run, NCCL on CUDA (each process on the GPU of its ``LOCAL_RANK``). Returns the world
    and the device this process computes on."""
    if launched_size() <= 1:
        return current_world(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        seconds = float(os.environ.get("HEARPROTO_COLLECTIVE_TIMEOUT_S", COLLECTIVE_TIMEOUT_S))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=seconds))
    return current_world(), device


def leave_world() -> None:
    """Leave the process group :func:`join_world` joined, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(parameters: Iterable[nn.Parameter], world: World) -> None:
    """Every parameter's gradient averaged over the ranks, in one all-reduce of all of them
    flattened. A parameter that has a gradient on some rank but not on this one counts as
    zeros here; one without a gradient anywhere (a transformation not yet switched on) keeps
    none, as in a run of one process, so that the optimiser leaves it alone."""
    if not world.parallel:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                           device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    params = [p for p, has in zip(params, present.tolist()) if has]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world.size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class _Stacked(torch.autograd.Function):
    """All-gather with a gradient: each rank's row receives the sum over the ranks of the
    gradients of that row (every rank's loss may read every row)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


class _SyncedNormalise(torch.autograd.Function):
    """Batch normalisation of ``x`` ``(B, C, ...)`` with the statistics of every rank's batch
    together. The backward pass all-reduces the two sums that batch norm's input gradient
    needs, so that each rank's input gradient is that of the sum of all ranks' losses.

    Each pass over the maps is one of torch's fused kernels: batch norm of the local batch
    (its exact moments and the map normalised by them), per channel the affine map from that
    to the map normalised by the global statistics, x̂ (kept for the backward pass), and from
    x̂ to the output; in the backward pass, the two local sums (``native_batch_norm_backward``
    of x̂) and the input gradient, per channel ``a·g + b·x̂ + c`` (two ``addcmul``). Written
    as elementwise operations in float64 it took twice the time of a process's whole batch
    norm (docs/scale.md); x̂ rather than x keeps the input gradient free of cancellation."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        channels = x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        normalised, local_mean, local_invstd = torch.ops.aten.native_batch_norm(
            x, None, None, None, None, True, 0.0, eps)
        local_mean, local_invstd = local_mean.double(), local_invstd.double()
        local_var = local_invstd.pow(-2) - eps
        n = float(x.numel() // channels)
        # n·mean and n·E[x²] add up over the ranks
        stats = torch.cat([n * local_mean, n * (local_var + local_mean.square()),
                           torch.tensor([n], dtype=torch.float64, device=x.device)])
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels:2 * channels] / count - mean.square()).clamp_min(0.0)
        invstd = (var + eps).rsqrt()
        # (x - m)·i of the local batch turned into that of the global one
        normalised.mul_((invstd / local_invstd).to(x.dtype).view(shape)).add_(
            ((local_mean - mean) * invstd).to(x.dtype).view(shape))
        out = normalised
        if weight is not None:
            out = torch.addcmul(bias.view(shape), normalised, weight.view(shape))
        ctx.save_for_backward(normalised, invstd.to(x.dtype), weight)
        ctx.count = float(count)
        ctx.mark_non_differentiable(mean, var, count)
        return out, mean, var, count

    @staticmethod
    def backward(ctx, grad_out: Tensor, *_):
        normalised, invstd, weight = ctx.saved_tensors
        channels = normalised.shape[1]
        shape = [1, channels] + [1] * (normalised.dim() - 2)
        ones = torch.ones_like(invstd)
        # Σ g and Σ g·x̂ (batch norm's backward sums of x̂, with mean 0 and deviation 1)
        _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_out.contiguous(), normalised, ones, None, None, torch.zeros_like(invstd), ones,
            True, 0.0, [False, True, True])
        sums = torch.cat([grad_bias, grad_weight]).double()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        mean_grad = sums[:channels] / ctx.count  # of g
        mean_grad_normalised = sums[channels:] / ctx.count  # of g·x̂
        scale = invstd.double() if weight is None else weight.double() * invstd.double()
        # scale·(g - mean_grad - x̂·mean_grad_normalised)
        grad_x = torch.addcmul((-scale * mean_grad).to(grad_out.dtype).view(shape), normalised,
                               (-scale * mean_grad_normalised).to(grad_out.dtype).view(shape))
        grad_x.addcmul_(grad_out, scale.to(grad_out.dtype).view(shape))
        if weight is None:
            return grad_x, None, None, None
        return grad_x, grad_weight, grad_bias, None


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm (1-D or 2-D) that, in training mode among several processes, normalises
    with the statistics of all of their batches and keeps the same running averages on
    every rank; otherwise it is ``nn.BatchNorm1d``/``2d``. Its state is theirs, so a
    checkpoint moves between world sizes. torch's ``SyncBatchNorm`` does the same on GPUs
    only; this one runs on any device gloo or NCCL serves."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2-D, 3-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        out, mean, var, count = _SyncedNormalise.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype),
                                                        alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype),
                                                       alpha=factor)
        return out


def synchronise_norms(module: nn.Module) -> nn.Module:
    """``module`` with each ``nn.BatchNorm1d``/``2d`` inside replaced, in place, by a
    :class:`SyncedBatchNorm` holding the same parameters and statistics."""
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum,
                                     child.affine, child.track_running_stats)
            synced.to(next(iter(child.buffers()), torch.empty(0)).device)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            synchronise_norms(child)
    return module
