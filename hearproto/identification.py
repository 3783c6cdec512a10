"""Identify any sound with a trained model, and explain the choice by ear.

:func:`identify` reads a file (or takes a waveform), hears it through the model's front end,
and ranks the prototypes by how well each reconstructs it: ``L_rec`` (the mean squared error
of the scaled log-Mels, x100, as the tables give it) and, for a supervised model, the
probability ``softmax(-beta L_rec)`` its cross-entropy was trained with. A file longer than the
model's training crop is cut into windows of that length, each identified; the summary ranks
the prototypes by their error averaged over the windows (weighted by frames). A clip shorter
than the encoder's 16 frames is extended by repeating it from its start, as the data are.

:func:`explain` writes, for the best prototype and the runner-up, the input as the front end
hears it, the prototype alone, its reconstruction, the reconstruction with each transformation
switched off in turn (WAV files levelled to -3 dBFS, their true peak recorded), one figure
(spectrograms and the gain, pitch and filter curves over time, in dB, semitones and Hz) and
``explain.json``, which lists them with the numbers.

Models are our checkpoints (a run's ``last.pt``, or its folder) or the shipped ones by name
(:data:`SHIPPED_MODELS`, unpacked from ``weights/`` on first use).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hearproto.audio import file_sample_rate, load_audio, mel_to_audio, prototype_to_audio, save_audio
from hearproto.data.cache import ENCODER_FRAMES, MIN_FRAMES, SILENCE_RMS, extend_frames, silence_threshold
from hearproto.errors import AudioError, CheckpointError
from hearproto.files import atomic_path, data_home
from hearproto.frontend import LOG_RANGE, FrontEnd, LogMel
from hearproto.model import PrototypeModel, Transformations
from hearproto.transforms import SOFTPLUS_BETA, reconstruct

__all__ = ["SHIPPED_MODELS", "Candidate", "Window", "Identification", "identify",
           "load_model", "explain", "transformation_curves", "filter_knee_hz"]

#: The shipped models :func:`load_model` knows by name: (dataset, method) of the book's
#: ``full`` scale, seed 0.
SHIPPED_MODELS = {
    "instruments": ("instruments", "ours-supervised"),
    "instruments-unsupervised": ("instruments", "ours-unsupervised"),
    "speakers": ("speakers", "ours-supervised"),
    "speakers-unsupervised": ("speakers", "ours-unsupervised"),
}
#: The training crop of a dataset this module does not know (``folder``'s).
DEFAULT_CROP = 256
#: One unit of scaled log power in dB (the front end's log scale spans LOG_RANGE decades).
DB_PER_UNIT = 10.0 * LOG_RANGE
#: The level the explanation's WAV files are written at (their true peak is recorded).
EXPLAIN_PEAK_DBFS = -3.0


@dataclass
class Candidate:
    """One prototype's fit to a clip: ``L_rec`` x100, and for a supervised model the
    probability ``softmax(-beta L_rec)`` over the prototypes."""

    rank: int
    prototype: int
    name: str
    L_rec: float
    probability: float | None = None


@dataclass
class Window:
    """The prototypes' fit to the frames ``start``-``stop`` of the clip (seconds too)."""

    start: int
    stop: int
    start_s: float
    stop_s: float
    candidates: list[Candidate]


