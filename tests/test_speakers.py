"""The built-in speakers data set: layout, format, determinism, voices, the variation of each
utterance (delivery, effort, articulation, room, babble), errors."""

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
from hearproto.data.speakers import (  # noqa: E402
    BABBLE_VOICES, SAMPLE_RATE, SPEAKERS, Scene, babble, hear_in_scene, render, room_response,
    tilt,
)

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
    assert len(SPEAKERS) == 48
    assert len(set(SPEAKERS.values())) == len(SPEAKERS), "two speakers share a voice"
    for name, voice in SPEAKERS.items():
        assert re.fullmatch(r"[a-z0-9_-]+", name), name
        assert re.fullmatch(r"[a-z0-9-]+\+\w+", voice), voice
    variants = [voice.partition("+")[2] for voice in SPEAKERS.values()]
    assert len(set(variants)) == len(variants), "two speakers share a variant"
    assert not {voice.partition("+")[2] for voice in BABBLE_VOICES} & set(variants), \
        "a speaker talks in the babble"
    with speakers.Espeak() as espeak:
        assert espeak.sample_rate == 22_050
        for voice in [*SPEAKERS.values(), *BABBLE_VOICES]:
            espeak.check_voice(voice)


def test_layout_and_format(rendered):
    out, records = rendered
    assert len(records) == PER_SPEAKER * len(SPEAKERS)
    assert {p.name for p in out.iterdir()} == set(SPEAKERS)
    assert [r["label"] for r in records] == [s for s in SPEAKERS for _ in range(PER_SPEAKER)]
    for record in records:
        assert set(record) == {"path", "label", "text", "rate", "pitch", "intonation", "effort",
                               "warp", "seconds", "rt60", "drr_db", "babble_snr_db", "talkers"}
        name = record["label"]
        assert re.fullmatch(rf"{name}/{name}_00[01]\.flac", record["path"])
        info = sf.info(out / record["path"])
        assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
        assert (info.format, info.subtype) == ("FLAC", "PCM_16")
        assert info.frames / SAMPLE_RATE == pytest.approx(record["seconds"])
        assert 1.0 <= record["seconds"] <= 3.0
        assert 160 - speakers.RATE_JITTER <= record["rate"] <= 180 + speakers.RATE_JITTER
        assert 0 <= record["pitch"] <= 100 and 0 <= record["intonation"] <= 100
        assert -1 <= record["effort"] <= 1 and abs(record["warp"] - 1) <= speakers.FORMANT_WARP
        for key, (low, high) in (("intonation", speakers.INTONATION),
                                 ("rt60", speakers.RT60_SECONDS), ("drr_db", speakers.DRR_DB),
                                 ("babble_snr_db", speakers.BABBLE_SNR_DB),
                                 ("talkers", speakers.BABBLE_TALKERS)):
            assert low <= record[key] <= high, key
        assert 0.1 <= record["rt60"] <= 0.5, "a mild room"
        assert all(isinstance(record[key], int) for key in ("rate", "pitch", "intonation",
                                                           "talkers"))


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
    assert all(text[-1] in ".?!" and 3 <= len(text.split()) <= 10 for text in texts)


def test_every_utterance_varies(rendered):
    _, records = rendered
    for key in ("rate", "pitch", "intonation", "talkers"):
        assert len({r[key] for r in records}) > 3, key
    for key in ("effort", "warp", "rt60", "drr_db", "babble_snr_db"):
        assert len({r[key] for r in records}) > len(records) // 2, key
    assert {r["text"][-1] for r in records} == {".", "?", "!"}


def test_same_bytes_with_worker_processes(rendered, tmp_path, monkeypatch):
    out, records = rendered
    subset = [FEMALE, MALE]
    monkeypatch.setattr(speakers, "SPEAKERS", {name: SPEAKERS[name] for name in subset})
    monkeypatch.setattr(speakers, "SPEAKERS_PER_TASK", 1)
    again = render(tmp_path, limit_per_class=PER_SPEAKER, seed=0, progress=False, workers=2)
    assert again == [r for r in records if r["label"] in subset]
    assert digests(tmp_path, again) == {p: d for p, d in digests(out, records).items()
                                        if p in {r["path"] for r in again}}


def test_clips_are_heard_in_a_room_over_babble(rendered, tmp_path, monkeypatch):
    """Each written clip is its dry utterance through :func:`hear_in_scene`, with the scene of
    its record and the babble track of the seed: rendered again, the same bytes."""
    out, records = rendered
    one_speaker(monkeypatch, MALE)
    heard = []

    def spy(wave, scene, track):
        heard.append((wave, scene, track))
        return hear_in_scene(wave, scene, track)

    monkeypatch.setattr(speakers, "hear_in_scene", spy)
    again = render(tmp_path, limit_per_class=PER_SPEAKER, seed=0, progress=False)
    assert digests(tmp_path, again) == {p: d for p, d in digests(out, records).items()
                                        if p in {r["path"] for r in again}}
    with speakers.Espeak() as espeak:
        track = speakers.babble_track(espeak, 0)
    for record, (dry, scene, used) in zip(again, heard):
        np.testing.assert_array_equal(used, track)
        assert (record["rt60"], record["drr_db"], record["babble_snr_db"], record["talkers"]) \
            == (round(scene.rt60, 3), round(scene.drr_db, 2), round(scene.snr_db, 2),
                scene.talkers)
        pcm = sf.read(tmp_path / record["path"], dtype="int16")[0]
        expected = hear_in_scene(dry, scene, track)
        np.testing.assert_array_equal(pcm, np.round(expected * 32767.0).astype(np.int16))
        similarity = expected @ dry / (np.linalg.norm(expected) * np.linalg.norm(dry))
        assert similarity < 0.99, "the room and the babble change the clip"


