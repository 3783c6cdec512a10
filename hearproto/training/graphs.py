"""CUDA graphs for the training step: forward, loss, backward and the optimiser's update
recorded once and replayed for every later batch.

On a GPU the model's training step is about 850 small operations; at the paper's shapes
launching them from Python costs more than running them (docs/kernels.md, "CUDA"). A CUDA
graph launches the whole step at once. It replays exactly the kernels it recorded, on the
same memory, so the step must:

- read every input from the static tensors it was recorded with (:class:`GraphedStep` copies
  each batch into them);
- never make the host wait for the device (no ``.item()``, ``.tolist()``, ``bincount``,
  boolean indexing, or copies from pageable host memory);
- keep every value that changes from step to step in a tensor it reads (the learning rates,
  a loss weight), or in the ``key`` under which a step is recorded: a new key records a new
  graph;
- update an optimiser built with ``capturable=True``.

:class:`GraphedStep` runs ``warmup`` steps of each key eagerly (on a side stream, as CUDA
graphs require), records the next one and replays it from then on. Off a GPU (or where
recording fails, with one warning) it runs every step eagerly.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Protocol

import torch
from torch import Tensor

__all__ = ["GraphedStep", "CudaGraph", "use_tensor_learning_rates", "set_learning_rate",
           "float_learning_rates"]


class Graph(Protocol):
    """What :class:`GraphedStep` needs of a graph, made as ``graph_type(share)``:
    :meth:`capture` records the kernels the block launches (without running them), in the
    memory of the graph ``share`` where one is given; :meth:`replay` runs them again."""

    def capture(self): ...
    def replay(self) -> None: ...


class CudaGraph:
    """A ``torch.cuda.CUDAGraph`` behind the :class:`Graph` interface. Graphs made with
    ``share`` allocate from one memory pool: safe here because each replay's outputs (the
    loss) are used before the next replay, and everything else a replay reads it writes
    first (or lives outside the pool: parameters, optimiser state, the static inputs)."""

    def __init__(self, share: "CudaGraph | None" = None) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.pool = share.pool if share is not None else None

    @contextmanager
    def capture(self) -> Iterator[None]:
        with torch.cuda.graph(self.graph, pool=self.pool):
            yield
        self.pool = self.graph.pool()  # known once recorded

    def replay(self) -> None:
        self.graph.replay()

    @staticmethod
    @contextmanager
    def warmup_stream() -> Iterator[None]:
        """Run the block on a side stream (eager steps before a capture must), one per device
        for the whole process, so that the memory its steps free is reused by the next."""
        device = torch.cuda.current_device()
        if device not in _SIDE_STREAMS:
            _SIDE_STREAMS[device] = torch.cuda.Stream()
        side = _SIDE_STREAMS[device]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)


_SIDE_STREAMS: dict[int, "torch.cuda.Stream"] = {}


@dataclass
class _Recorded:
    graph: Graph
    x: Tensor
    y: Tensor
    loss: Tensor


class GraphedStep:
    """``step(x, y, key) -> loss``, one whole training step, replayed from a CUDA graph.

    Call it as ``graphed(x, y, key)`` (``key`` hashable: what the step computes besides its
    tensors, passed on to ``step``): the first ``warmup`` calls with a key run ``step``
    eagerly, the next records it on static copies of ``x`` and ``y`` and replays it, and
    every later call with that key and the same shapes copies the batch in and replays. The
    returned loss is the graph's own output tensor: use it (or clone it) before the next
    call. Graphs of other keys are kept until :meth:`reset`, all in one memory pool.
    ``graph_type``: :class:`CudaGraph` (on a CUDA device; elsewhere every step runs
    eagerly), None (always eagerly), or a stand-in with its interface (tests, on the CPU).
    """

    def __init__(self, step: Callable[[Tensor, Tensor, Hashable], Tensor],
                 device: torch.device | str,
                 warmup: int = 2, graph_type: type | None = CudaGraph) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 eager step per key, got {warmup}")
        self.step, self.warmup = step, warmup
        on_gpu = torch.device(device).type == "cuda"
        self.graph_type = None if graph_type is CudaGraph and not on_gpu else graph_type
        self._recorded: dict[Hashable, _Recorded] = {}
        self._eager_steps: dict[Hashable, int] = {}
        self.failed: str | None = None  # why recording failed, if it did
        self.replays = 0

    @property
    def enabled(self) -> bool:
        return self.graph_type is not None and self.failed is None

    def reset(self) -> None:
        """Forget every recorded graph (after the step's tensors were replaced: a loaded
        checkpoint, a new optimiser state)."""
        self._recorded.clear()
        self._eager_steps.clear()

    def __call__(self, x: Tensor, y: Tensor, key: Hashable = None) -> Tensor:
        if not self.enabled:
            return self.step(x, y, key)
        full_key = (key, tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        recorded = self._recorded.get(full_key)
        if recorded is not None:
            recorded.x.copy_(x, non_blocking=True)
            recorded.y.copy_(y, non_blocking=True)
            recorded.graph.replay()
            self.replays += 1
            return recorded.loss
        done = self._eager_steps.get(full_key, 0)
        if done < self.warmup:
            self._eager_steps[full_key] = done + 1
            with getattr(self.graph_type, "warmup_stream", nullcontext)():
                return self.step(x, y, key)
        return self._record(key, full_key, x, y)

    def _record(self, key: Hashable, full_key: Hashable, x: Tensor, y: Tensor) -> Tensor:
        share = next(iter(self._recorded.values())).graph if self._recorded else None
        graph = self.graph_type(share)
        static_x, static_y = x.clone(), y.clone()
        try:
            with graph.capture():
                loss = self.step(static_x, static_y, key)
        except Exception as error:  # the capture launched nothing: this batch runs eagerly
            self.failed = f"{type(error).__name__}: {error}"
            warnings.warn(f"recording the training step as a CUDA graph failed ({self.failed}); "
                          "training goes on without CUDA graphs", RuntimeWarning, stacklevel=3)
            self.reset()
            return self.step(x, y, key)
        self._recorded[full_key] = _Recorded(graph, static_x, static_y, loss)
        graph.replay()  # the capture recorded this batch's step without running it
        self.replays += 1
        return loss


def use_tensor_learning_rates(optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    """Make every param group's ``lr`` a 0-dim tensor on ``device`` (kept if it already is
    one there) and the optimiser capturable, so that a recorded step reads the learning rate
    that :func:`set_learning_rate` writes. Returns whether any tensor was new (then graphs
    recorded before are stale).

    The tensor has the precision each device's fused AdamW reads a tensor learning rate in:
    float32 on CUDA (whose kernel reads no other); float64 on the CPU, where the update is
    then bit for bit the one a number gives (the tests compare recorded runs with eager ones
    there)."""
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    changed = False
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (torch.is_tensor(lr) and lr.device == device and lr.dtype == dtype):
            group["lr"] = torch.tensor(float(lr), dtype=dtype, device=device)
            changed = True
        group["capturable"] = True
    return changed


def set_learning_rate(group: dict, value: float) -> None:
    """Write ``value`` into ``group["lr"]``: in place when it is a tensor (a recorded step
    reads that tensor), else as a number."""
    if torch.is_tensor(group["lr"]):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def float_learning_rates(state: dict) -> dict:
    """An optimiser ``state_dict`` with its param groups' tensor learning rates as numbers and
    ``capturable`` off (checkpoints stay the same whether or not a run used CUDA graphs)."""
    for group in state["param_groups"]:
        if torch.is_tensor(group.get("lr")):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False
    return state
