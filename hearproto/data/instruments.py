"""The built-in ``instruments`` dataset: single notes of orchestral instruments.

Where the sounds come from: the General MIDI soundfont ``TimGM6mb.sf2`` (Tim Brechbill's
6 MB GM bank, GPL-2), which ships inside the ``pretty_midi`` wheel, played note by note with
the ``tinysoundfont`` synthesiser (a binding of TinySoundFont). Nothing is downloaded.

Each class is one GM program (a few are playing techniques that GM offers as programs of
their own: pizzicato and tremolo strings, muted trumpet). Every note lies in the real
instrument's playable range (sounding pitch), is held for 2.2 s, released, and rendered to
exactly 3.0 s, mono, 44.1 kHz, 16-bit FLAC. Pitches are drawn with the seed, one from each of
16 equal slices of the range; every pitch is played at velocities 40, 80 and 120.

Facts about this soundfont measured while writing this module (every class, every key of
its range, three velocities): programs hold one velocity layer, so velocity changes only the
level (120 is 9.5 dB above 40, same timbre); Alto Sax (65) is silent at MIDI 64 (E4), Bari
Sax (67) above 79 and Oboe (68) below 36; no render is non-finite, flat-topped or above a
peak of 0.75; Strings (48) and Slow Strings (49) share their samples, so only the first is a
class. Silent and broken renders are dropped and reported with :func:`warnings.warn`.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hearproto.audio import save_audio

__all__ = ["CLASSES", "SAMPLE_RATE", "InstrumentSpec", "render"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 44_100
NOTE_SECONDS = 3.0  # length of every clip
HOLD_SECONDS = 2.2  # note on -> note off; the release fills the rest
FADE_SECONDS = 0.01  # linear fade at the very end, so that a long release ends without a click
VELOCITIES = (40, 80, 120)
PITCHES_PER_CLASS = 16
SILENCE_DBFS = -60.0  # a render whose loudest frame stays below this is silent
LOUDNESS_FRAME = 2048  # samples per frame of that check
PEAK_LIMIT = 0.99  # renders peaking above are scaled down to it
CLIP_RUN = 4  # this many equal samples in a row at the peak: a flat-topped (clipped) render

SOUNDFONT_NAME = "TimGM6mb.sf2"
TINYSOUNDFONT_HINT = "pip install --no-deps tinysoundfont==0.3.7"
PRETTY_MIDI_HINT = "pip install pretty_midi==0.2.11.post0"


@dataclass(frozen=True)
class InstrumentSpec:
    """One class: a General MIDI program and the instrument's playable range (MIDI keys)."""

    program: int  # 0-based GM program number
    low: int  # lowest playable key, sounding pitch
    high: int  # highest playable key, sounding pitch
    bank: int = 0

    def keys(self) -> np.ndarray:
        return np.arange(self.low, self.high + 1)


# Ranges are the instruments' usual orchestral ranges at sounding pitch (transposing
# instruments converted), written from instrument knowledge, not from the soundfont.
CLASSES: dict[str, InstrumentSpec] = {
    # keyboards
    "piano": InstrumentSpec(0, 21, 108),  # A0-C8
    "harpsichord": InstrumentSpec(6, 29, 89),  # F1-F6
    "celesta": InstrumentSpec(8, 60, 108),  # C4-C8 (sounds an octave above written)
    "organ": InstrumentSpec(19, 36, 96),  # church organ manuals, C2-C7
    # tuned percussion
    "glockenspiel": InstrumentSpec(9, 79, 108),  # G5-C8 (sounding)
    "vibraphone": InstrumentSpec(11, 53, 89),  # F3-F6
    "marimba": InstrumentSpec(12, 36, 96),  # C2-C7 (five octaves)
    "xylophone": InstrumentSpec(13, 65, 108),  # F4-C8 (sounding)
    "tubular_bells": InstrumentSpec(14, 60, 77),  # C4-F5
    "timpani": InstrumentSpec(47, 38, 60),  # D2-C4 (set of four plus piccolo drum)
    # plucked
    "guitar": InstrumentSpec(24, 40, 83),  # nylon string, E2-B5 (sounding)
    "harp": InstrumentSpec(46, 24, 103),  # C1-G7
    # bowed strings
    "violin": InstrumentSpec(40, 55, 100),  # G3-E7
    "viola": InstrumentSpec(41, 48, 88),  # C3-E6
    "cello": InstrumentSpec(42, 36, 81),  # C2-A5
    "contrabass": InstrumentSpec(43, 28, 67),  # E1-G4 (sounding)
    "string_ensemble": InstrumentSpec(48, 28, 96),  # basses to violins
    "tremolo_strings": InstrumentSpec(44, 28, 96),
    "pizzicato_strings": InstrumentSpec(45, 28, 91),  # pizzicato is rare above G6
    # brass
    "trumpet": InstrumentSpec(56, 52, 82),  # B-flat trumpet, E3-B-flat5 (sounding)
    "muted_trumpet": InstrumentSpec(59, 52, 82),
    "trombone": InstrumentSpec(57, 40, 72),  # tenor trombone, E2-C5
    "french_horn": InstrumentSpec(60, 34, 77),  # B-flat1-F5 (sounding)
    "tuba": InstrumentSpec(58, 26, 65),  # D1-F4
    # woodwinds
    "piccolo": InstrumentSpec(72, 74, 108),  # D5-C8 (sounding)
    "flute": InstrumentSpec(73, 60, 96),  # C4-C7
    "oboe": InstrumentSpec(68, 58, 91),  # B-flat3-G6
    "english_horn": InstrumentSpec(69, 52, 81),  # E3-A5 (sounding)
    "clarinet": InstrumentSpec(71, 50, 91),  # B-flat clarinet, D3-G6 (sounding)
    "bassoon": InstrumentSpec(70, 34, 75),  # B-flat1-E-flat5
    "alto_sax": InstrumentSpec(65, 49, 80),  # D-flat3-A-flat5 (sounding)
    "tenor_sax": InstrumentSpec(66, 44, 75),  # A-flat2-E-flat5 (sounding)
    "baritone_sax": InstrumentSpec(67, 37, 68),  # D-flat2-A-flat4 (sounding)
}


