"""The built-in instruments dataset: the plan, the banks, files, determinism, pitch, loudness,
notes moved or dropped."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from hearproto.audio import load_audio
from hearproto.data import banks, instruments
from hearproto.data.instruments import CLASSES, SAMPLE_RATE, InstrumentSpec, plan, render


def _banks_installed() -> bool:
    try:
        return all(banks.bank_path(name) for name in banks.BANKS)
    except FileNotFoundError:
        return False


needs_banks = pytest.mark.skipif(
    importlib.util.find_spec("tinysoundfont") is None or not _banks_installed(),
    reason="rendering needs tinysoundfont and the sample banks (make install)")


def sha256s(root: Path, rows: list[dict]) -> dict[str, str]:
    return {r["path"]: hashlib.sha256((root / r["path"]).read_bytes()).hexdigest() for r in rows}


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Three notes per class (one per lineage where there are three), seed 0; FreePats'
    lowest pizzicato is clipped up to MIDI 40 and dropped."""
    root = tmp_path_factory.mktemp("instruments")
    with pytest.warns(UserWarning, match=r"1 of 99 notes dropped.*\n  pizzicato_strings: 1 "
                      "dropped, 0 moved"):
        return root, render(root, limit_per_class=3, seed=0, progress=False)


# --------------------------------------------------------------------------------------------
# The classes and the plan (no synthesiser needed)


def test_classes_are_many_distinct_and_in_midi_range():
    assert len(CLASSES) == 33
    assert len({s.program for s in CLASSES.values()}) == len(CLASSES)
    for name, spec in CLASSES.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", name), name
        assert 0 <= spec.program <= 127
        assert 0 <= spec.low < spec.high <= 127


def test_every_class_is_heard_through_two_or_three_lineages():
    lineages = {name: instruments.lineages_for(spec) for name, spec in CLASSES.items()}
    assert all(len(groups) >= 2 for groups in lineages.values())
    assert sum(len(groups) == 3 for groups in lineages.values()) >= 25
    assert all(len(bank) for groups in lineages.values() for bank in groups.values())
    # a bank leaves out the programs it cannot play well, and only those
    assert "freepats" not in lineages["viola"] and "freepats" not in lineages["cello"]
    assert lineages["piano"]["fluidr3"] == ["fluidr3"]
    assert lineages["oboe"]["fluidr3"] == ["fluidr3", "musescore"]


def test_a_lineage_reads_as_its_banks_names():
    assert banks.lineage_title("fluidr3") == "FluidR3 GM and MuseScore General"
    assert banks.lineage_title("freepats") == "FreePats"
    assert banks.lineage_title("a folder") == "a folder"


def test_default_plan_is_large_and_spread_over_each_range():
    notes = plan(None, seed=0)
    per_class = Counter(n.label for n in notes)
    assert set(per_class) == set(CLASSES)
    assert min(per_class.values()) >= 300
    assert len({(n.label, n.index) for n in notes}) == len(notes)
    assert len({n.path for n in notes}) == len(notes)
    for name, spec in CLASSES.items():
        mine = [n for n in notes if n.label == name]
        keys = sorted({n.pitch for n in mine})
        assert keys[0] - spec.low <= 2 and spec.high - keys[-1] <= 2, name
        assert max(np.diff(keys)) <= 2, name  # every semitone, or every second one
        shares = Counter(n.lineage for n in mine)
        assert max(shares.values()) - min(shares.values()) <= 1, name  # lineages share equally
        for lineage in shares:  # each lineage covers the whole range
            its = sorted(n.pitch for n in mine if n.lineage == lineage)
            assert its[0] - spec.low <= 3 and spec.high - its[-1] <= 3, (name, lineage)
    velocities = np.array([n.velocity for n in notes])
    seconds = np.array([n.seconds for n in notes])
    assert velocities.min() >= 30 and velocities.max() <= 127 and len(set(velocities)) > 90
    assert seconds.min() >= 0.5 and seconds.max() <= 3.0
    assert np.quantile(seconds, 0.1) < 1.0 < 2.0 < np.quantile(seconds, 0.9) + 0.5


