"""The log-Mel front end: its settings and the waveform -> log-Mel transform, in torch.

Conventions: waveforms are float32 in [-1, 1], shape ``(..., L)``; log-Mel spectrograms are
``(..., T, F)`` (time first, F mel bins), scaled as in the authors' code,
``x = (log10(S + 1e-10) + 10) / 17`` with S the mel power, so that x lies roughly in [0, 1].
Files, resampling and the way back to sound are in :mod:`hearproto.audio`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from hearproto.errors import AudioError
from hearproto.melscale import band_edges

__all__ = ["FrontEnd", "LogMel", "PRESETS", "SPEAKERS_MAX_RATE", "log_scale",
           "inverse_log_scale", "mel_power", "preset_for_rate", "resolve_frontend"]

LOG_EPS = 1e-10
LOG_OFFSET = 10.0
LOG_RANGE = 17.0


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

    def mel_frequencies(self) -> np.ndarray:
        """Centre frequency in Hz of each mel bin. ``(F,)``."""
        return band_edges(self.n_mels, self.f_min, self.nyquist_limit)[1:-1].numpy()

    def mel_filterbank(self) -> np.ndarray:
        """HTK mel filterbank without normalisation (torchaudio's defaults; librosa's
        ``filters.mel(htk=True, norm=None)``): triangles between neighbouring band edges.
        ``(F, n_freqs)``, float64."""
        edges = band_edges(self.n_mels, self.f_min, self.nyquist_limit).numpy()
        freqs = np.linspace(0.0, self.sample_rate / 2, self.n_freqs)
        rising = (freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
        falling = (edges[2:, None] - freqs[None, :]) / np.diff(edges)[1:, None]
        return np.maximum(0.0, np.minimum(rising, falling))

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, FrontEnd] = {
    # The paper code's settings for SOL and LibriSpeech (docs/design.md, "Front end").
    "instruments": FrontEnd(sample_rate=44_100, n_fft=2048, hop_length=512),
    "speakers": FrontEnd(sample_rate=16_000, n_fft=1024, hop_length=512),
}

#: Files at or below this sample rate are heard with the ``speakers`` front end (16 kHz),
#: above it with ``instruments`` (44.1 kHz), when no preset is given for a local dataset.
SPEAKERS_MAX_RATE = 24_000


def preset_for_rate(sample_rate: float) -> str:
    """The preset for files recorded at ``sample_rate`` Hz (:data:`SPEAKERS_MAX_RATE`)."""
    return "speakers" if sample_rate <= SPEAKERS_MAX_RATE else "instruments"


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
