"""Recording conditions for the built-in datasets: level, colouring, noise floor.

A synthesiser plays every note or sentence of a class through one fixed signal chain, so the
average spectrum of a class barely moves and a linear probe on time-averaged log-Mels already
separates the classes almost perfectly. Real collections (SOL, LibriSpeech) are recorded at
different levels, through different microphones and rooms, over different noise floors. Each
built-in clip therefore gets conditions of its own, drawn from a generator seeded by the
dataset seed and the clip's path:

- a level: gain uniform in [-18, 0] dB;
- a colouring: 2nd-order Butterworth high-pass at log-uniform [40, 400] Hz and low-pass at
  log-uniform [sr/7, 0.45 sr] (6.3-19.8 kHz at 44.1 kHz, 2.3-7.2 kHz at 16 kHz);
- a noise floor: pink noise at a signal-to-noise ratio uniform in [20, 45] dB.

These are the nuisances the paper's gain and filter transformations are designed to absorb.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.fft import irfft, next_fast_len, rfft
from scipy.signal import butter, sosfilt
from tqdm.auto import tqdm

from hearproto.data.workers import map_chunks

__all__ = ["CONDITIONS_VERSION", "Conditions", "draw_conditions", "apply_conditions",
           "condition_clips"]

CONDITIONS_VERSION = 1
GAIN_DB = (-18.0, 0.0)
HIGHPASS_HZ = (40.0, 400.0)
LOWPASS_FRACTION = (1 / 7, 0.45)  # of the sample rate
SNR_DB = (20.0, 45.0)
PEAK = 0.99
CHUNK = 64  # clips per task of a worker


@dataclass(frozen=True)
class Conditions:
    gain_db: float
    highpass_hz: float
    lowpass_hz: float
    snr_db: float


def clip_rng(seed: int, path: str) -> np.random.Generator:
    """A generator of its own for each clip: conditions do not depend on the order of work."""
    return np.random.default_rng([seed, zlib.crc32(path.encode())])


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_conditions(rng: np.random.Generator, sample_rate: int) -> Conditions:
    return Conditions(
        gain_db=float(rng.uniform(*GAIN_DB)),
        highpass_hz=_log_uniform(rng, *HIGHPASS_HZ),
        lowpass_hz=_log_uniform(rng, *(f * sample_rate for f in LOWPASS_FRACTION)),
        snr_db=float(rng.uniform(*SNR_DB)),
    )


def pink_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    """Unit-RMS noise with a 1/f power spectrum. ``(length,)``."""
    padded = next_fast_len(length, real=True)  # FFTs of prime lengths are slow
    spectrum = rfft(rng.standard_normal(padded))
    frequencies = np.arange(spectrum.shape[0], dtype=np.float64)
    spectrum[1:] /= np.sqrt(frequencies[1:])
    spectrum[0] = 0.0
    noise = irfft(spectrum, n=padded)[:length]
    return noise / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)


def apply_conditions(wave: np.ndarray, sample_rate: int, conditions: Conditions,
                     rng: np.random.Generator) -> np.ndarray:
    """``wave`` ``(L,)`` heard through ``conditions``: coloured, over a noise floor, at a level.
    Peaks are kept below 0.99. Returns float32 ``(L,)``."""
    sos = np.concatenate([
        butter(2, conditions.highpass_hz, btype="highpass", fs=sample_rate, output="sos"),
        butter(2, conditions.lowpass_hz, btype="lowpass", fs=sample_rate, output="sos"),
    ])
    coloured = sosfilt(sos, wave.astype(np.float64))
    signal_rms = float(np.sqrt(np.mean(coloured ** 2)))
    noise = pink_noise(rng, coloured.shape[0]) * signal_rms * 10 ** (-conditions.snr_db / 20)
    out = (coloured + noise) * 10 ** (conditions.gain_db / 20)
    peak = float(np.abs(out).max())
    if peak > PEAK:
        out *= PEAK / peak
    return out.astype(np.float32)


def _condition_files(root: Path, seed: int, rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        path = root / row["path"]
        wave, sample_rate = sf.read(path, dtype="float32")
        rng = clip_rng(seed, row["path"])
        conditions = draw_conditions(rng, sample_rate)
        sf.write(path, apply_conditions(wave, sample_rate, conditions, rng), sample_rate,
                 subtype="PCM_16")
        out.append({**row, **{k: round(v, 2) for k, v in asdict(conditions).items()}})
    return out


def condition_clips(root: Path, rows: list[dict], seed: int, progress: bool = True,
                    workers: int | None = None) -> list[dict]:
    """Rewrite each generated clip of ``rows`` (paths relative to ``root``) through conditions
    of its own; returns the rows with the conditions added. Each clip's conditions depend on
    the seed and its path alone, so ``workers`` processes (default: one per core for many
    clips) give the same files as one."""
    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]
    out: list[dict] = []
    with tqdm(total=len(rows), desc="recording conditions", unit="clip",
              disable=not progress) as bar:
        for chunk, done in map_chunks(_condition_files, chunks, root, seed, workers=workers):
            out += done
            bar.update(len(chunk))
    return out