def test_room_response():
    rt60, drr_db = 0.3, 6.0
    response, tail = room_response(np.random.default_rng(0), rt60, drr_db, SAMPLE_RATE)
    assert response.shape == tail.shape == (round(rt60 * SAMPLE_RATE),)
    assert response[0] == 1.0 and tail[0] == 0.0
    assert np.sum(tail ** 2) == pytest.approx(1.0)
    assert 10 * np.log10(1.0 / np.sum(response[1:] ** 2)) == pytest.approx(drr_db)
    # the tail's energy falls by 60 dB in rt60: fit the decay of its 10 ms energies
    blocks = (tail[: tail.size // 160 * 160] ** 2).reshape(-1, 160).sum(axis=1)
    slope = np.polyfit(np.arange(blocks.size) * 0.01, 10 * np.log10(blocks), 1)[0]
    assert slope * rt60 == pytest.approx(-60, rel=0.15)
    again, _ = room_response(np.random.default_rng(0), rt60, drr_db, SAMPLE_RATE)
    np.testing.assert_array_equal(response, again)


def test_babble_reads_the_track_from_random_starts():
    track = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    mix = babble(track, np.random.default_rng(1), 25_000, 4)
    assert mix.shape == (25_000,) and np.sqrt(np.mean(mix ** 2)) == pytest.approx(1.0)
    np.testing.assert_array_equal(mix, babble(track, np.random.default_rng(1), 25_000, 4))
    assert not np.allclose(mix, babble(track, np.random.default_rng(2), 25_000, 4))
    single = babble(track, np.random.default_rng(3), 25_000, 1)
    np.testing.assert_allclose(single[:10_000], single[10_000:20_000])  # read circularly


def test_hear_in_scene_mixes_at_the_drawn_ratio():
    """Without reverberation (a direct-to-reverberant ratio of 200 dB) the clip is the speech
    plus the babble, at the scene's signal-to-babble ratio, peak-normalised; without babble,
    a click is followed by the room's tail at the direct-to-reverberant ratio."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    speech = np.sin(2 * np.pi * 440 * t)
    track = np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE).astype(np.float32)
    scene = Scene(rt60=0.2, drr_db=200.0, snr_db=20.0, talkers=3, seed=5)
    heard = hear_in_scene(speech, scene, track)
    assert heard.dtype == np.float32 and heard.shape == speech.shape
    assert np.abs(heard).max() == pytest.approx(speakers.PEAK)
    gain = heard @ speech / (speech @ speech)
    background = heard / gain - speech
    assert 20 * np.log10(np.std(speech) / np.std(background)) == pytest.approx(20.0, abs=0.5)
    np.testing.assert_array_equal(heard, hear_in_scene(speech, scene, track))
    click = np.zeros(2 * SAMPLE_RATE)
    click[1000] = 1.0
    response = hear_in_scene(click, Scene(0.4, 3.0, 200.0, 3, 5), track).astype(np.float64)
    np.testing.assert_allclose(response[:1000], 0.0, atol=1e-6)  # nothing before the sound
    direct, tail = response[1000] ** 2, np.sum(response[1001:] ** 2)
    assert 10 * np.log10(direct / tail) == pytest.approx(3.0, abs=0.01)


def test_tilt_and_warp():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tones = {f: np.sin(2 * np.pi * f * t) for f in (500, 1000, 4000)}
    for frequency, octaves in ((500, -1), (1000, 0), (4000, 2)):
        tilted = tilt(tones[frequency], 3.0, SAMPLE_RATE)
        assert 20 * np.log10(np.std(tilted) / np.std(tones[frequency])) == \
            pytest.approx(3.0 * octaves, abs=0.05)
    source_rate = 22_050
    samples = (8000 * np.sin(2 * np.pi * 1000 * np.arange(source_rate) / source_rate)
               ).astype(np.int16)
    clip, problem = speakers._to_clip(samples, source_rate, warp=1.05)
    assert problem is None and clip.size == pytest.approx(SAMPLE_RATE / 1.05, abs=2)
    spectrum = np.abs(np.fft.rfft(clip))
    assert np.argmax(spectrum) * SAMPLE_RATE / clip.size == pytest.approx(1050, abs=2)


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
    spectra = [np.log(np.abs(np.fft.rfft(w[:SAMPLE_RATE])) + 1e-6) for w in (first, second)]
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

    def flaky(self, voice, *args, **kwargs):
        if voice != SPEAKERS[MALE]:  # the babble
            return real(self, voice, *args, **kwargs)
        calls.append(args)
        if len(calls) == 1:
            return np.zeros(0, dtype=np.int16)
        if len(calls) == 2:
            return np.zeros(30_000, dtype=np.int16)
        return real(self, voice, *args, **kwargs)

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
