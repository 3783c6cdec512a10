"""Audio files and the way back to sound: reading (any format, resampled), writing, and
inverting log-Mel spectrograms (:mod:`hearproto.frontend`) to waveforms by Griffin-Lim.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch

from hearproto.errors import AudioError
from hearproto.files import atomic_path
from hearproto.frontend import FrontEnd, inverse_log_scale, resolve_frontend

__all__ = [
    "AUDIO_EXTENSIONS",
    "load_audio",
    "file_sample_rate",
    "quantisation_step",
    "save_audio",
    "mel_to_linear_power",
    "logmel_to_magnitude",
    "griffin_lim",
    "mel_to_audio",
    "prototype_to_audio",
    "spectral_convergence",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")


# --------------------------------------------------------------------------------------------
# Reading and writing files


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read any wav/flac/mp3/ogg file as mono float32 at ``sample_rate``. Returns ``(L,)``.

    Channels are averaged; resampling uses soxr (high quality). Raises ``FileNotFoundError``
    for a missing file and :class:`AudioError` (naming the file) for anything unreadable, empty
    or non-finite.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise AudioError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive, got {sample_rate}")
    try:
        samples, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types for non-audio input
        reason = _libsndfile_reason(err) or f"expected {', '.join(AUDIO_EXTENSIONS)}"
        raise AudioError(f"{path}: not a readable audio file ({reason})") from None
    if samples.size == 0:
        raise AudioError(f"{path}: the file contains no samples")
    mono = samples.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: the file contains NaN or infinite samples")
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def file_sample_rate(path: str | os.PathLike) -> int | None:
    """The sample rate ``path`` was recorded at, read from its header (None: unreadable)."""
    try:
        return int(sf.info(str(path)).samplerate)
    except Exception:  # libsndfile raises several types for non-audio input
        return None


def _libsndfile_reason(err: Exception) -> str:
    """libsndfile's reason, when it says something about the file (for bytes it does not
    recognise it says "does not exist or is not a regular file", which misleads)."""
    text = str(err).split(": ", 1)[-1].strip().rstrip(".")
    if not text or "not a regular file" in text or "does not exist" in text:
        return ""
    return text


#: libsndfile's integer PCM subtypes and their bits per sample.
_PCM_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}


def quantisation_step(path: str | os.PathLike) -> float | None:
    """The amplitude of one least significant bit of an integer PCM file (2**-15 for 16-bit
    audio), or None for float and compressed formats."""
    try:
        bits = _PCM_BITS.get(sf.info(str(path)).subtype)
    except Exception:
        return None
    return None if bits is None else 2.0 ** (1 - bits)


def save_audio(
    path: str | os.PathLike, waveform: np.ndarray | torch.Tensor, sample_rate: int,
    overwrite: bool = False,
) -> Path:
    """Write a mono waveform ``(L,)`` to a file (format from the extension), atomically.

    Refuses to replace an existing file unless ``overwrite`` is true. Samples beyond [-1, 1]
    are clipped.
    """
    path = Path(path)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise AudioError(f"{path}: unsupported extension; use one of {', '.join(AUDIO_EXTENSIONS)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    samples = _as_numpy_waveform(waveform, "waveform")
    if samples.ndim != 1:
        raise AudioError(f"waveform must be mono with shape (L,), got {tuple(samples.shape)}")
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(samples, -1.0, 1.0), sample_rate)
    return path


def _as_numpy_waveform(waveform, name: str) -> np.ndarray:
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.size == 0:
        raise AudioError(f"{name} is empty")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name} contains NaN or infinite values")
    return samples


# --------------------------------------------------------------------------------------------
# Back to sound


def _as_logmel_array(logmel, n_mels: int) -> np.ndarray:
    if isinstance(logmel, torch.Tensor):
        logmel = logmel.detach().float().cpu().numpy()
    array = np.asarray(logmel, dtype=np.float64)
    if array.ndim < 2 or array.shape[-1] != n_mels:
        raise AudioError(
            f"logmel must have shape (..., T, {n_mels}) (time first, then mel bins), "
            f"got {tuple(array.shape)}"
        )
    if array.shape[-2] == 0:
        raise AudioError("logmel has no frames")
    if not np.isfinite(array).all():
        raise AudioError("logmel contains NaN or infinite values")
    return array


def mel_to_linear_power(
    power: torch.Tensor, filterbank: torch.Tensor, n_iter: int = 150
) -> torch.Tensor:
    """Non-negative solve of ``power = P @ filterbank.T`` for the linear power P.

    ``power`` is the mel power ``(..., T, F)``, ``filterbank`` ``(F, n_freqs)``; returns
    ``(..., T, n_freqs)``. Multiplicative updates (Lee & Seung) keep P non-negative at every
    step and run batched on any device; 150 of them leave a relative residual near 1e-3,
    which is inaudible after Griffin-Lim. Frequencies no mel filter covers stay at zero.
    """
    basis_t = filterbank.transpose(0, 1).contiguous()  # (n_freqs, F)
    target = power @ filterbank  # (..., T, n_freqs)
    coverage = filterbank.sum(0)  # (n_freqs,)
    linear = target / coverage.square().clamp_min(1e-12)
    tiny = torch.finfo(power.dtype).tiny
    for _ in range(n_iter):
        # P @ (W^T W) through the F mel bands: F / n_freqs of the cost of the Gram matrix
        linear = linear * target / ((linear @ basis_t) @ filterbank).clamp_min(tiny)
    return linear


def logmel_to_magnitude(logmel, frontend: FrontEnd) -> np.ndarray:
    """Scaled log-Mel ``(..., T, F)`` -> linear STFT magnitude ``(..., T, n_freqs)``."""
    array = _as_logmel_array(logmel, frontend.n_mels)
    power = inverse_log_scale(torch.from_numpy(array))
    filterbank = torch.from_numpy(frontend.mel_filterbank())
    return mel_to_linear_power(power, filterbank).sqrt().numpy()


def griffin_lim(
    magnitude: np.ndarray, frontend: FrontEnd, n_iter: int = 64, momentum: float = 0.99,
    hop_length: int | None = None, seed: int = 0,
) -> np.ndarray:
    """Linear magnitude ``(..., T, n_freqs)`` -> waveform ``(..., (T - 1) * hop)``, float32.

    librosa's fast Griffin-Lim from a random phase drawn with ``seed`` (deterministic).
    ``hop_length`` overrides the front end's hop: the mel power of a frame does not depend on
    the hop, so frames may be laid closer together, which sounds smoother.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    hop = frontend.hop_length if hop_length is None else int(hop_length)
    if not 0 < hop <= frontend.n_fft:
        raise ValueError(f"hop_length must lie in [1, n_fft={frontend.n_fft}], got {hop}")
    batch_shape = magnitude.shape[:-2]
    flat = np.swapaxes(magnitude.reshape(-1, *magnitude.shape[-2:]), -1, -2)  # (N, n_freqs, T)
    length = max(1, (flat.shape[-1] - 1) * hop)
    waves = [
        librosa.griffinlim(
            spectrum, n_iter=n_iter, hop_length=hop, win_length=frontend.n_fft,
            n_fft=frontend.n_fft, window="hann", center=True, momentum=momentum,
            init="random", random_state=np.random.default_rng(seed), length=length,
        )
        for spectrum in flat
    ]
    return np.stack(waves).reshape(*batch_shape, length).astype(np.float32)


