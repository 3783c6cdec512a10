"""The built-in ``instruments`` dataset: single notes of 33 orchestral instruments, each heard
through several independent sample banks.

Where the sounds come from: four General MIDI banks of real recordings, from three lineages
(:mod:`hearproto.data.banks`): FluidR3 GM and MuseScore General (which grew out of FluidR3
and shares many of its samples), TimGM6mb, and the FreePats GUS patches (which have no
vibraphone, marimba, viola or contrabass, and whose cello is left out: its recordings are
clipped). MuseScore's grand piano is left out too (:data:`UNPLAYED` says why). Each class is one GM program (a few are playing
techniques that GM offers as programs of their own: pizzicato and tremolo strings, muted
trumpet). Nothing is downloaded: ``make banks`` unpacks the banks' Debian packages.

What is played, per class: ``CLIPS_PER_CLASS`` notes shared equally between the lineages that
have the instrument (within FluidR3's lineage, alternately FluidR3 and MuseScore General), so
that a class is heard through two or three different recorded instruments and players, as in
a real collection. Each lineage's notes are spread evenly over the instrument's playable range
(sounding pitch; every semitone where there are more notes than keys), each at a velocity
drawn from 30-127 (FluidR3's and, for a few programs, MuseScore's velocity layers change the
timbre, the others only the level) and held for a time drawn log-uniformly from 0.15-2.5 s,
then released: a clip lasts the hold plus ``RELEASE_SECONDS``, at most 3 s, mono, 44.1 kHz,
16-bit FLAC. A note that renders silent or broken (banks leave parts of some ranges empty) is
replaced by its nearest playable neighbour in the range; notes that no neighbour replaces are
dropped and reported with :func:`warnings.warn`.

docs/scripts/bank_checks.py measures how far apart the banks sound, class by class: the
lineages differ by a median of 10-11 dB (RMS difference of the level-free mean log-Mel shape),
FluidR3 and MuseScore General by 3.6 dB, twins on most woodwinds and percussion but different
pianos, pizzicati, tremolos, cellos, clarinets and trumpets.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hearproto.audio import save_audio
from hearproto.data.banks import BANKS, bank_identity, open_bank
from hearproto.data.workers import map_chunks

__all__ = ["CLASSES", "SAMPLE_RATE", "CLIPS_PER_CLASS", "InstrumentSpec", "Note", "plan",
           "render", "banks_used"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 44_100
CLIPS_PER_CLASS = 312
HOLD_SECONDS = (0.15, 2.5)  # log-uniform: note on -> note off
RELEASE_SECONDS = 0.5  # kept after the note-off
MAX_SECONDS = 3.0
VELOCITY = (30, 127)  # uniform, inclusive
FADE_SECONDS = 0.01  # linear fade at the very end, so that a long release ends without a click
SILENCE_DBFS = -60.0  # a render whose loudest frame stays below this is silent
LOUDNESS_FRAME = 2048  # samples per frame of that check
PEAK_LIMIT = 0.99  # renders peaking above are scaled down to it
CLIP_RUN = 4  # this many equal samples in a row at the peak: a flat-topped (clipped) render
NEIGHBOURS = 12  # keys tried on either side of a note that renders silent or broken

#: Programs left out of a bank, and why (checked against the installed banks by the tests).
UNPLAYED: dict[str, dict[int, str]] = {
    "freepats": {11: "no patch", 12: "no patch", 41: "no patch", 43: "no patch",
                 42: "its cello recordings are clipped (flat-topped) over most of the range"},
    "musescore": {0: "tinysoundfont plays its SF3 grand piano 40-80 dB too quietly above the "
                     "bass (silent from C6 at low velocities)"},
}

@dataclass(frozen=True)
class InstrumentSpec:
    """One class: a General MIDI program and the instrument's playable range (MIDI keys)."""

    program: int  # 0-based GM program number
    low: int  # lowest playable key, sounding pitch
    high: int  # highest playable key, sounding pitch

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


