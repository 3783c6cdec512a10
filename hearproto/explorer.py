"""Explore a trained model's prototypes by ear: an ipywidgets explorer for Jupyter.

``PrototypeExplorer(checkpoint)`` shows a prototype picker (by class name), sliders for the
four transformations of the paper (gain, pitch factor, high and low filter cutoff and slope),
the transformed prototype as a spectrogram with a player, and the validation clips that this
prototype reconstructs best, each playable beside its reconstruction.

Everything the widgets show is also reachable from Python (:meth:`PrototypeExplorer.set`,
:attr:`~PrototypeExplorer.frame`, :attr:`~PrototypeExplorer.audio`, ...), which is how the
tests drive it. The maths is :func:`transform_frame`, a thin composition of
:mod:`hearproto.transforms`.

In a static page (the book) the Python callbacks cannot run; :func:`prototype_grid`
precomputes each prototype at a few pitch and gain values as plain audio players.
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from hearproto.audio import load_audio, mel_to_audio, prototype_to_audio
from hearproto.errors import AudioError
from hearproto.frontend import FrontEnd
from hearproto.identification import filter_knee_hz
from hearproto.model import PrototypeModel
from hearproto.transforms import FILTER_RANGE, GAIN_RANGE, PITCH_RANGE, MelBins, reconstruct
from hearproto.viz import (AudioPlayer, audio_player, audio_tag, leveled_players, level_caption,
                           peak_dbfs, show_frame, show_logmel)

__all__ = ["Settings", "transform_frame", "PrototypeExplorer", "prototype_grid", "PrototypeGrid"]

@dataclass(frozen=True)
class Settings:
    """One setting of the four transformations (the identity by default).

    ``gain`` is added to the scaled log power; ``pitch`` is the frequency factor ``s``;
    ``*_cutoff`` is the filter's ``c`` and ``*_slope`` its ``G`` (``hearproto.transforms``).
    """

    gain: float = 0.0
    pitch: float = 1.0
    high_cutoff: float = 0.0
    high_slope: float = 0.0
    low_cutoff: float = 0.0
    low_slope: float = 0.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the first value outside the model's range."""
        ranges = {"gain": GAIN_RANGE, "pitch": PITCH_RANGE, "high_cutoff": FILTER_RANGE,
                  "high_slope": FILTER_RANGE, "low_cutoff": FILTER_RANGE,
                  "low_slope": FILTER_RANGE}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not (low - 1e-6 <= value <= high + 1e-6):
                raise ValueError(f"{name}={value} is outside the model's range "
                                 f"[{low:.3g}, {high:.3g}]")


def transform_frame(prototype: Tensor, settings: Settings, bins: MelBins) -> Tensor:
    """The prototype frame ``(F,)`` transformed by ``settings``: pitch, gain, then filters,
    exactly as the model applies them (:func:`hearproto.transforms.reconstruct`). ``(F,)``."""
    settings.check()
    one = torch.ones(1, 1, 1, dtype=prototype.dtype)
    filters = torch.tensor([settings.high_cutoff, settings.high_slope, settings.low_cutoff,
                            settings.low_slope], dtype=prototype.dtype).view(1, 1, 1, 4)
    out = reconstruct(prototype[None], pitch=settings.pitch * one, gain=settings.gain * one,
                      filters=filters, constants=bins)
    return out.reshape(-1)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def _mp3(wave: np.ndarray, sample_rate: int, normalize: bool = False) -> bytes:
    return audio_player(wave, sample_rate, normalize=normalize).data


@dataclass
class BestClip:
    """A validation clip that a prototype reconstructs well."""

    index: int  # in the validation split
    label: str  # its class
    error: float  # the reconstruction error (mean squared, scaled log-Mel)


