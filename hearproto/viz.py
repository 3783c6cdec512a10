"""Figures (spectrograms with axes in seconds and Hz) and audio players.

Players are normalised to a common peak, :data:`PLAYER_PEAK_DBFS`: the model's sounds span
more than 80 dB (one unit of scaled log power is 170 dB), and at their true level many would be
silent. Players meant to be compared (:func:`leveled_players`) state their true level, relative
to the loudest of their row, in their caption and a bar beside it."""

from __future__ import annotations

import base64
import html
import io

import librosa.display
import matplotlib.pyplot as plt
import numpy as np
import scipy.signal
import soundfile as sf
import torch

from hearproto.frontend import FrontEnd, resolve_frontend

__all__ = ["BOOK_STYLE", "book_style", "architecture_figure", "PLAYER_PEAK_DBFS", "audio_player", "leveled_players", "level_caption", "peak_dbfs",
           "player_grid", "show_logmel", "show_frame"]

#: The peak every player is normalised to: clearly audible, clear of clipping (MP3 encoding
#: overshoots the peak by a few tenths of a dB).
PLAYER_PEAK_DBFS = -3.0
#: MP3 players are encoded at this sample rate or an integer multiple of the sound's above it:
#: LAME low-passes 16 kHz audio near 6.5 kHz whatever the bitrate, which cut the top band a
#: high filter leaves (measured on noise above 7 kHz: -6 dB RMS at 16 kHz, -1.5 dB at 32 kHz).
MP3_MIN_RATE = 32_000
#: A player falls back to WAV where MP3 changes the sound's energy by more than this: LAME
#: also low-passes 44.1 kHz audio near 16-17 kHz, where a high filter can put most of it.
MP3_MAX_LEVEL_CHANGE_DB = 1.0
#: ... and where it would move the peak by more than this many dB (WAV then).
MP3_MAX_PEAK_CHANGE_DB = 2.0
#: A level bar spans this many dB below the loudest player of its row.
LEVEL_BAR_RANGE_DB = 60.0


#: The book's figures: 150 dpi, and fonts that stay legible once a figure is scaled to the
#: article's width.
BOOK_STYLE = {"figure.dpi": 150, "savefig.dpi": 150, "font.size": 10, "axes.titlesize": 11,
              "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
              "legend.fontsize": 9, "figure.titlesize": 12}


def book_style() -> None:
    """Set matplotlib's defaults to :data:`BOOK_STYLE` (the experiment notebooks call it)."""
    plt.rcParams.update(BOOK_STYLE)


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


def level_caption(level_db: float | None) -> str:
    """HTML for a true level relative to the loudest of a row: ``-12 dB`` and a bar whose
    length falls with the level (empty at :data:`LEVEL_BAR_RANGE_DB` below)."""
    if level_db is None:
        return ""
    if not np.isfinite(level_db):
        return '<span class="hearproto-level">silent</span>'
    fraction = float(np.clip(1 + level_db / LEVEL_BAR_RANGE_DB, 0.0, 1.0))
    text = "0 dB (loudest)" if level_db > -0.5 else f"{level_db:.0f} dB".replace("-", "−")
    return (f'<span class="hearproto-level" title="true level, relative to the loudest of the '
            f'row" style="white-space:nowrap"><span style="display:inline-block;width:'
            f'{3 * fraction:.2f}em;height:0.5em;background:#5a7;margin-right:0.3em"></span>'
            f"{text}</span>")


class AudioPlayer:
    """An embedded ``<audio>`` player (with an optional caption and true level) for notebooks
    and the book."""

    def __init__(self, data: bytes, mimetype: str, title: str | None = None,
                 level_db: float | None = None) -> None:
        self.data, self.mimetype, self.title, self.level_db = data, mimetype, title, level_db

    def _repr_html_(self, width: str | None = None) -> str:
        audio = audio_tag(self.data, self.mimetype, self.title, width)
        if not self.title and self.level_db is None:
            return audio
        level = level_caption(self.level_db)
        return (f'<figure class="hearproto-player" style="display:inline-block;margin:0 1em 1em 0">'
                f'<figcaption style="font-size:0.9em">{html.escape(self.title or "")}'
                f'{"<br>" + level if level else ""}</figcaption>{audio}</figure>')

    def __repr__(self) -> str:
        return f"<audio player{': ' + self.title if self.title else ''}>"


def peak_dbfs(wave) -> float:
    """The peak of a waveform in dB relative to full scale (-inf for silence)."""
    peak = float(np.abs(_to_numpy(wave)).max(initial=0.0))
    return 20 * np.log10(peak) if peak > 0 else -np.inf


def _energy_change_db(samples: np.ndarray, encoded: bytes) -> float:
    """How far (dB, absolute) decoding ``encoded`` moves the total energy of ``samples``."""
    decoded, _ = sf.read(io.BytesIO(encoded), dtype="float64")
    before, after = float(np.sum(np.square(samples, dtype=np.float64))), float(np.sum(decoded ** 2))
    if before == 0 or after == 0:
        return 0.0 if before == after else np.inf
    return abs(10 * np.log10(after / before))


def _peak_change_db(samples: np.ndarray, encoded: bytes) -> float:
    """How far (dB, absolute) decoding ``encoded`` moves the peak of ``samples`` (a sharp
    attack can lose 3 dB of it to MP3)."""
    decoded, _ = sf.read(io.BytesIO(encoded), dtype="float64")
    before, after = float(np.abs(samples).max()), float(np.abs(decoded).max())
    if before == 0 or after == 0:
        return 0.0 if before == after else np.inf
    return abs(20 * np.log10(after / before))


