"""Audio I/O, the log-Mel front end and its inversion back to sound.

Conventions: waveforms are float32 in [-1, 1], shape ``(..., L)``; log-Mel spectrograms are
``(..., T, F)`` (time first, F mel bins), scaled as in the authors' code,
``x = (log10(S + 1e-10) + 10) / 17`` with S the mel power, so that x lies roughly in [0, 1].
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch
from torch import nn

from hearproto.files import atomic_path

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "FrontEnd",
    "LogMel",
    "PRESETS",
    "load_audio",
    "save_audio",
    "log_scale",
    "inverse_log_scale",
    "mel_power",
    "mel_to_linear_power",
    "logmel_to_magnitude",
    "griffin_lim",
    "mel_to_audio",
    "prototype_to_audio",
    "resolve_frontend",
    "spectral_convergence",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
LOG_EPS = 1e-10
LOG_OFFSET = 10.0
LOG_RANGE = 17.0


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, or of the wrong shape."""


# --------------------------------------------------------------------------------------------
# Reading and writing files


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read any wav/flac/mp3/ogg file as mono float32 at ``sample_rate``. Returns ``(L,)``.

    Channels are averaged; resampling uses soxr (high quality). Raises ``FileNotFoundError``
    for a missing file and :class:`AudioError` (naming the file) for anything unreadable, empty
    or non-finite.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such audio file")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive, got {sample_rate}")
    try:
        samples, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types for non-audio input
        raise AudioError(
            f"{path}: cannot be read as audio ({err}). "
            f"Expected one of {', '.join(AUDIO_EXTENSIONS)}."
        ) from None
    if samples.size == 0:
        raise AudioError(f"{path}: the file contains no samples")
    mono = samples.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: the file contains NaN or infinite samples")
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


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
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --force) to replace it")
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
# Front-end settings


@dataclass(frozen=True)
class FrontEnd:
    """Settings of the log-Mel front end. Hashable: they key the feature cache."""

    sample_rate: int
    n_fft: int
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"FrontEnd.{name} must be a positive integer, got {value!r}")
        if not 0 <= self.f_min < self.nyquist_limit:
            raise ValueError(f"FrontEnd.f_min must lie in [0, f_max), got {self.f_min}")

    @property
    def nyquist_limit(self) -> float:
        return self.sample_rate / 2 if self.f_max is None else float(self.f_max)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames of a centred STFT of ``num_samples`` samples."""
        return 1 + num_samples // self.hop_length

    def mel_filterbank(self) -> np.ndarray:
        """HTK mel filterbank without normalisation (torchaudio's defaults). ``(F, n_freqs)``."""
        return librosa.filters.mel(
            sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.f_min,
            fmax=self.nyquist_limit, htk=True, norm=None, dtype=np.float64,
        )

    def mel_frequencies(self) -> np.ndarray:
        """Centre frequency in Hz of each mel bin. ``(F,)``."""
        edges = librosa.mel_frequencies(
            self.n_mels + 2, fmin=self.f_min, fmax=self.nyquist_limit, htk=True
        )
        return edges[1:-1]

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, FrontEnd] = {
    # The paper code's settings for SOL and LibriSpeech (DESIGN.md).
    "instruments": FrontEnd(sample_rate=44_100, n_fft=2048, hop_length=512),
    "speakers": FrontEnd(sample_rate=16_000, n_fft=1024, hop_length=512),
}


# --------------------------------------------------------------------------------------------
# Pure functions


def log_scale(power: torch.Tensor) -> torch.Tensor:
    """Mel power -> the paper code's log scale, ``(log10(S + 1e-10) + 10) / 17``."""
    return (torch.log10(power + LOG_EPS) + LOG_OFFSET) / LOG_RANGE


