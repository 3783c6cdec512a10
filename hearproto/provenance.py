"""What a run records about where it ran: the git commit of the code and the device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["git_commit", "describe_device", "repository_url", "OUTPUT_PATHSPECS"]

#: What the runner itself writes: changes there do not make the sources dirty.
OUTPUT_PATHSPECS = (":(top,exclude)book/*.ipynb", ":(top,exclude)results",
                    ":(top,exclude)tests/notebooks")


def git_commit(cwd: Path | None = None) -> str:
    """Current commit of the repository at ``cwd`` (default: the one holding this package),
    with ``-dirty`` if a tracked source file has changes (the executed notebooks and the
    results the runner is writing do not count), or ``unknown``."""
    cwd = Path(__file__).resolve().parent if cwd is None else cwd
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
             *OUTPUT_PATHSPECS], cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def describe_device(device: str | torch.device) -> str:
    """``cuda (NVIDIA H100 80GB HBM3)`` or ``cpu (x86_64, 2 threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"{device.type} ({platform.machine()}, {threads} thread{'s' if threads > 1 else ''})"


#: The ``[project.urls]`` labels that name where the code lives, in order of preference.
REPOSITORY_LABELS = ("repository", "source", "source code", "code", "homepage")


def repository_url(distribution: str = "hearproto") -> str | None:
    """The address of the installed package's repository, from its ``[project.urls]``
    (``Repository``, else ``Source``, ``Code`` or ``Homepage``), or None where it names none."""
    try:
        entries = metadata.metadata(distribution).get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    urls = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        urls.setdefault(label.strip().lower(), url.strip())
    return next((urls[label] for label in REPOSITORY_LABELS if urls.get(label)), None)
