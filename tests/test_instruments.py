"""The built-in instruments dataset: files, determinism, pitch, loudness, dropped renders."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from hearproto.audio import load_audio
from hearproto.data import instruments
from hearproto.data.instruments import CLASSES, SAMPLE_RATE, InstrumentSpec, render

needs_synth = pytest.mark.skipif(
    importlib.util.find_spec("tinysoundfont") is None
    or importlib.util.find_spec("pretty_midi") is None,
    reason="rendering needs tinysoundfont and pretty_midi's soundfont "
           "(pip install --no-deps tinysoundfont==0.3.7 pretty_midi==0.2.11.post0)",
)

NOTE_FRAMES = round(instruments.NOTE_SECONDS * SAMPLE_RATE)


def sha256s(root: Path, rows: list[dict]) -> dict[str, str]:
    return {r["path"]: hashlib.sha256((root / r["path"]).read_bytes()).hexdigest() for r in rows}


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Two clips per class, seed 0."""
    root = tmp_path_factory.mktemp("instruments")
    return root, render(root, limit_per_class=2, seed=0, progress=False)


# --------------------------------------------------------------------------------------------
# The classes and the plan (no synthesiser needed)


def test_classes_are_many_distinct_and_in_midi_range():
    assert len(CLASSES) >= 24
    assert len({(s.bank, s.program) for s in CLASSES.values()}) == len(CLASSES)
    for name, spec in CLASSES.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", name), name
        assert 0 <= spec.program <= 127 and spec.bank == 0
        assert 0 <= spec.low < spec.high <= 127
        assert spec.high - spec.low + 1 >= instruments.PITCHES_PER_CLASS, name


def test_default_plan_is_large_and_within_each_range():
    notes = instruments._plan(None, seed=0)
    assert len(notes) >= 1500
    assert len(set(notes)) == len(notes)
    for name, pitch, velocity in notes:
        assert CLASSES[name].low <= pitch <= CLASSES[name].high
        assert velocity in instruments.VELOCITIES
    assert {v for *_, v in notes} == set(instruments.VELOCITIES)


def test_limit_spreads_over_pitch_and_velocity():
    full = instruments._plan(None, seed=0)
    limited = instruments._plan(6, seed=0)
    for name, spec in CLASSES.items():
        chosen = [(p, v) for n, p, v in limited if n == name]
        every = [p for n, p, _ in full if n == name]
        assert len(chosen) == 6
        pitches = [p for p, _ in chosen]
        assert min(pitches) == min(every) and max(pitches) == max(every)
        assert len(set(pitches)) >= 5
        assert len({v for _, v in chosen}) == 3


def test_seed_changes_the_pitches_and_nothing_else():
    a, b = instruments._plan(None, seed=0), instruments._plan(None, seed=1)
    assert a == instruments._plan(None, seed=0)
    assert a != b
    assert len(a) == len(b)
    assert [n for n, *_ in a] == [n for n, *_ in b]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="limit_per_class"):
        render(tmp_path, limit_per_class=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        render(tmp_path, seed=-1, progress=False)


def test_checks_on_synthetic_renders():
    t = np.arange(NOTE_FRAMES) / SAMPLE_RATE
    sine = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert instruments._problem(sine) is None
    assert instruments._problem(np.zeros_like(sine)) == "silent"
    assert instruments._problem(sine * np.float32(1e-4)) == "silent"  # about -94 dBFS
    assert instruments._problem(np.where(t < 1, np.nan, sine).astype(np.float32)) == "non-finite"
    assert instruments._problem(np.clip(sine * 3, -0.8, 0.8)) == "clipped"
    loud = instruments._limit_peak(sine * np.float32(5))
    assert np.isclose(np.abs(loud).max(), 0.99)
    assert instruments._limit_peak(sine) is sine  # below the limit: untouched


def test_missing_dependencies_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install --no-deps tinysoundfont==0\.3\.7"):
        instruments._open_synth()
    monkeypatch.undo()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pretty_midi" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install pretty_midi==0\.2\.11\.post0"):
        instruments._soundfont_path()


# --------------------------------------------------------------------------------------------
# Rendering