def inverse_log_scale(logmel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`log_scale`, clamped at zero power."""
    return (torch.pow(10.0, logmel * LOG_RANGE - LOG_OFFSET) - LOG_EPS).clamp_min(0.0)


def mel_power(
    waveform: torch.Tensor, window: torch.Tensor, filterbank: torch.Tensor, n_fft: int,
    hop_length: int,
) -> torch.Tensor:
    """Mel power spectrogram of ``waveform`` ``(..., L)`` -> ``(..., T, F)``.

    Centred frames with reflect padding (torchaudio's defaults, which the authors used);
    ``filterbank`` is ``(F, n_fft // 2 + 1)``.
    """
    batch_shape = waveform.shape[:-1]
    flat = waveform.reshape(-1, waveform.shape[-1])
    spec = torch.stft(
        flat, n_fft=n_fft, hop_length=hop_length, window=window, center=True,
        pad_mode="reflect", return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # (N, n_freqs, T)
    mel = torch.matmul(power.transpose(-1, -2), filterbank.transpose(0, 1))  # (N, T, F)
    return mel.reshape(*batch_shape, *mel.shape[-2:])


# --------------------------------------------------------------------------------------------
# The module


class LogMel(nn.Module):
    """Waveform ``(..., L)`` -> scaled log-Mel spectrogram ``(..., T, F)``.

    Batched and device-agnostic (the filterbank and window are buffers). Waveforms shorter
    than ``n_fft // 2 + 1`` samples are zero-padded on the right so that reflect padding is
    defined; empty or non-finite input raises :class:`AudioError`.
    """

    def __init__(
        self, sample_rate: int, n_fft: int, hop_length: int = 512, n_mels: int = 128,
        f_min: float = 0.0, f_max: float | None = None,
    ) -> None:
        super().__init__()
        self.frontend = FrontEnd(sample_rate, n_fft, hop_length, n_mels, f_min, f_max)
        self.register_buffer(
            "window", torch.hann_window(n_fft, periodic=True, dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer(
            "filterbank",
            torch.as_tensor(self.frontend.mel_filterbank(), dtype=torch.float32),
            persistent=False,
        )

    @classmethod
    def from_frontend(cls, frontend: FrontEnd) -> "LogMel":
        return cls(**frontend.to_dict())

    @classmethod
    def for_instruments(cls) -> "LogMel":
        """44.1 kHz, n_fft 2048, hop 512, 128 mels (SOL settings)."""
        return cls.from_frontend(PRESETS["instruments"])

    @classmethod
    def for_speakers(cls) -> "LogMel":
        """16 kHz, n_fft 1024, hop 512, 128 mels (LibriSpeech settings)."""
        return cls.from_frontend(PRESETS["speakers"])

    def forward(self, waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor):
            waveform = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        waveform = waveform.to(device=self.window.device, dtype=torch.float32)
        if waveform.ndim == 0 or waveform.shape[-1] == 0 or waveform.numel() == 0:
            raise AudioError(f"waveform is empty (shape {tuple(waveform.shape)})")
        if not torch.isfinite(waveform).all():
            raise AudioError("waveform contains NaN or infinite values")
        min_length = self.frontend.n_fft // 2 + 1
        if waveform.shape[-1] < min_length:
            waveform = nn.functional.pad(waveform, (0, min_length - waveform.shape[-1]))
        power = mel_power(
            waveform, self.window, self.filterbank, self.frontend.n_fft,
            self.frontend.hop_length,
        )
        return log_scale(power)

    def extra_repr(self) -> str:
        f = self.frontend
        return (f"sample_rate={f.sample_rate}, n_fft={f.n_fft}, hop_length={f.hop_length}, "
                f"n_mels={f.n_mels}, f_min={f.f_min}, f_max={f.nyquist_limit}")


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


def resolve_frontend(frontend: FrontEnd | str) -> FrontEnd:
    """A :class:`FrontEnd` as given, or the preset of that name."""
    if isinstance(frontend, FrontEnd):
        return frontend
    try:
        return PRESETS[frontend]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown front end {frontend!r}; pass a FrontEnd or one of the presets "
            f"{sorted(PRESETS)}"
        ) from None