class PrototypeExplorer:
    """Interactive prototype explorer for a checkpoint of our model (Jupyter, ipywidgets).

    ``checkpoint``: a ``last.pt`` (or stage) checkpoint; ``split``: where the best clips come
    from; ``k``: how many; ``data_root``: the dataset's folder if it moved since training;
    ``seconds``: length of the transformed prototype's sound.

    >>> explorer = PrototypeExplorer("runs/instruments/last.pt")  # doctest: +SKIP
    >>> explorer  # in Jupyter: the widget                           # doctest: +SKIP
    >>> explorer.select("Violin"); explorer.set(pitch=1.5, gain=0.2)  # doctest: +SKIP
    """

    def __init__(self, checkpoint: str | os.PathLike, split: str = "val", k: int = 3,
                 data_root: str | None = None, seconds: float = 1.0, n_iter: int = 32,
                 device: str = "cpu") -> None:
        from hearproto.metrics import UNMAPPED
        from hearproto.training import (TrainConfig, checkpoint_dataset, clip_errors, evaluation_split, load_checkpoint)
        from hearproto.training.evaluation import mapping_for

        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.checkpoint = Path(checkpoint)
        model, payload = load_checkpoint(self.checkpoint, device)
        self.model: PrototypeModel = model.eval()
        self.frontend: FrontEnd = model.frontend
        self.classes: list[str] = list(payload["classes"])
        self.seconds, self.n_iter, self.k = seconds, n_iter, k
        config = TrainConfig.from_dict(payload["config"])
        data = checkpoint_dataset(self.checkpoint, payload, config, data_root)
        self.split = split
        self.data_root = Path(data.root)
        self.clips = evaluation_split(data, split)
        mapping = mapping_for(model, config.mode, data.split("train", crop_frames=None), device,
                              config.eval_batch_size)
        self.errors = clip_errors(model, self.clips, config.eval_batch_size, device).numpy()
        self.names = [
            self.classes[c] if config.mode == "supervised"
            else f"prototype {k}: " + (self.classes[c] if c != UNMAPPED else "no class")
            for k, c in enumerate(mapping)
        ]
        self.prototypes = model.prototypes.detach().float().cpu()
        self.bins = model.bins
        self.index = 0
        self.settings = Settings()
        self._clip_audio: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._widget = None
        self._learned_peaks: dict[int, float] = {}
        self._own = None  # your clip (load_clip): its name, frames (T, F) and recording
        self._own_audio: dict[int, np.ndarray] = {}  # its reconstruction by prototype k
        self._refresh_sound()

    # -- the Python API -----------------------------------------------------------------------

    def select(self, prototype: int | str) -> None:
        """Show prototype ``prototype`` (an index or a name from :attr:`names`)."""
        if isinstance(prototype, str):
            if prototype not in self.names:
                raise ValueError(f"no prototype named {prototype!r}; choose from "
                                 f"{', '.join(self.names)}")
            prototype = self.names.index(prototype)
        if not 0 <= int(prototype) < len(self.names):
            raise ValueError(f"prototype index {prototype} is outside 0..{len(self.names) - 1}")
        self.index = int(prototype)
        self._sync_widgets()
        self._refresh_sound()

    def set(self, **values: float) -> None:
        """Change some transformation values (the names of :class:`Settings`)."""
        unknown = set(values) - set(Settings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; choose from "
                             f"{', '.join(Settings.__dataclass_fields__)}")
        current = {name: getattr(self.settings, name) for name in Settings.__dataclass_fields__}
        settings = Settings(**{**current, **{n: float(v) for n, v in values.items()}})
        settings.check()
        self.settings = settings
        self._sync_widgets()
        self._refresh_sound()

    def reset(self) -> None:
        """Back to the untransformed prototype."""
        self.set(**Settings().__dict__)

    @property
    def name(self) -> str:
        return self.names[self.index]

    @property
    def prototype(self) -> Tensor:
        """The selected prototype, untransformed. ``(F,)``."""
        return self.prototypes[self.index]

    @property
    def frame(self) -> Tensor:
        """The selected prototype under the current settings. ``(F,)``."""
        return transform_frame(self.prototype, self.settings, self.bins)

    @property
    def spectrogram(self) -> np.ndarray:
        """What the spectrogram shows: the transformed frame held for ``seconds``. ``(T, F)``."""
        frames = max(1, self.frontend.num_frames(int(self.seconds * self.frontend.sample_rate)))
        return np.repeat(self.frame.numpy()[None], frames, axis=0)

    @property
    def audio(self) -> np.ndarray:
        """The transformed prototype as sound, true loudness (not normalised). ``(L,)``."""
        return self._audio

    def best_clips(self) -> list[BestClip]:
        """The ``k`` clips of the split that the selected prototype reconstructs best,
        lowest error first."""
        column = self.errors[:, self.index]
        order = np.argsort(column, kind="stable")[: self.k]
        labels = self.clips.labels.numpy()
        return [BestClip(int(i), self.classes[labels[i]], float(column[i])) for i in order]

    def clip_and_reconstruction(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``index`` of the split and its reconstruction by the selected prototype, both
        as log-Mel spectrograms ``(T, F)``."""
        x = torch.from_numpy(np.array(self.clips.frames(index), dtype=np.float32))[None]
        with torch.no_grad():
            recon = self.model.reconstructions(
                x.to(self.prototypes.device), prototypes=torch.tensor([self.index]))[0, 0]
        return x[0].numpy(), recon.float().cpu().numpy()

    def load_clip(self, source, sample_rate: int | None = None) -> None:
        """Your clip: a sound file's path, or a 1-D waveform at ``sample_rate``, heard through
        the model's front end (a clip shorter than 16 frames is extended by repeating it). The
        view then shows and plays it with its reconstruction by the selected prototype and by
        the one that reconstructs it best. A bad file is an :class:`AudioError` naming it."""
        from hearproto.identification import _hear

        heard = _hear(source, self.frontend, sample_rate)
        with torch.no_grad():
            errors = self.model.errors(heard.frames[None])[0][0].float().cpu().numpy()
        self._own = {"name": Path(heard.name).name, "frames": heard.frames.numpy(),
                     "recording": heard.wave, "errors": errors}
        self._own_audio = {}
        if self._widget is not None:
            self._update_view()

    @property
    def own_clip(self) -> dict | None:
        """Your clip as :meth:`load_clip` heard it (``name``, ``frames`` ``(T, F)``,
        ``recording``, ``errors`` ``(K,)`` by every prototype), or None."""
        return self._own

    def own_reconstruction(self, prototype: int | None = None) -> np.ndarray:
        """Your clip's reconstruction ``(T, F)`` by ``prototype`` (default: the selected
        one)."""
        if self._own is None:
            raise ValueError("no clip loaded: call load_clip(path) first")
        k = self.index if prototype is None else int(prototype)
        x = torch.from_numpy(self._own["frames"])[None]
        with torch.no_grad():
            recon = self.model.reconstructions(x, prototypes=torch.tensor([k]))[0, 0]
        return recon.float().cpu().numpy()

    @property
    def own_best(self) -> int:
        """The prototype that reconstructs your clip best."""
        if self._own is None:
            raise ValueError("no clip loaded: call load_clip(path) first")
        return int(np.argmin(self._own["errors"]))

    def own_figure(self) -> Figure:
        """Your clip, and its reconstructions by the selected prototype and by the best one
        (spectrograms, seconds and Hz)."""
        figure = Figure(figsize=(10.5, 2.8))
        axes = figure.subplots(1, 3, sharey=True)
        errors = self._own["errors"]
        show_logmel(self._own["frames"], self.frontend, ax=axes[0], colorbar=False,
                    title=f"your clip: {self._own['name']}")
        for ax, k, role in ((axes[1], self.index, "selected"), (axes[2], self.own_best, "best")):
            show_logmel(self.own_reconstruction(k), self.frontend, ax=ax, colorbar=False,
                        title=f"by {self.names[k]} ({role}), error {100 * errors[k]:.2f}")
            ax.set_ylabel("")
        figure.tight_layout()
        return figure

    def _own_sound(self, k: int) -> np.ndarray:
        if k not in self._own_audio:
            self._own_audio[k] = mel_to_audio(self.own_reconstruction(k), self.frontend,
                                              n_iter=self.n_iter)
        return self._own_audio[k]

    # -- rendering ----------------------------------------------------------------------------

    def figure(self) -> Figure:
        """The transformed prototype: its frame against the original (Hz axis), and as a
        spectrogram (seconds, Hz)."""
        figure = Figure(figsize=(9.0, 3.0))
        left, right = figure.subplots(1, 2)
        show_frame(self.prototype, self.frontend, ax=left, color="tab:blue", label="prototype")
        show_frame(self.frame, self.frontend, ax=left, color="tab:red", label="transformed")
        left.set_ylim(-0.6, 1.6)
        left.legend(fontsize=8, loc="upper right")
        left.grid(alpha=0.3)
        left.set_title(self.name)
        show_logmel(self.spectrogram, self.frontend, ax=right, colorbar=False,
                    title="transformed prototype")
        figure.tight_layout()
        return figure

    def _refresh_sound(self) -> None:
        wave = prototype_to_audio(self.frame, self.frontend, seconds=self.seconds,
                                  n_iter=self.n_iter)
        self._audio = wave
        if self._widget is not None:
            self._update_view()

    def _learned_peak(self) -> float:
        """The peak (dBFS) of the selected prototype as learned, untransformed."""
        if self.index not in self._learned_peaks:
            wave = prototype_to_audio(self.prototype, self.frontend, seconds=self.seconds,
                                      n_iter=self.n_iter)
            self._learned_peaks[self.index] = peak_dbfs(wave)
        return self._learned_peaks[self.index]

    def clip_recording(self, index: int) -> np.ndarray:
        """Clip ``index`` as recorded (its audio file); where the file cannot be read any
        more, its log-Mel spectrogram made audible. ``(L,)``."""
        try:
            return load_audio(self.data_root / self.clips.paths[index], self.frontend.sample_rate)
        except (OSError, AudioError):
            clip, _ = self.clip_and_reconstruction(index)
            return mel_to_audio(clip, self.frontend, n_iter=self.n_iter)

    def _clip_sounds(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        key = (self.index, index)
        if key not in self._clip_audio:
            _, recon = self.clip_and_reconstruction(index)
            self._clip_audio[key] = (self.clip_recording(index),
                                     mel_to_audio(recon, self.frontend, n_iter=self.n_iter))
        return self._clip_audio[key]

    # -- widgets ------------------------------------------------------------------------------

    @property
    def widget(self):
        """The ipywidgets view (built on first use)."""
        if self._widget is None:
            self._build_widget()
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _build_widget(self) -> None:
        import ipywidgets as w

        def slider(name: str, description: str, bounds: tuple[float, float], step: float):
            return w.FloatSlider(value=getattr(self.settings, name), min=bounds[0],
                                 max=bounds[1], step=step, description=description,
                                 continuous_update=False, readout_format=".2f",
                                 style={"description_width": "9em"},
                                 layout=w.Layout(width="26em"))

        self._picker = w.Dropdown(options=[(n, i) for i, n in enumerate(self.names)],
                                  value=self.index, description="prototype")
        self._sliders = {
            "gain": slider("gain", "gain", GAIN_RANGE, 0.01),
            "pitch": slider("pitch", "pitch factor", PITCH_RANGE, 0.01),
            "high_cutoff": slider("high_cutoff", "high cutoff c_h", FILTER_RANGE, 0.01),
            "high_slope": slider("high_slope", "high slope G_h", FILTER_RANGE, 0.01),
            "low_cutoff": slider("low_cutoff", "low cutoff c_l", FILTER_RANGE, 0.01),
            "low_slope": slider("low_slope", "low slope G_l", FILTER_RANGE, 0.01),
        }
        self._knees = w.HTML()
        reset = w.Button(description="reset", tooltip="back to the untransformed prototype")
        self._image = w.Image(format="png")
        self._player = w.Audio(format="mpeg", autoplay=False, loop=False)
        self._clips_box = w.VBox()
        self._own_box = w.VBox()
        self._path = w.Text(placeholder="a sound file on this machine", description="your clip",
                            continuous_update=False, layout=w.Layout(width="30em"))
        load = w.Button(description="load", tooltip="hear this file through the model")
        self._upload = w.FileUpload(accept="audio/*,.wav,.flac,.ogg,.mp3", multiple=False,
                                    description="or upload")
        self._own_status = w.HTML()
        self._syncing = False

        def on_load(_) -> None:
            if self._path.value.strip():
                self._load_from(self._path.value.strip())

        def on_upload(change) -> None:
            files = change["new"]
            if files:
                self._load_upload(files[0])

        def on_pick(change) -> None:
            if not self._syncing:
                self.select(change["new"])

        def on_slide(change) -> None:
            if not self._syncing:
                self.set(**{name: s.value for name, s in self._sliders.items()})

        self._picker.observe(on_pick, names="value")
        for control in self._sliders.values():
            control.observe(on_slide, names="value")
        reset.on_click(lambda _: self.reset())
        load.on_click(on_load)
        self._path.observe(on_load, names="value")  # Enter, or leaving the box
        self._upload.observe(on_upload, names="value")

        self._image.layout = w.Layout(width="100%", max_width="48em")
        controls = w.VBox([self._picker, *self._sliders.values(), self._knees,
                           w.HBox([reset, w.HTML("&nbsp;<b>listen</b>&nbsp;"), self._player])])
        self._widget = w.VBox([
            controls,
            self._image,
            w.HTML(f"<b>The {self.k} {self.clips_split_name} clips this prototype reconstructs "
                   "best</b>: each recording, then its reconstruction by this prototype"),
            self._clips_box,
            w.HTML("<b>Your clip</b>: a file on the machine running this notebook, or one you "
                   "upload, beside its reconstruction by this prototype and by the best one"),
            w.HBox([self._path, load, self._upload]),
            self._own_status,
            self._own_box,
        ])
        self._update_view()

    def _load_from(self, source) -> None:
        """Load ``source`` for the widget: a bad file is one line under the path box."""
        try:
            self.load_clip(source)
            self._own_status.value = ""
        except (AudioError, OSError, ValueError) as err:
            self._own_status.value = (f"<span style='color:#b00'>{html.escape(str(err))}"
                                      "</span>")

    def _load_upload(self, upload) -> None:
        """An uploaded file (ipywidgets 8: a dict with ``name`` and ``content``), written to a
        temporary file of the same suffix and loaded."""
        import tempfile

        name = upload["name"]
        with tempfile.TemporaryDirectory(prefix="hearproto-upload-") as folder:
            path = Path(folder) / Path(name).name
            path.write_bytes(bytes(upload["content"]))
            self._load_from(path)
        if self._own is not None and self._own_status.value == "":
            self._own["name"] = Path(name).name
            self._update_view()

    @property
    def clips_split_name(self) -> str:
        return {"val": "validation"}.get(self.split, self.split)

    def _sync_widgets(self) -> None:
        """Make the widgets show the Python state (after a call of :meth:`set`/:meth:`select`)."""
        if self._widget is None:
            return
        self._syncing = True
        try:
            self._picker.value = self.index
            for name, control in self._sliders.items():
                control.value = getattr(self.settings, name)
        finally:
            self._syncing = False

    def _update_view(self) -> None:
        import ipywidgets as w

        self._image.value = _png(self.figure())
        rate = self.frontend.sample_rate
        # audible at any gain: normalised, with the level relative to the prototype as learned
        self._player.value = _mp3(self._audio, rate, normalize=True)
        self._knees.value = (
            "<small>knees: high filter at "
            f"{filter_knee_hz(self.settings.high_cutoff, self.frontend):.0f} Hz, low filter at "
            f"{filter_knee_hz(self.settings.low_cutoff, self.frontend):.0f} Hz; level "
            f"{peak_dbfs(self._audio) - self._learned_peak():+.0f} dB against the prototype "
            "as learned</small>")
        rows = []
        for clip in self.best_clips():
            sound, recon = self._clip_sounds(clip.index)
            rows.append(w.HBox([
                w.HTML(f"{html.escape(clip.label)} (clip {clip.index}, error "
                       f"{100 * clip.error:.2f})", layout=w.Layout(width="22em")),
                w.Audio(value=_mp3(sound, rate, normalize=True), format="mpeg", autoplay=False),
                w.Audio(value=_mp3(recon, rate, normalize=True), format="mpeg", autoplay=False),
            ]))
        self._replace(self._clips_box, rows)
        own = []
        if self._own is not None:
            best = self.own_best
            own = [w.Image(value=_png(self.own_figure()), format="png",
                           layout=w.Layout(width="100%", max_width="56em")),
                   w.HBox([w.HTML(f"{html.escape(self._own['name'])}: the recording, its "
                                  f"reconstruction by {html.escape(self.name)}, and by "
                                  f"{html.escape(self.names[best])} (the best)",
                                  layout=w.Layout(width="22em")),
                           *(w.Audio(value=_mp3(sound, rate, normalize=True), format="mpeg",
                                     autoplay=False)
                             for sound in (self._own["recording"], self._own_sound(self.index),
                                           self._own_sound(best)))])]
        self._replace(self._own_box, own)

    @staticmethod
    def _replace(box, children: list) -> None:
        """Put ``children`` in ``box``, closing what was there (or its state lingers in a saved
        notebook)."""
        old = box.children
        box.children = children
        for widget in old:
            for child in getattr(widget, "children", ()):
                child.close()
            widget.close()


class PrototypeGrid:
    """An HTML table of audio players: one row per prototype, one column per setting. Each
    player peaks at :data:`~hearproto.viz.PLAYER_PEAK_DBFS`; its true level, relative to the
    loudest of its row, is written under it."""

    def __init__(self, rows: dict[str, list[tuple[str, AudioPlayer]]], columns: list[str]) -> None:
        self.rows, self.columns = rows, columns

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for name, cells in self.rows.items():
            players = "".join(
                f"<td>{audio_tag(player.data, player.mimetype, f'{name}, {column}', '100%')}"
                f"<br>{level_caption(player.level_db)}</td>"
                for column, player in cells)
            body.append(f"<tr><th style='text-align:left'>{html.escape(name)}</th>{players}</tr>")
        # fixed layout: the columns share the article's width, the players shrink to fit
        return (f'<table class="hearproto-grid" style="width:100%;table-layout:fixed;'
                f'font-size:0.85em"><thead><tr><th style="width:14%">prototype</th>{head}'
                f"</tr></thead><tbody>{''.join(body)}</tbody></table>")

    def __repr__(self) -> str:
        return f"<grid of {len(self.rows)} prototypes x {len(self.columns)} settings>"


def settings_label(settings: Settings) -> str:
    """A short column title, e.g. ``pitch ×1.41`` or ``gain +0.25``."""
    parts = []
    if settings.pitch != 1.0:
        parts.append(f"pitch ×{settings.pitch:.2f}")
    if settings.gain != 0.0:
        parts.append(f"gain {settings.gain:+.2f}")
    return ", ".join(parts) or "as learned"


def prototype_grid(prototypes: Tensor, names: list[str], frontend: FrontEnd,
                   settings: list[Settings], seconds: float = 0.75, n_iter: int = 32
                   ) -> PrototypeGrid:
    """Every prototype ``(K, F)`` played under each of ``settings``: the static stand-in for
    the explorer where no kernel runs. Each row's players are leveled
    (:func:`~hearproto.viz.leveled_players`): all audible, their true levels written."""
    if len(names) != len(prototypes):
        raise ValueError(f"{len(prototypes)} prototypes but {len(names)} names")
    bins = MelBins.from_frontend(frontend)
    labels = [settings_label(s) for s in settings]
    rows = {}
    for name, prototype in zip(names, prototypes.detach().float().cpu()):
        waves = [prototype_to_audio(transform_frame(prototype, setting, bins), frontend,
                                    seconds=seconds, n_iter=n_iter) for setting in settings]
        rows[name] = list(zip(labels, leveled_players(waves, frontend.sample_rate, labels)))
    return PrototypeGrid(rows, labels)