def lineages_for(spec: InstrumentSpec) -> dict[str, list[str]]:
    """The banks that play ``spec``, grouped by lineage, in :data:`BANKS` order."""
    groups: dict[str, list[str]] = {}
    for bank in BANKS.values():
        if spec.program not in UNPLAYED.get(bank.name, {}):
            groups.setdefault(bank.lineage, []).append(bank.name)
    return groups


def banks_used() -> list[str]:
    return [b for b in BANKS if any(b in banks for spec in CLASSES.values()
                                    for banks in lineages_for(spec).values())]


# --------------------------------------------------------------------------------------------
# What to play


@dataclass(frozen=True)
class Note:
    label: str
    bank: str
    lineage: str
    index: int  # per class
    pitch: int
    velocity: int
    hold: float  # seconds, note on -> note off

    @property
    def seconds(self) -> float:
        return min(MAX_SECONDS, round(self.hold + RELEASE_SECONDS, 3))

    @property
    def path(self) -> str:
        return f"{self.label}/{self.label}_{self.index:03d}_{self.bank}_{self.pitch}.flac"


def _class_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per class: adding or removing a class leaves the others' draws alone."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _spread_keys(spec: InstrumentSpec, count: int, offset: float) -> np.ndarray:
    """``count`` keys spread evenly over the range, ascending; each key ``count / range`` times
    when there are more notes than keys. ``offset`` in [0, 1) shifts the grid."""
    keys = np.arange(spec.low, spec.high + 1)
    slots = np.floor((np.arange(count) + offset) * len(keys) / count).astype(int)
    return keys[np.minimum(slots, len(keys) - 1)]


def _class_notes(name: str, spec: InstrumentSpec, seed: int) -> list[Note]:
    """Every note of class ``name``, lineage after lineage."""
    rng = _class_rng(seed, name)
    groups = lineages_for(spec)
    per_lineage = CLIPS_PER_CLASS // len(groups)
    notes = []
    for lineage, banks in groups.items():
        keys = _spread_keys(spec, per_lineage, float(rng.uniform()))
        velocities = rng.integers(VELOCITY[0], VELOCITY[1] + 1, per_lineage)
        holds = np.exp(rng.uniform(*np.log(HOLD_SECONDS), per_lineage))
        for i in range(per_lineage):
            notes.append(Note(name, banks[i % len(banks)], lineage, len(notes), int(keys[i]),
                              int(velocities[i]), round(float(holds[i]), 3)))
    return notes


def _spread(items: list, limit: int | None) -> list:
    """At most ``limit`` of ``items``, evenly spaced from first to last (all if None)."""
    if limit is None or limit >= len(items):
        return list(items)
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]