# --------------------------------------------------------------------------------------------
# Finding the synthesiser and the soundfont


def _soundfont_path() -> Path:
    """Where ``TimGM6mb.sf2`` lies inside the installed ``pretty_midi`` (not imported)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the instruments dataset is rendered from {SOUNDFONT_NAME}, which ships with "
            f"pretty_midi, and pretty_midi is not installed: {PRETTY_MIDI_HINT}"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob(SOUNDFONT_NAME))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"{SOUNDFONT_NAME} is missing from the installed pretty_midi "
        f"({', '.join(spec.submodule_search_locations)}); reinstall it: {PRETTY_MIDI_HINT}"
    )


def _open_synth() -> tuple[Any, int]:
    """A tinysoundfont synthesiser with the soundfont loaded: ``(synth, sfid)``."""
    try:
        import tinysoundfont
    except ImportError:
        raise ImportError(
            f"the instruments dataset is rendered with tinysoundfont, which is not installed: "
            f"{TINYSOUNDFONT_HINT}"
        ) from None
    path = _soundfont_path()
    synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
    return synth, synth.sfload(str(path))


# --------------------------------------------------------------------------------------------
# One note


def _generate(synth: Any, frames: int) -> np.ndarray:
    """``frames`` stereo frames from the synth as a float32 array ``(frames, 2)``."""
    return np.frombuffer(synth.generate(frames), dtype=np.float32).reshape(frames, 2)


def _silence(synth: Any, max_seconds: float = 1.0) -> None:
    """Stop every voice and run the synth until it is silent, so no note leaks into the next."""
    synth.sounds_off()
    block = 256
    for _ in range(int(max_seconds * SAMPLE_RATE) // block):
        if not _generate(synth, block).any():
            return
    raise RuntimeError(f"the synthesiser is still sounding {max_seconds} s after sounds_off")


def _render_note(synth: Any, sfid: int, spec: InstrumentSpec, pitch: int,
                 velocity: int) -> np.ndarray:
    """Play one note: held ``HOLD_SECONDS``, then released. Mono float32 ``(L,)``, raw level."""
    total = round(NOTE_SECONDS * SAMPLE_RATE)
    held = round(HOLD_SECONDS * SAMPLE_RATE)
    synth.program_select(0, sfid, spec.bank, spec.program)
    synth.noteon(0, pitch, velocity)
    attack = _generate(synth, held)
    synth.noteoff(0, pitch)
    release = _generate(synth, total - held)
    _silence(synth)
    stereo = np.concatenate([attack, release])
    return stereo.mean(axis=1, dtype=np.float32)


def _loudest_frame_dbfs(wave: np.ndarray) -> float:
    """RMS level in dBFS of the loudest ``LOUDNESS_FRAME``-sample frame of ``wave``."""
    frames = max(1, len(wave) // LOUDNESS_FRAME)
    head = wave[: frames * LOUDNESS_FRAME].astype(np.float64)
    if head.size == 0:
        return -np.inf
    rms = np.sqrt(np.mean(head.reshape(frames, -1) ** 2, axis=1)).max()
    return float(20 * np.log10(rms)) if rms > 0 else -np.inf


def _longest_peak_run(wave: np.ndarray) -> int:
    """Longest run of consecutive, identical samples at the peak magnitude."""
    peak = np.abs(wave).max()
    at_peak = np.flatnonzero(np.abs(wave) == peak)
    if at_peak.size == 0:
        return 0
    breaks = np.flatnonzero((np.diff(at_peak) != 1) | (np.diff(wave[at_peak]) != 0))
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks + 1, [at_peak.size]])
    return int((ends - starts).max())


def _problem(wave: np.ndarray) -> str | None:
    """Why a render is unusable (``"non-finite"``, ``"silent"``, ``"clipped"``), or None."""
    if not np.isfinite(wave).all():
        return "non-finite"
    if _loudest_frame_dbfs(wave) < SILENCE_DBFS:
        return "silent"
    if _longest_peak_run(wave) >= CLIP_RUN:
        return "clipped"
    return None


def _limit_peak(wave: np.ndarray, limit: float = PEAK_LIMIT) -> np.ndarray:
    """Scale ``wave`` down so its peak is ``limit`` if it is above; otherwise leave it."""
    peak = float(np.abs(wave).max())
    return wave * np.float32(limit / peak) if peak > limit else wave


def _fade_out(wave: np.ndarray, seconds: float = FADE_SECONDS) -> np.ndarray:
    """Linear fade over the last ``seconds``, so a release cut at the end does not click."""
    n = min(len(wave), round(seconds * SAMPLE_RATE))
    out = wave.copy()
    if n > 0:
        out[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return out


# --------------------------------------------------------------------------------------------
# What to play


def _class_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per class: adding or removing a class leaves the others' draws alone."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _choose_pitches(name: str, spec: InstrumentSpec, seed: int,
                   count: int = PITCHES_PER_CLASS) -> list[int]:
    """One random key from each of ``count`` equal slices of the range (all keys if fewer)."""
    keys = spec.keys()
    if len(keys) <= count:
        return [int(k) for k in keys]
    rng = _class_rng(seed, name)
    return [int(part[rng.integers(len(part))]) for part in np.array_split(keys, count)]


def _spread(items: list, limit: int | None) -> list:
    """At most ``limit`` of ``items``, evenly spaced from first to last (all if None)."""
    if limit is None or limit >= len(items):
        return list(items)
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]


def _plan(limit_per_class: int | None = None, seed: int = 0) -> list[tuple[str, int, int]]:
    """Every note to render, ``(class, pitch, velocity)``, in output order.

    Per class the (pitch, velocity) pairs are sorted by pitch then velocity; a limit keeps
    pairs evenly spaced through that list, so they spread over both pitch and velocity.
    """
    notes = []
    for name, spec in CLASSES.items():
        pairs = [(p, v) for p in _choose_pitches(name, spec, seed) for v in VELOCITIES]
        notes += [(name, p, v) for p, v in _spread(pairs, limit_per_class)]
    return notes


# --------------------------------------------------------------------------------------------
# The dataset


def _check_args(limit_per_class: int | None, seed: int) -> None:
    if limit_per_class is not None and (not isinstance(limit_per_class, (int, np.integer))
                                        or limit_per_class < 1):
        raise ValueError(f"limit_per_class must be None or a positive integer, "
                         f"got {limit_per_class!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _drop_summary(dropped: list[tuple[str, int, int, str]], planned: int) -> str:
    """One line per class and reason: which keys, at which velocities."""
    groups: dict[tuple[str, str], dict[int, list[int]]] = {}
    for name, pitch, velocity, reason in dropped:
        groups.setdefault((name, reason), {}).setdefault(pitch, []).append(velocity)
    lines = [f"instruments: dropped {len(dropped)} of {planned} rendered notes"]
    for (name, reason), by_pitch in groups.items():
        notes = "; ".join(f"MIDI {p} at velocity {', '.join(map(str, vs))}"
                          for p, vs in sorted(by_pitch.items()))
        lines.append(f"  {name}: {sum(map(len, by_pitch.values()))} {reason} ({notes})")
    return "\n".join(lines)


def render(out_dir: Path, limit_per_class: int | None = None, seed: int = 0,
           progress: bool = True) -> list[dict]:
    """Render the dataset into ``out_dir/<class>/<class>_<midi>_<velocity>.flac``.

    Returns one dict per written clip, in a fixed order: ``path`` (relative, posix),
    ``label``, ``pitch``, ``velocity``, ``seconds``. Silent or broken renders are not written;
    they are reported once with :func:`warnings.warn`. The same seed gives identical files.
    """
    from tqdm.auto import tqdm

    _check_args(limit_per_class, seed)
    out_dir = Path(out_dir)
    notes = _plan(limit_per_class, seed)
    synth, sfid = _open_synth()
    rows: list[dict] = []
    dropped: list[tuple[str, int, int, str]] = []
    for name, pitch, velocity in tqdm(notes, desc="instruments", unit="note",
                                      disable=not progress):
        wave = _render_note(synth, sfid, CLASSES[name], pitch, velocity)
        reason = _problem(wave)
        if reason is not None:
            dropped.append((name, pitch, velocity, reason))
            continue
        wave = _fade_out(_limit_peak(wave))
        relative = f"{name}/{name}_{pitch}_{velocity}.flac"
        save_audio(out_dir / relative, wave, SAMPLE_RATE, overwrite=True)
        rows.append({"path": relative, "label": name, "pitch": pitch, "velocity": velocity,
                     "seconds": len(wave) / SAMPLE_RATE})
    if dropped:
        warnings.warn(_drop_summary(dropped, len(notes)), stacklevel=2)
    log.info("instruments: wrote %d clips of %d classes to %s", len(rows),
             len({r["label"] for r in rows}), out_dir)
    return rows
