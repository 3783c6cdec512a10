"""A CPU stand-in for a CUDA graph, to test on machines without a GPU that a training step
can be recorded and replayed (:mod:`hearproto.training.graphs`).

:class:`ReplayedOps` records every ATen operation the block runs, with the very tensors it
ran on, and :meth:`~ReplayedOps.replay` runs them again, writing each result into the tensor
recorded for it, as a CUDA graph reruns its kernels on the same memory. Like a CUDA capture,
recording leaves no trace: every tensor that existed before is put back, and the random
state too. So what a graph gets wrong shows up here: a number baked in at recording (a
learning rate passed as a float), a tensor replaced after recording, a read of a value back
to the host (an error while recording, as on a GPU). It sees ATen operations only: C
kernels and torch.compile's generated code are invisible, so tests run the torch path
eagerly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

#: Operations that make the host wait for a GPU; recording one is an error.
HOST_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default",
              "aten.bincount.default", "aten.masked_select.default",
              "aten._unique2.default", "aten.unique_consecutive.default",
              "aten.repeat_interleave.Tensor", "aten.is_nonzero.default"}


#: Operations that write into arguments their schema does not mark as written: batch norm
#: updates its running statistics in place.
UNMARKED_WRITES = {"aten.native_batch_norm.default": ("running_mean", "running_var")}


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors ``func`` writes into (its mutable arguments)."""
    unmarked = UNMARKED_WRITES.get(str(func), ())
    out = []
    for i, argument in enumerate(func._schema.arguments):
        marked = argument.alias_info is not None and argument.alias_info.is_write
        if not marked and argument.name not in unmarked:
            continue
        value = args[i] if i < len(args) else kwargs.get(argument.name)
        out += [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]
    return out


class _Recorder(TorchDispatchMode):
    def __init__(self, ops: list, saved: list) -> None:
        super().__init__()
        self.ops, self.saved = ops, saved

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if str(func) in HOST_READS:
            raise RuntimeError(f"{func} reads a value back to the host while recording")
        for tensor in _written(func, args, kwargs):
            self.saved.append((tensor, tensor.clone()))
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset() and a.stride() == b.stride())


class ReplayedOps:
    """The :class:`hearproto.training.graphs.Graph` interface on the CPU."""

    def __init__(self, share: "ReplayedOps | None" = None) -> None:  # no pools to share
        self.ops: list = []

    @contextmanager
    def capture(self):
        saved: list = []
        rng = torch.get_rng_state()
        try:
            with _Recorder(self.ops, saved):
                yield
        finally:  # recorded or not, nothing ran
            with torch.no_grad():
                for tensor, before in reversed(saved):
                    tensor.copy_(before)
            torch.set_rng_state(rng)

    @torch.no_grad()
    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            result = func(*args, **kwargs)
            for recorded, fresh in zip(tree_leaves(out), tree_leaves(result)):
                if isinstance(recorded, torch.Tensor) and recorded.numel() and \
                        not _same_memory(recorded, fresh):
                    recorded.copy_(fresh)