def plan(limit_per_class: int | None = None, seed: int = 0) -> list[Note]:
    """Every note to render, class by class. A limit keeps, per class, notes taken in turn from
    each lineage and spread over its range, so that a small dataset still holds every bank."""
    notes = []
    for name, spec in CLASSES.items():
        every = _class_notes(name, spec, seed)
        if limit_per_class is not None and limit_per_class < len(every):
            by_lineage = [[n for n in every if n.lineage == lineage]
                          for lineage in lineages_for(spec)]
            share = -(-limit_per_class // len(by_lineage))
            spread = [_spread(group, share) for group in by_lineage]
            turns = [group[i] for i in range(share) for group in spread if i < len(group)]
            every = sorted(turns[:limit_per_class], key=lambda n: n.index)
        notes += every
    return notes


# --------------------------------------------------------------------------------------------
# Checks of a render


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


def _neighbours(note: Note) -> list[int]:
    """The note's key, then the keys around it in the range, nearest first."""
    spec = CLASSES[note.label]
    around = [note.pitch + s * d for d in range(1, NEIGHBOURS + 1) for s in (1, -1)]
    return [note.pitch, *(k for k in around if spec.low <= k <= spec.high)]


# --------------------------------------------------------------------------------------------
# Rendering, in worker processes (each loads a bank once)

_PLAYERS: dict[str, object] = {}


def _player(bank: str):
    if bank not in _PLAYERS:
        _PLAYERS[bank] = open_bank(bank, SAMPLE_RATE)
    return _PLAYERS[bank]


def _render_notes(out_dir: Path, notes: list[Note]) -> list[tuple[dict | None, list]]:
    """Render and write ``notes`` (of one bank); per note its row (None if dropped) and the
    problems met on the way: ``(pitch, reason)``."""
    results = []
    for note in notes:
        player, program = _player(note.bank), CLASSES[note.label].program
        problems = []
        for pitch in _neighbours(note):
            candidate = Note(**{**asdict(note), "pitch": pitch})
            wave = player.render(program, pitch, note.velocity, note.hold, note.seconds)
            reason = _problem(wave)
            if reason is None:
                save_audio(out_dir / candidate.path, _fade_out(_limit_peak(wave)), SAMPLE_RATE,
                           overwrite=True)
                results.append(({"path": candidate.path, **asdict(candidate),
                                 "seconds": candidate.seconds}, problems))
                break
            problems.append((pitch, reason))
        else:
            results.append((None, problems))
    return results


def _tasks(notes: list[Note], size: int = 64) -> list[list[Note]]:
    """Notes grouped by bank (a worker loads each bank it meets once), in chunks."""
    tasks = []
    for bank in BANKS:
        of_bank = [n for n in notes if n.bank == bank]
        tasks += [of_bank[i:i + size] for i in range(0, len(of_bank), size)]
    return tasks


def _check_args(limit_per_class: int | None, seed: int) -> None:
    if limit_per_class is not None and (not isinstance(limit_per_class, (int, np.integer))
                                        or limit_per_class < 1):
        raise ValueError(f"limit_per_class must be None or a positive integer, "
                         f"got {limit_per_class!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _drop_summary(notes: list[Note], results: list[tuple[dict | None, list]]) -> str | None:
    """One line per class: the notes replaced by a neighbour and those dropped."""
    lines = []
    for name in CLASSES:
        replaced = dropped = 0
        for note, (row, problems) in zip(notes, results):
            if note.label == name and problems:
                replaced += row is not None
                dropped += row is None
        if replaced or dropped:
            lines.append(f"  {name}: {dropped} dropped, {replaced} moved to a neighbouring key")
    if not lines:
        return None
    total = sum(row is None for row, _ in results)
    return "\n".join([f"instruments: {total} of {len(notes)} notes dropped (silent or broken "
                      "renders with no playable neighbour)", *lines])


def render(out_dir: Path, limit_per_class: int | None = None, seed: int = 0,
           progress: bool = True, workers: int | None = None) -> list[dict]:
    """Render the dataset into ``out_dir/<class>/<class>_<index>_<bank>_<midi>.flac``.

    Returns one dict per written clip, in plan order: ``path`` (relative, posix), ``label``,
    ``bank``, ``lineage``, ``index``, ``pitch``, ``velocity``, ``hold``, ``seconds``. Notes
    with no playable render are reported once with :func:`warnings.warn`. The same seed gives
    identical files, whatever the number of ``workers`` (default: one per core for a large
    plan).
    """
    from tqdm.auto import tqdm

    _check_args(limit_per_class, seed)
    out_dir = Path(out_dir)
    notes = plan(limit_per_class, seed)
    for bank in {n.bank for n in notes}:
        bank_identity(bank)  # a missing bank fails here, in one line, before any work
    done: dict[tuple[str, int], tuple[dict | None, list]] = {}
    with tqdm(total=len(notes), desc="instruments", unit="note", disable=not progress) as bar:
        for task, results in map_chunks(_render_notes, _tasks(notes), out_dir, workers=workers):
            for note, result in zip(task, results):
                done[note.label, note.index] = result
            bar.update(len(task))
    results = [done[n.label, n.index] for n in notes]
    summary = _drop_summary(notes, results)
    if summary:
        warnings.warn(summary, stacklevel=2)
    rows = [row for row, _ in results if row is not None]
    log.info("instruments: wrote %d clips of %d classes to %s", len(rows),
             len({r["label"] for r in rows}), out_dir)
    return rows


def identity() -> dict:
    """The banks that render the dataset, with their packages' versions and digests."""
    return {"banks": [bank_identity(b) for b in banks_used()]}
