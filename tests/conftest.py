"""Shared fixtures: small synthetic datasets that any working model separates, and the book
built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

# Without a GPU, Triton kernels run under Triton's interpreter (tests/test_kernels.py). The
# variable must be set before triton is first imported, which torch.compile does.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import soundfile as sf

SR = 16_000
ROOT = Path(__file__).resolve().parents[1]


def harmonic(f0: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 6))
    return (0.2 * wave * rng.uniform(0.5, 1.0)).astype(np.float32)


def write_tones(root: Path, names: tuple[str, str, str] = ("low", "mid", "high")) -> Path:
    """Three classes of 10 clips in ``root`` (folders ``names``, lowest first), far apart in
    pitch and timbre: any working model separates them."""
    rng = np.random.default_rng(0)
    for label, f0 in zip(names, (150.0, 600.0, 2400.0)):
        (root / label).mkdir(parents=True)
        for i in range(10):
            sf.write(root / label / f"{i}.wav", harmonic(f0 * rng.uniform(0.97, 1.03), 0.6, rng), SR)
    return root


def timbre(f0: float, weights: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A harmonic tone whose h-th harmonic has amplitude ``weights[h - 1]``, at a random level."""
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(w * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6))
               for h, w in enumerate(weights, start=1) if f0 * h < SR / 2)
    wave = wave / np.abs(wave).max()
    return (wave * 10 ** rng.uniform(-1.5, -0.3)).astype(np.float32)


#: Harmonic amplitudes of the timbre classes: three spectral tilts, which the frequency
#: filters can imitate (so that every prototype fits every class once they are on).
TIMBRES = {
    "bright": 1.0 / np.arange(1, 13) ** 0.5,
    "mellow": 1.0 / np.arange(1, 13) ** 1.5,
    "dark": 1.0 / np.arange(1, 13) ** 2.5,
}


OCTAVES = 3.0


def write_timbres(root: Path, clips: int = 16, seed: int = 0) -> Path:
    """Three classes that differ in timbre only (:data:`TIMBRES`), each played at random
    pitches over the same three octaves and at random levels: pitch and loudness say nothing of
    the class, so a model has to learn the spectral shapes."""
    rng = np.random.default_rng(seed)
    for label, weights in TIMBRES.items():
        (root / label).mkdir(parents=True)
        for i in range(clips):
            f0 = 150.0 * 2 ** rng.uniform(0, OCTAVES)
            sf.write(root / label / f"{i}.wav", timbre(f0, weights, 0.6, rng), SR)
    return root


@pytest.fixture
def timbres(tmp_path) -> Path:
    """The three timbre classes of :func:`write_timbres`."""
    return write_timbres(tmp_path / "timbres")


@pytest.fixture
def data_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty data home (``HEARPROTO_DATA``) for the test: generated data, caches and
    splits go there, not into the user's."""
    home = tmp_path / "home"
    monkeypatch.setenv("HEARPROTO_DATA", str(home))
    return home


@pytest.fixture
def tones(tmp_path) -> Path:
    """The three separable classes of :func:`write_tones`."""
    return write_tones(tmp_path / "tones")


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """The book built (once per session) from the executed notebooks in book/, as `make html`
    builds it but into a temporary folder: the `_build/html` folder."""
    assert (ROOT / "book" / "_assets" / ".stamp").is_file(), (
        "book/_assets is missing: run `make assets` (the book serves its JavaScript itself)")
    output = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [jupyter_book, "build", "book", "--config", "_config.yml", "--path-output", output,
         "--warningiserror", "--keep-going"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = output / "_build" / "html"
    assert (html / "index.html").is_file()
    return html
