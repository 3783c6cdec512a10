"""Figures: spectrograms with axes in seconds and Hz."""

from __future__ import annotations

import base64
import html
import io

import librosa.display
import matplotlib.pyplot as plt
import numpy as np
import soundfile as sf
import torch

from hearproto.frontend import FrontEnd, resolve_frontend

__all__ = ["audio_player", "player_grid", "show_logmel", "show_frame"]


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


def audio_tag(data: bytes, mimetype: str, title: str | None = None,
              width: str | None = None) -> str:
    """An ``<audio>`` element that carries ``data`` (encoded audio) in its source."""
    source = f"data:{mimetype};base64,{base64.b64encode(data).decode()}"
    style = f' style="width:{width}"' if width else ""
    return (f'<audio controls preload="metadata" src="{source}"{style} '
            f'title="{html.escape(title or "")}"></audio>')


class AudioPlayer:
    """An embedded ``<audio>`` player (with an optional caption) for notebooks and the book."""

    def __init__(self, data: bytes, mimetype: str, title: str | None = None) -> None:
        self.data, self.mimetype, self.title = data, mimetype, title

    def _repr_html_(self, width: str | None = None) -> str:
        audio = audio_tag(self.data, self.mimetype, self.title, width)
        if not self.title:
            return audio
        return (f'<figure class="hearproto-player" style="display:inline-block;margin:0 1em 1em 0">'
                f'<figcaption style="font-size:0.9em">{html.escape(self.title)}</figcaption>'
                f"{audio}</figure>")

    def __repr__(self) -> str:
        return f"<audio player{': ' + self.title if self.title else ''}>"


def audio_player(
    wave, sample_rate: int, title: str | None = None, normalize: bool = True,
    compressed: bool = True,
) -> AudioPlayer:
    """A player for a mono waveform ``(L,)``: MP3 by default (about 10x smaller than WAV and
    byte-for-byte deterministic), WAV with ``compressed=False``. ``normalize`` scales the peak
    to 0.9."""
    samples = _to_numpy(wave).astype(np.float32).reshape(-1)
    if normalize and np.abs(samples).max() > 0:
        samples = 0.9 * samples / np.abs(samples).max()
    buffer = io.BytesIO()
    if compressed:
        sf.write(buffer, np.clip(samples, -1, 1), sample_rate, format="MP3")
        return AudioPlayer(buffer.getvalue(), "audio/mpeg", title)
    sf.write(buffer, np.clip(samples, -1, 1), sample_rate, format="WAV", subtype="PCM_16")
    return AudioPlayer(buffer.getvalue(), "audio/wav", title)


class PlayerGrid:
    """Several players side by side, wrapping."""

    def __init__(self, players: list[AudioPlayer]) -> None:
        self.players = list(players)

    def _repr_html_(self) -> str:
        cells = "".join(player._repr_html_(width="15em") for player in self.players)
        return f'<div class="hearproto-players" style="display:flex;flex-wrap:wrap">{cells}</div>'

    def __repr__(self) -> str:
        return f"<{len(self.players)} audio players>"


def player_grid(players: list[AudioPlayer]) -> PlayerGrid:
    """Display several :func:`audio_player` results as one wrapping grid."""
    return PlayerGrid(players)