@dataclass
class Identification:
    """What :func:`identify` found: ``summary`` (the top prototypes over the whole clip),
    ``windows`` (one per crop-long window; one for a clip no longer than the crop),
    ``errors`` ``(K,)`` (the summary's raw mean squared errors) and how the clip was heard."""

    source: str
    model: str
    mode: str
    sample_rate: int
    seconds: float
    frames: int
    extended: bool
    crop_frames: int
    summary: list[Candidate]
    windows: list[Window]
    errors: list[float] = field(repr=False, default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.summary[0]

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# The model


def _shipped_run(name: str) -> Path:
    """The folder of shipped model ``name``, unpacked from ``weights/`` (once) into the data
    home's ``shipped/`` (never into a run folder you trained)."""
    from hearproto.runner.shipped import ensure_unpacked, weights_dir

    dataset, method = SHIPPED_MODELS[name]
    folder = weights_dir() / "full" / dataset
    sidecars = sorted(folder.glob(f"{method}-seed0-*.json"))
    sidecars = [s for s in sidecars if not s.stem.split("-seed0-", 1)[1].startswith("heldout")]
    if not sidecars:
        raise CheckpointError(f"--model {name}: {folder} ships no {method} run; train one "
                              f"(hearproto experiments train --datasets {dataset} --methods "
                              f"{method}) or pass a checkpoint")
    run = data_home() / "shipped" / "full" / dataset / sidecars[-1].stem
    ensure_unpacked(run, "full", dataset)
    return run


def load_model(model: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[PrototypeModel, dict, str]:
    """Our model ``model``: a shipped one by name (:data:`SHIPPED_MODELS`), a checkpoint file
    or a run folder (its ``last.pt``). Returns the model (in eval mode), its checkpoint
    dictionary and the name to report it by. A baseline's or a foreign file is refused in
    one line."""
    from hearproto.training import load_checkpoint

    text = str(model)
    if text in SHIPPED_MODELS:
        path, label = _shipped_run(text) / "last.pt", f"{text} (shipped)"
    else:
        path, label = Path(text).expanduser(), text
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"--model {text}: neither a shipped model ({', '.join(SHIPPED_MODELS)}) nor a "
                "checkpoint file (a run's last.pt, or its folder)")
    net, payload = load_checkpoint(path, device)
    net.eval()
    return net, payload, label


def _resolved(model, payload: dict | None, device) -> tuple[PrototypeModel, dict, str]:
    """``model`` loaded (:func:`load_model`) unless it is a loaded model with its
    ``payload`` already."""
    if isinstance(model, PrototypeModel):
        if payload is None:
            raise ValueError("a loaded model needs its checkpoint payload")
        return model.eval(), payload, payload.get("name", "model")
    return load_model(model, device)


def prototype_names(payload: dict) -> list[str]:
    """What to call each prototype: its class (supervised), ``cluster k`` (unsupervised)."""
    if payload["config"].get("mode") == "supervised":
        return [str(c) for c in payload["classes"]]
    return [f"cluster {k}" for k in range(payload["num_prototypes"])]


def _crop_frames(payload: dict) -> int:
    from hearproto.data import DATASETS

    spec = DATASETS.get(payload["config"].get("dataset"))
    return spec.crop_frames if spec is not None else DEFAULT_CROP


# --------------------------------------------------------------------------------------------
# Hearing the clip


def _waveform(source, frontend: FrontEnd, sample_rate: int | None) -> tuple[np.ndarray, str]:
    """The clip ``source`` (a path, or a 1-D waveform at ``sample_rate``) as mono float32 at
    the front end's rate, and its name. Silence is refused in one line."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        wave = load_audio(path, frontend.sample_rate)  # names the file if it is bad
        rate = file_sample_rate(path)
        if rate and frontend.sample_rate > 2 * rate:
            warnings.warn(f"{path}: recorded at {rate} Hz, heard at {frontend.sample_rate} Hz "
                          f"by this model ({frontend.sample_rate / rate:.1f}x): its mel bins "
                          f"above {rate // 2} Hz hold no sound", stacklevel=3)
        floor, name = silence_threshold(path), str(path)
    else:
        if sample_rate is None:
            raise ValueError("a waveform needs its sample_rate")
        samples = torch.as_tensor(source, dtype=torch.float32).numpy()
        if samples.ndim != 1:
            raise ValueError(f"a waveform is 1-D (samples,), got shape {samples.shape}")
        if not np.isfinite(samples).all():
            raise AudioError("the waveform contains NaN or infinite samples")
        wave = load_waveform(samples, sample_rate, frontend.sample_rate)
        floor, name = SILENCE_RMS, "waveform"
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    if rms < floor:
        raise AudioError(f"{name}: silent (RMS {rms:.1e}, below {floor:.1e}): nothing to identify")
    return wave, name


def load_waveform(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``samples`` at ``rate`` resampled to ``target`` (soxr, as files are)."""
    import soxr

    if rate != target:
        samples = soxr.resample(samples, rate, target, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _windows(frames: int, crop: int) -> list[tuple[int, int]]:
    """Crop-long windows covering ``frames``, end to end, the last one ending at the clip's
    end; the whole clip where it is no longer than ``crop``."""
    if frames <= crop:
        return [(0, frames)]
    starts = list(range(0, frames - crop + 1, crop))
    if starts[-1] + crop < frames:
        starts.append(frames - crop)
    return [(s, s + crop) for s in starts]


def _ranked(errors: torch.Tensor, names: list[str], beta: float | None, top: int
            ) -> list[Candidate]:
    """The ``top`` prototypes of ``errors`` ``(K,)``, best first."""
    probabilities = torch.softmax(-beta * errors, 0) if beta is not None else None
    order = torch.argsort(errors)[:top].tolist()
    return [Candidate(rank + 1, k, names[k], 100 * float(errors[k]),
                      None if probabilities is None else float(probabilities[k]))
            for rank, k in enumerate(order)]


@dataclass
class _Heard:
    """A clip as the front end hears it: ``frames`` ``(T', F)`` (extended to the encoder's
    frames if shorter: ``extended``; ``length``, the frames it had), its name and seconds, and
    ``wave`` ``(N,)``, the recording at the front end's rate."""

    name: str
    seconds: float
    frames: torch.Tensor
    length: int
    extended: bool
    wave: np.ndarray


def _hear(source, frontend: FrontEnd, sample_rate: int | None) -> _Heard:
    wave, name = _waveform(source, frontend, sample_rate)
    frames = LogMel.from_frontend(frontend)(torch.from_numpy(wave)).numpy()
    if frames.shape[0] < MIN_FRAMES:
        shortest = 1000 * (MIN_FRAMES - 1) * frontend.hop_length / frontend.sample_rate
        raise AudioError(f"{name}: too short ({1000 * wave.size / frontend.sample_rate:.0f} ms; "
                         f"a clip needs {MIN_FRAMES} frames, {shortest:.0f} ms)")
    return _Heard(name, round(wave.size / frontend.sample_rate, 3),
                  torch.from_numpy(np.array(extend_frames(frames), dtype=np.float32)),
                  int(frames.shape[0]), frames.shape[0] < ENCODER_FRAMES, wave)


@torch.no_grad()
def _identified(heard: _Heard, net: PrototypeModel, payload: dict, label: str, top: int,
                device) -> Identification:
    names = prototype_names(payload)
    supervised = payload["config"].get("mode") == "supervised"
    beta = float(net.beta) if supervised else None
    top = min(top, net.num_prototypes)
    crop = _crop_frames(payload)
    frontend, frames = net.frontend, heard.frames
    seconds_per_frame = frontend.hop_length / frontend.sample_rate
    windows, total, weight = [], torch.zeros(net.num_prototypes), 0
    for start, stop in _windows(frames.shape[0], crop):
        errors = net.errors(frames[None, start:stop].to(device))[0][0].float().cpu()
        total += (stop - start) * errors
        weight += stop - start
        windows.append(Window(start, stop, round(start * seconds_per_frame, 3),
                              round(stop * seconds_per_frame, 3),
                              _ranked(errors, names, beta, top)))
    mean = total / weight if len(windows) > 1 else errors
    return Identification(
        source=heard.name, model=label, mode=payload["config"].get("mode", "supervised"),
        sample_rate=frontend.sample_rate, seconds=heard.seconds, frames=heard.length,
        extended=heard.extended, crop_frames=crop, summary=_ranked(mean, names, beta, top),
        windows=windows, errors=[float(e) for e in mean])


def identify(source, model: str | os.PathLike | PrototypeModel = "instruments", top: int = 3,
             sample_rate: int | None = None, device: str = "cpu",
             payload: dict | None = None) -> Identification:
    """Identify the clip ``source`` (a file path, or a 1-D waveform with its ``sample_rate``)
    with ``model`` (a shipped model's name, a checkpoint or run folder; or a loaded
    :class:`~hearproto.model.PrototypeModel` with its checkpoint ``payload``): the ``top``
    prototypes over the whole clip and in each window of the training crop's length."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    net, payload, label = _resolved(model, payload, device)
    return _identified(_hear(source, net.frontend, sample_rate), net, payload, label, top,
                       device)


# --------------------------------------------------------------------------------------------
# Explaining it


def filter_knee_hz(cutoff: float, frontend: FrontEnd) -> float:
    """Frequency (Hz) of the mel bin where a filter with cutoff ``c`` bends,
    ``f = 0.5 - c`` on the normalised bin axis."""
    frequencies = frontend.mel_frequencies()
    position = (0.5 - cutoff) * (len(frequencies) - 1)
    return float(np.interp(position, np.arange(len(frequencies)), frequencies))


def transformation_curves(params: Transformations, frontend: FrontEnd) -> dict[str, list]:
    """One prototype's transformations over time (``params`` of shape ``(1, 1, T[, 4])``) in
    the units a listener reads: the gain in dB, the pitch shift in semitones, each filter's
    knee in Hz and its level at the band edge it lifts or cuts (the top bin for the high
    filter, the bottom bin for the low one) in dB. A transformation that is off is absent."""
    curves: dict[str, list] = {}
    if params.gain is not None:
        curves["gain_db"] = (DB_PER_UNIT * params.gain[0, 0]).tolist()
    if params.pitch is not None:
        curves["pitch_semitones"] = (12 * torch.log2(params.pitch[0, 0])).tolist()
    if params.filters is not None:
        c_h, g_h, c_l, g_l = params.filters[0, 0].unbind(-1)
        edge = lambda c: torch.nn.functional.softplus(2 * (0.5 + c), beta=SOFTPLUS_BETA)
        curves["high_knee_hz"] = [filter_knee_hz(float(c), frontend) for c in c_h]
        curves["high_level_db"] = (DB_PER_UNIT * g_h * edge(c_h)).tolist()
        curves["low_knee_hz"] = [filter_knee_hz(float(c), frontend) for c in c_l]
        curves["low_level_db"] = (DB_PER_UNIT * g_l * edge(-c_l)).tolist()
    return curves


def _write_wav(path: Path, wave: np.ndarray, rate: int) -> float:
    """Write ``wave`` levelled to :data:`EXPLAIN_PEAK_DBFS`; returns its true peak (dBFS)."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    true_db = 20 * math.log10(peak) if peak > 0 else float("-inf")
    if peak > 0:
        wave = wave * (10 ** (EXPLAIN_PEAK_DBFS / 20) / peak)
    save_audio(path, wave, rate, overwrite=True)  # written atomically
    return round(true_db, 1)


def _prepare_folder(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out}: the folder holds files already; choose another, or "
                                  "pass --force to replace what is there")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


@torch.no_grad()
def explain(source, out: str | os.PathLike,
            model: str | os.PathLike | PrototypeModel = "instruments",
            sample_rate: int | None = None, device: str = "cpu", force: bool = False,
            iterations: int = 32, payload: dict | None = None) -> dict:
    """Identify ``source`` (as :func:`identify`, ``model`` and ``payload`` as there) and
    write into the folder ``out`` what the
    best prototype and the runner-up had to do to become it, in the window where the best one
    fits best: the WAV files and ``explain.png`` that :mod:`hearproto.identification` describes, and
    ``explain.json`` (returned), which lists them with their errors and true levels. A folder
    that holds files is refused unless ``force``. ``iterations``: Griffin-Lim's."""
    net, payload, label = _resolved(model, payload, device)
    if net.num_prototypes < 2:
        raise ValueError("explaining needs a model of at least two prototypes")
    heard = _hear(source, net.frontend, sample_rate)
    found = _identified(heard, net, payload, label, 2, device)
    out = Path(out)
    _prepare_folder(out, force)
    frontend, rate, frames, name = net.frontend, net.frontend.sample_rate, heard.frames, heard.name
    best, runner_up = found.summary[0].prototype, found.summary[1].prototype
    window = min(found.windows, key=lambda w: next(c.L_rec for c in w.candidates
                                                   if c.prototype == best)
                 if any(c.prototype == best for c in w.candidates) else math.inf)
    clip = frames[window.start:window.stop]
    x = clip[None].to(device)
    params = net.transformations(x)
    constants = net.bins_on(x.device)

    def to_audio(logmel) -> np.ndarray:
        return mel_to_audio(logmel, frontend, n_iter=iterations)

    record = {"source": name, "model": label, "mode": found.mode,
              "window_s": [window.start_s, window.stop_s], "level_dbfs": EXPLAIN_PEAK_DBFS,
              "input": {"file": "input.wav",
                        "true_peak_dbfs": _write_wav(out / "input.wav", to_audio(clip), rate)},
              "prototypes": []}
    shown = {}
    for role, k in (("best", best), ("runner_up", runner_up)):
        own = Transformations(*(None if p is None else p[:, [k]]
                                for p in (params.pitch, params.gain, params.filters)))
        entry = {"role": role, "prototype": k, "name": found.summary[0 if role == "best" else 1].name,
                 "files": {}, "L_rec": {}, "true_peak_dbfs": {}}
        variants = {"reconstruction": own}
        for off in ("gain", "pitch", "filters"):
            if getattr(own, off) is not None:
                variants[f"without_{off}"] = Transformations(**{
                    n: (None if n == off else getattr(own, n)) for n in ("pitch", "gain", "filters")})
        for variant, chosen in variants.items():
            rebuilt = reconstruct(net.prototypes[[k]], pitch=chosen.pitch, gain=chosen.gain,
                                  filters=chosen.filters, constants=constants)
            rebuilt = rebuilt.expand(1, 1, clip.shape[0], -1)[0, 0].float().cpu()
            file = f"{role}-{variant}.wav"
            entry["files"][variant] = file
            entry["L_rec"][variant] = round(100 * float(((rebuilt - clip) ** 2).mean()), 4)
            entry["true_peak_dbfs"][variant] = _write_wav(out / file, to_audio(rebuilt), rate)
            if variant == "reconstruction":
                shown[role] = rebuilt
        prototype_wave = prototype_to_audio(net.prototypes[k].float().cpu(), frontend,
                                            seconds=1.0, n_iter=iterations)
        entry["files"]["prototype"] = f"{role}-prototype.wav"
        entry["true_peak_dbfs"]["prototype"] = _write_wav(out / f"{role}-prototype.wav",
                                                          prototype_wave, rate)
        entry["curves"] = transformation_curves(own, frontend)
        record["prototypes"].append(entry)
    figure = _figure(clip, shown, record, net, frontend, window)
    with atomic_path(out / "explain.png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    record["figure"] = "explain.png"
    record["identification"] = found.to_dict()
    with atomic_path(out / "explain.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record


def _figure(clip: torch.Tensor, shown: dict, record: dict, net: PrototypeModel,
            frontend: FrontEnd, window: Window):
    """Spectrograms (the input, both reconstructions, both prototypes) over the curves of
    both prototypes' transformations."""
    from matplotlib.figure import Figure

    from hearproto.viz import show_frame, show_logmel

    best, runner = record["prototypes"]
    figure = Figure(figsize=(15, 7.5), layout="constrained")
    axes = figure.subplots(2, 4)
    show_logmel(clip, frontend, ax=axes[0, 0], colorbar=False,
                title=f"the input ({window.start_s:.2f}-{window.stop_s:.2f} s)")
    for ax, entry in zip(axes[0, 1:3], (best, runner)):
        show_logmel(shown[entry["role"]], frontend, ax=ax, colorbar=False,
                    title=f"{entry['role'].replace('_', '-')}: {entry['name']}\n"
                          f"reconstruction, L_rec {entry['L_rec']['reconstruction']:.3f}")
    for entry, style in zip((best, runner), ("-", "--")):
        show_frame(net.prototypes[entry["prototype"]].detach().float().cpu(), frontend,
                   ax=axes[0, 3], linestyle=style, label=entry["name"])
    axes[0, 3].set_title("the two prototypes")
    axes[0, 3].legend(fontsize=8)
    seconds = frontend.hop_length / frontend.sample_rate
    panels = [("gain_db", "gain (dB)", axes[1, 0]), ("pitch_semitones", "pitch (semitones)", axes[1, 1]),
              ("high_knee_hz", "filter knees (Hz)", axes[1, 2]),
              ("high_level_db", "filter levels at the band edge (dB)", axes[1, 3])]
    for key, title, ax in panels:
        for entry, style in zip((best, runner), ("-", "--")):
            curves = entry["curves"]
            pairs = {"high_knee_hz": ("high_knee_hz", "low_knee_hz"),
                     "high_level_db": ("high_level_db", "low_level_db")}.get(key, (key,))
            for name in pairs:
                if name not in curves:
                    continue
                times = window.start_s + seconds * np.arange(len(curves[name]))
                which = "" if len(pairs) == 1 else (" high" if name.startswith("high") else " low")
                ax.plot(times, curves[name], style, label=f"{entry['name']}{which}")
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "off in this model", ha="center", va="center",
                    transform=ax.transAxes)
    model = Path(record["model"])  # a checkpoint by its run folder, never a whole path
    named = f"{model.parent.name}/{model.name}" if model.suffix == ".pt" else record["model"]
    figure.suptitle(f"{Path(record['source']).name}: {best['name']} (best) and {runner['name']} "
                    f"(runner-up), {named}")
    return figure