@needs_synth
def test_files_are_mono_flac_of_three_seconds(tiny):
    root, rows = tiny
    assert len(rows) == 2 * len(CLASSES)  # nothing silent among these
    assert [r["label"] for r in rows] == [n for n in CLASSES for _ in range(2)]
    for row in rows:
        path = root / row["path"]
        assert row["path"] == f"{row['label']}/{row['label']}_{row['pitch']}_{row['velocity']}.flac"
        info = sf.info(path)
        assert (info.format, info.subtype) == ("FLAC", "PCM_16")
        assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 1, NOTE_FRAMES)
        assert row["seconds"] == pytest.approx(3.0)
        spec = CLASSES[row["label"]]
        assert spec.low <= row["pitch"] <= spec.high
    for name in CLASSES:  # the two clips: lowest and highest pitch, different velocities
        pair = [r for r in rows if r["label"] == name]
        assert pair[0]["pitch"] < pair[1]["pitch"]
        assert pair[0]["velocity"] != pair[1]["velocity"]


@needs_synth
def test_same_seed_same_bytes_other_seed_other_notes(tiny, tmp_path):
    root, rows = tiny
    again = render(tmp_path / "again", limit_per_class=2, seed=0, progress=False)
    assert again == rows
    assert sha256s(tmp_path / "again", again) == sha256s(root, rows)
    other = render(tmp_path / "other", limit_per_class=2, seed=1, progress=False)
    assert [r["path"] for r in other] != [r["path"] for r in rows]
    # The seed picks the notes only: a note rendered under both seeds is the same file.
    shared = {r["path"] for r in other} & {r["path"] for r in rows}
    assert shared
    ours, theirs = sha256s(root, rows), sha256s(tmp_path / "other", other)
    assert all(ours[p] == theirs[p] for p in shared)


@needs_synth
@pytest.mark.parametrize("label", ["flute", "violin", "clarinet"])
def test_fundamental_matches_the_midi_pitch(tiny, label):
    root, rows = tiny
    for row in (r for r in rows if r["label"] == label):
        wave = load_audio(root / row["path"], SAMPLE_RATE)
        held = wave[int(0.3 * SAMPLE_RATE):int(2.0 * SAMPLE_RATE)]  # sustained part
        expected = librosa.midi_to_hz(row["pitch"])
        f0 = librosa.yin(held, fmin=expected / 1.9, fmax=expected * 1.9, sr=SAMPLE_RATE,
                         frame_length=4096)
        semitones = 12 * np.log2(np.median(f0) / expected)
        assert abs(semitones) < 0.5, (row, semitones)


@needs_synth
def test_velocity_sets_the_level(monkeypatch, tmp_path):
    monkeypatch.setattr(instruments, "CLASSES", {"violin": InstrumentSpec(40, 69, 69)})
    rows = render(tmp_path, progress=False)
    assert [(r["pitch"], r["velocity"]) for r in rows] == [(69, 40), (69, 80), (69, 120)]
    level = [rms(load_audio(tmp_path / r["path"], SAMPLE_RATE)) for r in rows]
    assert level[0] < level[1] < level[2]
    assert 20 * np.log10(level[2] / level[0]) > 6  # not normalised away


@needs_synth
def test_silent_notes_of_the_soundfont_are_dropped_and_reported(monkeypatch, tmp_path):
    # Alto Sax (program 65) has no sample at MIDI 64 in TimGM6mb.sf2.
    monkeypatch.setattr(instruments, "CLASSES", {"alto_sax": InstrumentSpec(65, 63, 65)})
    with pytest.warns(UserWarning) as caught:
        rows = render(tmp_path, progress=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "dropped 3 of 9" in message
    assert "alto_sax: 3 silent (MIDI 64 at velocity 40, 80, 120)" in message
    assert sorted({r["pitch"] for r in rows}) == [63, 65]
    assert not list(tmp_path.glob("alto_sax/alto_sax_64_*"))


@needs_synth
def test_a_failed_check_drops_the_note(monkeypatch, tmp_path):
    monkeypatch.setattr(instruments, "CLASSES", {"flute": InstrumentSpec(73, 60, 61)})
    monkeypatch.setattr(instruments, "SILENCE_DBFS", 0.0)  # everything is "silent" now
    with pytest.warns(UserWarning, match="flute: 6 silent"):
        assert render(tmp_path, progress=False) == []
