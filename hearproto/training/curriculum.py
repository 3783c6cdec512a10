"""The curriculum: the stages a run goes through, each switching one thing on."""

from __future__ import annotations

from typing import Iterable

from hearproto.model import TRANSFORMATIONS

__all__ = ["stages_for"]


def stages_for(mode: str, held_stages: Iterable[str] = ()) -> list[str]:
    """The curriculum: each stage switches one thing on; ``lr_decay`` divides the lr by 10.
    The cross-entropy stage needs labels: supervised, or unsupervised with the initial
    clusters held through it (``held_stages``)."""
    ce = mode == "supervised" or "ce" in held_stages
    return ["raw", *TRANSFORMATIONS, *(["ce"] if ce else []), "lr_decay"]