def test_a_limit_keeps_every_lineage_and_spreads_over_the_range():
    full, limited = plan(None, seed=0), plan(6, seed=0)
    assert set(limited) <= set(full)
    for name, spec in CLASSES.items():
        chosen = [n for n in limited if n.label == name]
        assert len(chosen) == 6
        assert {n.lineage for n in chosen} == set(instruments.lineages_for(spec))
        pitches = [n.pitch for n in chosen]
        assert max(pitches) - min(pitches) >= (spec.high - spec.low) / 2


def test_seed_changes_the_draws_and_nothing_else():
    a, b = plan(None, seed=0), plan(None, seed=1)
    assert a == plan(None, seed=0)
    assert a != b
    assert [(n.label, n.bank, n.lineage) for n in a] == [(n.label, n.bank, n.lineage) for n in b]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="limit_per_class"):
        render(tmp_path, limit_per_class=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        render(tmp_path, seed=-1, progress=False)


def test_checks_on_synthetic_renders():
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    sine = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert instruments._problem(sine) is None
    assert instruments._problem(np.zeros_like(sine)) == "silent"
    assert instruments._problem(sine * np.float32(1e-4)) == "silent"  # about -94 dBFS
    assert instruments._problem(np.where(t < 1, np.nan, sine).astype(np.float32)) == "non-finite"
    assert instruments._problem(np.clip(sine * 3, -0.8, 0.8)) == "clipped"
    loud = instruments._limit_peak(sine * np.float32(5))
    assert np.isclose(np.abs(loud).max(), 0.99)
    assert instruments._limit_peak(sine) is sine  # below the limit: untouched


def test_a_missing_bank_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(banks, "search_dirs", lambda: [tmp_path])
    with pytest.raises(FileNotFoundError, match=r"make banks.*apt-get install freepats"):
        banks.bank_path("freepats")
    with pytest.raises(FileNotFoundError, match="fluid-soundfont-gm"):
        render(tmp_path / "out", limit_per_class=1, progress=False)


# --------------------------------------------------------------------------------------------
# The banks


@needs_banks
def test_each_bank_plays_what_the_plan_asks_of_it_and_lacks_what_it_says():
    identities = instruments.identity()["banks"]
    assert [i["bank"] for i in identities] == list(banks.BANKS)
    assert all(re.fullmatch(r"[0-9a-f]{16}", i["sha256"]) and i["version"] != "unknown"
               for i in identities)
    for name in banks.BANKS:
        player = banks.open_bank(name, SAMPLE_RATE)
        unplayed = instruments.UNPLAYED.get(name, {})
        for spec in CLASSES.values():
            if spec.program not in unplayed:
                assert player.has(spec.program), (name, spec)
            elif unplayed[spec.program] == "no patch":
                assert not player.has(spec.program), (name, spec)


# --------------------------------------------------------------------------------------------
# Rendering


@needs_banks
def test_files_are_mono_flac_of_the_planned_length(tiny):
    root, rows = tiny
    assert Counter(r["label"] for r in rows) == {name: 3 - (name == "pizzicato_strings")
                                                 for name in CLASSES}
    assert {r["bank"] for r in rows} == set(banks.BANKS)
    for row in rows:
        info = sf.info(root / row["path"])
        assert row["path"] == (f"{row['label']}/{row['label']}_{row['index']:03d}_"
                               f"{row['bank']}_{row['pitch']}.flac")
        assert (info.format, info.subtype) == ("FLAC", "PCM_16")
        assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
        assert info.frames == round(row["seconds"] * SAMPLE_RATE)
        assert row["seconds"] == pytest.approx(min(3.0, row["hold"] + 0.5), abs=1e-3)
        spec = CLASSES[row["label"]]
        assert spec.low <= row["pitch"] <= spec.high


@needs_banks
def test_same_seed_same_bytes_in_any_number_of_processes(tiny, tmp_path):
    root, rows = tiny
    with pytest.warns(UserWarning, match="pizzicato"):
        again = render(tmp_path / "again", limit_per_class=3, seed=0, progress=False,
                       workers=2)
    assert again == rows
    assert sha256s(tmp_path / "again", again) == sha256s(root, rows)
    with pytest.warns(UserWarning, match="pizzicato"):
        other = render(tmp_path / "other", limit_per_class=3, seed=1, progress=False)
    assert [(r["velocity"], r["hold"]) for r in other] != [(r["velocity"], r["hold"])
                                                           for r in rows]


@needs_banks
@pytest.mark.parametrize("label", ["flute", "violin", "clarinet"])
def test_fundamental_matches_the_midi_pitch_in_every_bank(tmp_path, monkeypatch, label):
    spec = CLASSES[label]
    middle = (spec.low + spec.high) // 2
    monkeypatch.setattr(instruments, "CLASSES", {label: InstrumentSpec(spec.program, middle,
                                                                       middle + 1)})
    monkeypatch.setattr(instruments, "HOLD_SECONDS", (1.5, 1.5001))
    rows = render(tmp_path, limit_per_class=12, progress=False)
    assert {r["bank"] for r in rows} == set(banks.BANKS)
    for row in rows:
        wave = load_audio(tmp_path / row["path"], SAMPLE_RATE)
        held = wave[int(0.3 * SAMPLE_RATE):int(1.4 * SAMPLE_RATE)]
        expected = librosa.midi_to_hz(row["pitch"])
        f0 = librosa.yin(held, fmin=expected / 1.9, fmax=expected * 1.9, sr=SAMPLE_RATE,
                         frame_length=4096)
        semitones = 12 * np.log2(np.median(f0) / expected)
        assert abs(semitones) < 0.5, (row, semitones)


@needs_banks
def test_velocity_sets_the_level(monkeypatch):
    for name in banks.BANKS:
        player = banks.open_bank(name, SAMPLE_RATE)
        soft, loud = (rms(player.render(40, 69, v, 1.0, 1.5)) for v in (40, 120))
        assert 20 * np.log10(loud / soft) > 6, name  # not normalised away


@needs_banks
def test_silent_notes_move_to_a_neighbour_or_are_dropped_and_reported(monkeypatch, tmp_path):
    # FluidR3's contrabass is silent above MIDI 59; the other banks play these keys.
    monkeypatch.setattr(instruments, "CLASSES", {"contrabass": InstrumentSpec(43, 56, 67)})
    with pytest.warns(UserWarning) as caught:
        rows = render(tmp_path, limit_per_class=40, progress=False)
    message = str(caught[0].message)
    assert re.search(r"contrabass: \d+ dropped, \d+ moved to a neighbouring key", message)
    fluid = [r for r in rows if r["bank"] == "fluidr3"]
    assert fluid and all(r["pitch"] <= 59 for r in fluid)
    assert any(r["pitch"] > 59 for r in rows if r["bank"] != "fluidr3")


@needs_banks
def test_a_failed_check_drops_the_note(monkeypatch, tmp_path):
    monkeypatch.setattr(instruments, "CLASSES", {"flute": InstrumentSpec(73, 60, 61)})
    monkeypatch.setattr(instruments, "SILENCE_DBFS", 0.0)  # everything is "silent" now
    with pytest.warns(UserWarning, match="flute: 6 dropped, 0 moved"):
        assert render(tmp_path, limit_per_class=6, progress=False) == []


@needs_banks
def test_a_missing_renderer_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tinysoundfont", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install --no-deps tinysoundfont==0\.3\.7"):
        banks.open_bank("timgm6mb", SAMPLE_RATE)
