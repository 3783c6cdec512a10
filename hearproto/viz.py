"""Figures: spectrograms with axes in seconds and Hz."""

from __future__ import annotations

import librosa.display
import matplotlib.pyplot as plt
import numpy as np
import torch

from hearproto.audio import FrontEnd, resolve_frontend

__all__ = ["show_logmel", "show_frame"]


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def show_logmel(
    logmel, frontend: FrontEnd | str, ax: plt.Axes | None = None, title: str | None = None,
    colorbar: bool = True, hop_length: int | None = None,
):
    """Draw a scaled log-Mel spectrogram ``(T, F)``: time in seconds, frequency in Hz (mel
    spaced). Returns the image."""
    frontend = resolve_frontend(frontend)
    ax = plt.gca() if ax is None else ax
    image = librosa.display.specshow(
        _to_numpy(logmel).T, sr=frontend.sample_rate,
        hop_length=frontend.hop_length if hop_length is None else hop_length,
        x_axis="time", y_axis="mel", fmin=frontend.f_min, fmax=frontend.nyquist_limit,
        htk=True, ax=ax, cmap="magma", vmin=0.0, vmax=1.0,
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="scaled log power")
    return image


def show_frame(frame, frontend: FrontEnd | str, ax: plt.Axes | None = None, **plot_kwargs):
    """Plot one spectral frame ``(F,)`` against the bins' centre frequencies in Hz."""
    frontend = resolve_frontend(frontend)
    ax = plt.gca() if ax is None else ax
    ax.plot(frontend.mel_frequencies(), _to_numpy(frame), **plot_kwargs)
    ax.set_xscale("log")
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("scaled log power")
    return ax
