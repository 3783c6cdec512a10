"""Work on generated data spread over processes: the same results as one process, faster."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

__all__ = ["available_cores", "map_chunks"]

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Below this many items the work stays in this process: a worker takes seconds to start (it
#: imports torch afresh).
SERIAL_BELOW = 400


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def map_chunks(function: Callable[..., list[Result]], chunks: Sequence[list[Item]],
               *arguments, workers: int | None = None, total: int | None = None
               ) -> Iterator[tuple[list[Item], list[Result]]]:
    """``function(*arguments, chunk)`` for every chunk, in order, yielding ``(chunk,
    results)``. ``workers`` processes (default: one per core when there are ``total`` >=
    :data:`SERIAL_BELOW` items, else this process alone). Workers are spawned, not forked:
    a fork of a process that has run torch's thread pools can hang."""
    total = sum(map(len, chunks)) if total is None else total
    if workers is None:
        workers = 1 if total < SERIAL_BELOW else available_cores()
    if workers == 1:
        for chunk in chunks:
            yield chunk, function(*arguments, chunk)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [(chunk, pool.submit(function, *arguments, chunk)) for chunk in chunks]
        for chunk, future in futures:
            yield chunk, future.result()
