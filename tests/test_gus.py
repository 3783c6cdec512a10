"""GUS patches: a patch written here byte by byte is read back and played at the right pitch,
looped while held and faded after the note-off."""

from __future__ import annotations

import struct
from pathlib import Path

import librosa
import numpy as np
import pytest

from hearproto.data.gus import (LOOPING, PINGPONG, SIXTEEN_BIT, PatchError, read_patch,
                                render_patch)

RATE = 22_050
OUT = 44_100


def write_patch(path: Path, samples: list[dict]) -> Path:
    """A GF1 patch of one layer holding ``samples`` (int16 data, root/low/high in Hz)."""
    blob = bytearray(b"GF1PATCH110\0ID#000002\0".ljust(129, b"\0"))
    blob += (b"\0\0" + b"Test".ljust(16, b"\0")).ljust(63, b"\0")
    blob += bytes([0, 0, 0, 0, 0, 0, len(samples)]).ljust(47, b"\0")
    for s in samples:
        data = s["data"].astype("<i2").tobytes()
        header = bytearray(96)
        header[:7] = b"sample\0"
        struct.pack_into("<III", header, 8, len(data), 2 * s["loop"][0], 2 * s["loop"][1])
        struct.pack_into("<H", header, 20, RATE)
        struct.pack_into("<III", header, 22, *(round(1000 * s[k]) for k in ("low", "high", "root")))
        header[55] = s["modes"]
        blob += header + data
    path.write_bytes(bytes(blob))
    return path


def sine(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(12_000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.fixture
def patch_file(tmp_path) -> Path:
    # one period of 220 Hz is 100.23 samples: loop 100 periods, whole ones to the sample
    wave = sine(220.0, 1.0)
    period = RATE / 220
    loop = (round(10 * period), round(110 * period))
    return write_patch(tmp_path / "sine.pat", [
        {"data": wave, "loop": loop, "low": 20, "high": 300, "root": 220,
         "modes": SIXTEEN_BIT | LOOPING},
        {"data": sine(880.0, 1.0), "loop": (0, 0), "low": 300, "high": 4000, "root": 880,
         "modes": SIXTEEN_BIT},
    ])


def test_a_patch_reads_back_as_written(patch_file):
    patch = read_patch(patch_file)
    assert patch.name == "Test" and len(patch.samples) == 2
    first = patch.samples[0]
    assert (first.rate, first.root_hz, first.low_hz, first.high_hz) == (RATE, 220, 20, 300)
    assert first.looping and not patch.samples[1].looping
    assert np.allclose(first.data * 32768, sine(220.0, 1.0))
    assert patch.sample_for(250.0) is first and patch.sample_for(1000.0) is patch.samples[1]
    assert patch.sample_for(10_000.0) is patch.samples[1]  # out of every range: nearest root


@pytest.mark.parametrize("midi", [57, 62, 81])  # A3 = 220 Hz (as recorded), D4, A5 (other sample)
def test_a_note_sounds_at_its_pitch(patch_file, midi):
    wave = render_patch(read_patch(patch_file), midi, 100, 1.0, 1.2, OUT)
    assert wave.shape == (round(1.2 * OUT),) and wave.dtype == np.float32
    expected = librosa.midi_to_hz(midi)
    f0 = librosa.yin(wave[OUT // 10: OUT * 9 // 10], fmin=expected / 1.5, fmax=expected * 1.5,
                     sr=OUT, frame_length=4096)
    assert abs(12 * np.log2(np.median(f0) / expected)) < 0.1


def test_a_looped_note_sustains_then_fades_and_an_unlooped_one_ends(patch_file):
    patch = read_patch(patch_file)
    # the 220 Hz sample lasts 1 s; played an octave up it runs out after 0.5 s unless looped
    held = render_patch(patch, 69, 127, 2.0, 3.0, OUT)
    frame = OUT // 10
    levels = np.sqrt(np.mean(held[: 30 * frame].reshape(30, frame) ** 2, axis=1))
    assert levels[1:20].min() > 0.9 * levels[1:20].max()  # steady while held (2 s)
    assert levels[29] < 0.05 * levels[15]  # -60 dB within 0.6 s of the note-off: gone by 1 s
    plain = render_patch(patch, 81 + 12, 127, 2.0, 3.0, OUT)  # 1760 Hz: the unlooped sample
    assert np.abs(plain[OUT:]).max() == 0.0  # played at 2x speed, 1 s of data lasts 0.5 s


def test_pingpong_loops_play_back_and_forth(tmp_path):
    ramp = np.linspace(-10_000, 10_000, 1000).astype(np.int16)
    path = write_patch(tmp_path / "ramp.pat", [{"data": ramp, "loop": (0, 999), "low": 20,
                                                "high": 4000, "root": 440,
                                                "modes": SIXTEEN_BIT | LOOPING | PINGPONG}])
    # at the recorded pitch and half the output rate: one input sample per output sample
    wave = render_patch(read_patch(path), 69, 127, 1.0, 0.2, RATE)
    forward, backward = np.diff(wave[200:900]), np.diff(wave[1100:1800])
    assert (forward > 0).all() and (backward < 0).all()


def test_bad_files_are_refused_with_their_name(tmp_path, patch_file):
    other = tmp_path / "other.pat"
    other.write_bytes(b"RIFF" + bytes(300))
    with pytest.raises(PatchError, match="other.pat: not a GUS patch"):
        read_patch(other)
    cut = tmp_path / "cut.pat"
    cut.write_bytes(patch_file.read_bytes()[:400])
    with pytest.raises(PatchError, match="cut.pat: .*truncated"):
        read_patch(cut)