def _player_samples(samples: np.ndarray, normalize: bool) -> np.ndarray:
    """``samples`` scaled to a :data:`PLAYER_PEAK_DBFS` peak (with ``normalize``), clipped to
    [-1, 1], as float32."""
    if normalize and np.abs(samples).max() > 0:
        samples = samples * (10 ** (PLAYER_PEAK_DBFS / 20) / np.abs(samples).max())
    return np.clip(samples, -1, 1).astype(np.float32)


def audio_player(
    wave, sample_rate: int, title: str | None = None, normalize: bool = True,
    compressed: bool = True, level_db: float | None = None,
) -> AudioPlayer:
    """A player for a mono waveform ``(L,)``: MP3 by default (about 10x smaller than WAV and
    byte-for-byte deterministic; at :data:`MP3_MIN_RATE` or above, upsampled by an integer
    factor), WAV with ``compressed=False`` or where MP3 would move the sound's energy by more
    than :data:`MP3_MAX_LEVEL_CHANGE_DB`, or its peak by more than
    :data:`MP3_MAX_PEAK_CHANGE_DB`. ``normalize`` scales the peak
    to :data:`PLAYER_PEAK_DBFS`; ``level_db`` is a true level to show beside it."""
    samples = _to_numpy(wave).astype(np.float64).reshape(-1)
    if compressed:
        factor = -(-MP3_MIN_RATE // sample_rate)
        upsampled = scipy.signal.resample_poly(samples, factor, 1) if factor > 1 else samples
        upsampled = _player_samples(upsampled, normalize)
        buffer = io.BytesIO()
        sf.write(buffer, upsampled, sample_rate * factor, format="MP3")
        encoded = buffer.getvalue()
        if (_energy_change_db(upsampled, encoded) <= MP3_MAX_LEVEL_CHANGE_DB
                and _peak_change_db(upsampled, encoded) <= MP3_MAX_PEAK_CHANGE_DB):
            return AudioPlayer(encoded, "audio/mpeg", title, level_db)
    buffer = io.BytesIO()
    sf.write(buffer, _player_samples(samples, normalize), sample_rate, format="WAV",
             subtype="PCM_16")
    return AudioPlayer(buffer.getvalue(), "audio/wav", title, level_db)


def leveled_players(waves, sample_rate: int, titles: list[str | None],
                    compressed: bool = True) -> list[AudioPlayer]:
    """Players for sounds meant to be compared (one row): each normalised to
    :data:`PLAYER_PEAK_DBFS`, so that every one is audible, and captioned with its true peak
    relative to the loudest of the row (0 dB)."""
    waves = [_to_numpy(w) for w in waves]
    if len(titles) != len(waves):
        raise ValueError(f"{len(waves)} sounds but {len(titles)} titles")
    peaks = [peak_dbfs(w) for w in waves]
    loudest = max(peaks)
    return [audio_player(w, sample_rate, title, compressed=compressed,
                         level_db=peak - loudest if np.isfinite(loudest) else -np.inf)
            for w, title, peak in zip(waves, titles, peaks)]


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


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def architecture_figure(model) -> plt.Figure:
    """The paper's Figure 2 for ``model`` (a :class:`~hearproto.model.PrototypeModel`): the
    log-Mel input, the shared encoder, one decoder per transformation family predicting its
    parameters at every time step for every prototype, the transformed prototypes, and the
    errors that name the clip, with each part's parameter count."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    k, f = model.prototypes.shape
    decoders = {"gain": "gain g", "pitch": "pitch shift s", "filters": "filters (c, G) x2"}
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.set(xlim=(0, 10), ylim=(0, 4.2))
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", linewidth=1,
                                    facecolor=color, edgecolor="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)

    def arrow(start, end):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10,
                                     color="0.3", linewidth=1))

    box(0.1, 1.6, 1.3, 1.0, f"log-Mel clip\nx: (T, F={f})", "#e8eef7")
    box(1.9, 1.6, 1.5, 1.0, f"encoder\n(U-Net down path)\n{_count(model.encoder):,} params",
        "#dde8d5")
    for row, (name, label) in enumerate(decoders.items()):
        y = 3.0 - 1.2 * row
        box(4.0, y, 1.7, 0.8, f"decoder: {label}\n{_count(model.decoders[name]):,} params",
            "#f3e3cc")
        arrow((3.4, 2.1), (4.0, y + 0.4))
        arrow((5.7, y + 0.4), (6.5, 2.1))
    box(6.5, 2.7, 1.6, 0.9, f"{k} prototypes\n(K={k}, F={f})\n{k * f:,} params", "#f7dde0")
    box(6.5, 1.4, 1.6, 1.0, "each prototype\ntransformed at\nevery time step", "#f7dde0")
    arrow((7.3, 2.7), (7.3, 2.4))
    box(8.5, 1.4, 1.4, 1.0, "error against x\nper prototype (K,)\nargmin: the class",
        "#eeeeee")
    arrow((8.1, 1.9), (8.5, 1.9))
    arrow((1.4, 2.1), (1.9, 2.1))
    total = _count(model)
    ax.text(5, 0.05, f"{total:,} parameters in all; the transformations' parameters are "
            f"predicted per time step for each of the {k} prototypes", ha="center",
            fontsize=8.5, color="0.25")
    fig.tight_layout()
    return fig
