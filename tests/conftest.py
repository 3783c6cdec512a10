"""Shared fixtures: small synthetic datasets that any working model separates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 16_000


def harmonic(f0: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 6))
    return (0.2 * wave * rng.uniform(0.5, 1.0)).astype(np.float32)


@pytest.fixture
def tones(tmp_path) -> Path:
    """Three classes, far apart in pitch and timbre: any working model separates them."""
    root = tmp_path / "tones"
    rng = np.random.default_rng(0)
    for label, f0 in (("low", 150.0), ("mid", 600.0), ("high", 2400.0)):
        (root / label).mkdir(parents=True)
        for i in range(10):
            sf.write(root / label / f"{i}.wav", harmonic(f0 * rng.uniform(0.97, 1.03), 0.6, rng), SR)
    return root
