"""The built-in speakers data set: layout, format, determinism, voices, errors."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip(
    "espeakng_loader", reason="needs espeakng-loader: pip install espeakng-loader==0.2.4"
)

from hearproto.data import speakers  # noqa: E402
from hearproto.data.speakers import SAMPLE_RATE, SPEAKERS, render  # noqa: E402

PER_SPEAKER = 2
FEMALE, MALE = "us_linda", "rp_edward"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("speakers")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean render warns about nothing
        return out, render(out, limit_per_class=PER_SPEAKER, seed=0, progress=False)


def digests(root: Path, records: list[dict]) -> dict[str, str]:
    return {r["path"]: hashlib.sha256((root / r["path"]).read_bytes()).hexdigest()
            for r in records}


def one_speaker(monkeypatch, name: str) -> None:
    monkeypatch.setattr(speakers, "SPEAKERS", {name: SPEAKERS[name]})


def test_speaker_table():
    assert len(SPEAKERS) >= 32
    assert len(set(SPEAKERS.values())) == len(SPEAKERS), "two speakers share a voice"
    for name, voice in SPEAKERS.items():
        assert re.fullmatch(r"[a-z0-9_-]+", name), name
        assert re.fullmatch(r"[a-z0-9-]+\+\w+", voice), voice
    with speakers.Espeak() as espeak:
        assert espeak.sample_rate == 22_050
        for voice in SPEAKERS.values():
            espeak.check_voice(voice)


def test_layout_and_format(rendered):
    out, records = rendered
    assert len(records) == PER_SPEAKER * len(SPEAKERS)
    assert {p.name for p in out.iterdir()} == set(SPEAKERS)
    assert [r["label"] for r in records] == [s for s in SPEAKERS for _ in range(PER_SPEAKER)]
    for record in records:
        assert set(record) == {"path", "label", "text", "rate", "pitch", "seconds"}
        name = record["label"]
        assert re.fullmatch(rf"{name}/{name}_00[01]\.flac", record["path"])
        info = sf.info(out / record["path"])
        assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
        assert (info.format, info.subtype) == ("FLAC", "PCM_16")
        assert info.frames / SAMPLE_RATE == pytest.approx(record["seconds"])
        assert 2.0 <= record["seconds"] <= 8.0
        assert 160 - speakers.RATE_JITTER <= record["rate"] <= 180 + speakers.RATE_JITTER
        assert 0 <= record["pitch"] <= 100
        assert isinstance(record["rate"], int) and isinstance(record["pitch"], int)


def test_clips_are_trimmed_and_normalised(rendered):
    out, records = rendered
    wave, _ = sf.read(out / records[0]["path"], dtype="float32")
    assert np.abs(wave).max() == pytest.approx(speakers.PEAK, abs=1e-3)
    edge = int(0.02 * SAMPLE_RATE)  # within the 50 ms margin, speech is near
    assert np.abs(wave[:4 * edge]).max() > 1e-3 and np.abs(wave[-4 * edge:]).max() > 1e-3


def test_same_seed_same_bytes(rendered, tmp_path, monkeypatch):
    out, records = rendered
    subset = [name for name in SPEAKERS][:8]
    monkeypatch.setattr(speakers, "SPEAKERS", {name: SPEAKERS[name] for name in subset})
    again = render(tmp_path, limit_per_class=PER_SPEAKER, seed=0, progress=False)
    expected = {r["path"] for r in records if r["label"] in subset}
    assert {r["path"] for r in again} == expected
    assert digests(tmp_path, again) == {p: d for p, d in digests(out, records).items()
                                        if p in expected}


def test_same_bytes_in_another_process_and_prefix(rendered, tmp_path):
    """A fresh process rendering 1 clip per speaker writes the first clips of the fixture."""
    out, records = rendered
    code = ("import sys; from hearproto.data.speakers import render; "
            "render(sys.argv[1], limit_per_class=1, seed=0, progress=False)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    firsts = [r for r in records if r["path"].endswith("_000.flac")]
    assert digests(tmp_path, firsts) == digests(out, firsts)


def test_other_seed_other_sentences(rendered, tmp_path, monkeypatch):
    _, records = rendered
    one_speaker(monkeypatch, FEMALE)
    other = render(tmp_path, limit_per_class=PER_SPEAKER, seed=1, progress=False)
    assert {r["text"] for r in other}.isdisjoint(
        r["text"] for r in records if r["label"] == FEMALE)


def test_sentences_differ_within_a_speaker(rendered, tmp_path, monkeypatch):
    _, records = rendered
    for name in SPEAKERS:
        texts = [r["text"] for r in records if r["label"] == name]
        assert len(set(texts)) == len(texts)
    one_speaker(monkeypatch, MALE)
    texts = [r["text"] for r in render(tmp_path, limit_per_class=12, progress=False)]
    assert len(set(texts)) == 12
    assert len({text.split()[0] for text in texts}) > 3
    assert all(text[-1] in ".?" and len(text.split()) >= 5 for text in texts)


def test_rate_and_pitch_jitter(rendered):
    _, records = rendered
    assert len({r["rate"] for r in records}) > 10
    assert len({r["pitch"] for r in records}) > 10


def median_f0(path: Path) -> float:
    import librosa

    wave, rate = sf.read(path, dtype="float32")
    f0 = librosa.yin(wave, fmin=60, fmax=500, sr=rate, frame_length=1024, hop_length=256)
    energy = librosa.feature.rms(y=wave, frame_length=1024, hop_length=256)[0][: len(f0)]
    return float(np.median(f0[: len(energy)][energy > 0.3 * energy.max()]))


def test_speakers_really_differ(rendered):
    out, records = rendered
    female = median_f0(out / f"{FEMALE}/{FEMALE}_000.flac")
    male = median_f0(out / f"{MALE}/{MALE}_000.flac")
    assert female > 1.6 * male, (female, male)
    assert 150 < female < 400 and 70 < male < 150
    # Two male voices of one accent family differ in timbre, not only in pitch.
    first, second = (sf.read(out / f"{name}/{name}_000.flac")[0]
                     for name in ("scottish_andy", "scottish_max"))
    spectra = [np.log(np.abs(np.fft.rfft(w[: 2 * SAMPLE_RATE])) + 1e-6) for w in (first, second)]
    assert np.abs(spectra[0] - spectra[1]).mean() > 0.3


@pytest.mark.parametrize("voice, message", [
    ("xx-nosuch+m3", "does not know the language"),
    ("en+nosuch", "no variant 'nosuch'"),
])
def test_unknown_voice_is_a_clear_error(tmp_path, monkeypatch, voice, message):
    monkeypatch.setattr(speakers, "SPEAKERS", {"us_m3": "en-us+m3", "bad": voice})
    with pytest.raises(ValueError, match=message):
        render(tmp_path, limit_per_class=1, progress=False)
    assert not any(tmp_path.iterdir()), "nothing is written before the voices are checked"


def test_missing_loader_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(ImportError, match=r"pip install espeakng-loader==0\.2\.4"):
        render(tmp_path, limit_per_class=1, progress=False)


def test_bad_voice_data_is_a_clear_error(tmp_path, monkeypatch):
    import espeakng_loader

    (tmp_path / "voices" / "!v").mkdir(parents=True)
    (tmp_path / "phontab").write_bytes(b"")
    monkeypatch.setattr(espeakng_loader, "get_data_path", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match="failed to initialise"):
        speakers.Espeak()


def test_broken_renders_are_dropped_and_reported(tmp_path, monkeypatch):
    one_speaker(monkeypatch, MALE)
    real = speakers.Espeak.synthesize
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            return np.zeros(0, dtype=np.int16)
        if len(calls) == 2:
            return np.zeros(30_000, dtype=np.int16)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(speakers.Espeak, "synthesize", flaky)
    expected = rf"dropped 2 broken .*\({MALE}: 1 empty; {MALE}: 1 silent\)"
    with pytest.warns(RuntimeWarning, match=expected):
        records = render(tmp_path, limit_per_class=2, progress=False)
    assert len(records) == 2
    assert sorted(p.name for p in (tmp_path / MALE).iterdir()) == [
        f"{MALE}_000.flac", f"{MALE}_001.flac"]


@pytest.mark.parametrize("kwargs", [{"limit_per_class": 0}, {"limit_per_class": 1.5},
                                    {"seed": -1}, {"seed": "0"}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        render(tmp_path, progress=False, **kwargs)