def mel_to_audio(
    logmel: torch.Tensor | np.ndarray,
    frontend: FrontEnd | str,
    n_iter: int = 64,
    momentum: float = 0.99,
    hop_length: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Scaled log-Mel ``(..., T, F)`` -> waveform ``(..., (T - 1) * hop)``, float32.

    Undoes the log scale, recovers a non-negative linear magnitude from the mel filterbank
    (:func:`mel_to_linear_power`), then runs Griffin-Lim (:func:`griffin_lim`).
    ``frontend`` is a :class:`FrontEnd` or a preset name.
    """
    frontend = resolve_frontend(frontend)
    magnitude = logmel_to_magnitude(logmel, frontend)
    return griffin_lim(magnitude, frontend, n_iter, momentum, hop_length, seed)


def prototype_to_audio(
    frame: torch.Tensor | np.ndarray,
    frontend: FrontEnd | str,
    seconds: float = 1.0,
    n_iter: int = 64,
    overlap: int = 8,
    fade_seconds: float = 0.02,
    seed: int = 0,
) -> np.ndarray:
    """Make one spectral frame ``(F,)`` playable: a steady sound of ``seconds``. ``(L,)``.

    The frame's magnitude is tiled over time with a hop of ``n_fft / overlap`` (denser than
    analysis, which sounds smoother), given a phase by Griffin-Lim, and faded in and out over
    ``fade_seconds`` to avoid clicks.
    """
    frontend = resolve_frontend(frontend)
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().float().cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 1:
        raise AudioError(f"a prototype frame must have shape (F,), got {tuple(frame.shape)}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise AudioError(f"seconds must be a positive number, got {seconds}")
    magnitude = logmel_to_magnitude(frame[None, :], frontend)  # (1, n_freqs)
    hop = max(1, frontend.n_fft // overlap)
    num_samples = int(round(seconds * frontend.sample_rate))
    num_frames = math.ceil(num_samples / hop) + 1
    tiled = np.repeat(magnitude, num_frames, axis=0)
    wave = griffin_lim(tiled, frontend, n_iter=n_iter, hop_length=hop, seed=seed)[:num_samples]
    fade = min(int(fade_seconds * frontend.sample_rate), wave.shape[-1] // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return wave


def spectral_convergence(
    reference: np.ndarray | torch.Tensor, estimate: np.ndarray | torch.Tensor,
    frontend: FrontEnd | str,
) -> float:
    """``|| |S_ref| - |S_est| ||_F / || |S_ref| ||_F`` on linear STFT magnitudes.

    Both waveforms ``(L,)`` are cut to the shorter length; centred frames, zero padded (as
    librosa's default STFT). 0 is a perfect match.
    """
    frontend = resolve_frontend(frontend)
    ref = torch.as_tensor(_as_numpy_waveform(reference, "reference"))
    est = torch.as_tensor(_as_numpy_waveform(estimate, "estimate"))
    length = min(ref.shape[-1], est.shape[-1])
    window = torch.hann_window(frontend.n_fft)

    def magnitude(wave: torch.Tensor) -> torch.Tensor:
        return torch.stft(wave[..., :length], frontend.n_fft, frontend.hop_length,
                          window=window, pad_mode="constant", return_complex=True).abs()

    ref_mag = magnitude(ref)
    return float(torch.linalg.vector_norm(ref_mag - magnitude(est))
                 / torch.linalg.vector_norm(ref_mag).clamp_min(1e-12))
