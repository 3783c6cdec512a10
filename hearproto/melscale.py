"""The HTK mel scale, ``mel = 2595 log10(1 + hz / 700)``: the front end's bands and the pitch
shift's reading positions are both laid on it. Pure math (torch, float64)."""

from __future__ import annotations

import math

import torch

__all__ = ["MEL_A", "MEL_BREAK_HZ", "hz_to_mel", "band_edges"]

MEL_A = 2595.0
MEL_BREAK_HZ = 700.0


def hz_to_mel(hz: float) -> float:
    return MEL_A * math.log10(1.0 + hz / MEL_BREAK_HZ)


def band_edges(n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """The ``n_mels + 2`` band edges in Hz, equally spaced in mel from ``f_min`` to ``f_max``;
    band ``f`` is centred on edge ``f + 1``. ``(F + 2,)``, float64."""
    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    return MEL_BREAK_HZ * (10.0 ** (mels / MEL_A) - 1.0)
