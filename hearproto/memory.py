"""Keep freed memory in the process instead of handing it back to the system at every free.

glibc's ``malloc`` serves an allocation above its threshold (128 KiB at first, raised as
mapped blocks are freed, never above 32 MiB) by a fresh ``mmap`` and returns it with
``munmap`` when it is freed. A training step on the CPU allocates and frees tensors of that
size dozens of times (the encoder's first level at B = 32 is a 32 MiB map), and every page of
every fresh mapping is faulted in and zeroed by the kernel: on our 2-core machines a third of a
step's time was spent in the kernel (37 s of system time in 80 s). :func:`retain_freed_memory`
turns the mappings off and raises the trim threshold, so that freed memory is reused;
the process keeps its peak footprint until it exits (docs/kernels.md, "Freed memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["retain_freed_memory", "peak_resident_bytes", "MALLOC_CHOICES"]

#: ``HEARPROTO_MALLOC``'s values (and ``hearproto bench --malloc``'s): freed memory kept, or
#: glibc's default.
MALLOC_CHOICES = ("retain", "system")

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free memory at the top of the heap beyond this is returned to the system.
TRIM_THRESHOLD = 1 << 30

_applied = False


def retain_freed_memory() -> bool:
    """On Linux with glibc, make ``malloc`` keep freed memory for reuse (once per process);
    returns whether it is in effect. ``HEARPROTO_MALLOC=system`` leaves ``malloc`` as it is
    (to compare, or where a process must give memory back while it runs)."""
    global _applied
    if _applied:
        return True
    choice = os.environ.get("HEARPROTO_MALLOC", "retain")
    if choice not in MALLOC_CHOICES:
        raise ValueError(f"HEARPROTO_MALLOC must be {' or '.join(MALLOC_CHOICES)}, got {choice!r}")
    if choice == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _applied


def peak_resident_bytes() -> int:
    """This process's peak resident set size so far (Linux's VmHWM; 0 where there is none)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
