"""Gravis UltraSound patches (``.pat``, the format of the FreePats bank), read and played.

A patch holds one or more recorded samples, each covering a range of fundamental frequencies,
with its root frequency, its own sample rate and an optional sustain loop. Playing a note picks
the sample whose range covers the note, resamples it by ``note / root`` with linear
interpolation (as TinySoundFont does for SoundFonts), runs its loop while the note is held and
fades it out after the note-off.

The envelope is deliberately plain: a 5 ms attack, the level held while the note sounds (the
samples of plucked and struck instruments carry their own decay) and an exponential release
reaching -60 dB after ``RELEASE_60DB_SECONDS``. The patches' own six-stage envelopes are not
emulated: the timbre of a bank lies in its recordings, which are played as they are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PatchSample", "Patch", "read_patch", "render_patch"]

MAGICS = (b"GF1PATCH110\0", b"GF1PATCH100\0")
HEADER_BYTES, INSTRUMENT_BYTES, LAYER_BYTES, SAMPLE_BYTES = 129, 63, 47, 96
ATTACK_SECONDS = 0.005
RELEASE_60DB_SECONDS = 0.6

# the bits of a sample's mode byte
SIXTEEN_BIT, UNSIGNED, LOOPING, PINGPONG, REVERSE = 1, 2, 4, 8, 16


@dataclass(frozen=True)
class PatchSample:
    """One recorded sample: ``data`` float32 ``(N,)`` in [-1, 1] at ``rate`` Hz, for notes of
    ``low_hz`` to ``high_hz``, recorded at ``root_hz``; loop bounds in samples (fractional)."""

    data: np.ndarray
    rate: int
    low_hz: float
    high_hz: float
    root_hz: float
    loop_start: float
    loop_end: float
    looping: bool
    pingpong: bool


@dataclass(frozen=True)
class Patch:
    name: str
    samples: tuple[PatchSample, ...]

    def sample_for(self, hz: float) -> PatchSample:
        """The sample whose range covers ``hz``, else the one recorded nearest to it."""
        for sample in self.samples:
            if sample.low_hz <= hz <= sample.high_hz:
                return sample
        return min(self.samples, key=lambda s: abs(np.log(hz / s.root_hz)))


class PatchError(ValueError):
    """A file that is not a readable GUS patch."""


def _decode(raw: bytes, modes: int) -> np.ndarray:
    if modes & SIXTEEN_BIT:
        values = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<u2" if modes & UNSIGNED else "<i2")
        scale, offset = 32768.0, 32768.0 if modes & UNSIGNED else 0.0
    else:
        values = np.frombuffer(raw, dtype=np.uint8 if modes & UNSIGNED else np.int8)
        scale, offset = 128.0, 128.0 if modes & UNSIGNED else 0.0
    data = (values.astype(np.float32) - offset) / scale
    return data[::-1].copy() if modes & REVERSE else data


def read_patch(path: str | Path) -> Patch:
    """Every sample of the first layer of the patch file ``path``."""
    blob = Path(path).read_bytes()
    if blob[:12] not in MAGICS:
        raise PatchError(f"{path}: not a GUS patch (no GF1PATCH header)")
    offset = HEADER_BYTES + INSTRUMENT_BYTES
    name = blob[HEADER_BYTES + 2: HEADER_BYTES + 18].split(b"\0")[0].decode("latin-1").strip()
    count = blob[offset + 6]
    offset += LAYER_BYTES
    samples = []
    for _ in range(count):
        header = blob[offset: offset + SAMPLE_BYTES]
        if len(header) < SAMPLE_BYTES:
            raise PatchError(f"{path}: truncated after {len(samples)} of {count} samples")
        fractions = header[7]
        length, loop_start, loop_end = struct.unpack_from("<III", header, 8)
        (rate,) = struct.unpack_from("<H", header, 20)
        low, high, root = struct.unpack_from("<III", header, 22)
        modes = header[55]
        raw = blob[offset + SAMPLE_BYTES: offset + SAMPLE_BYTES + length]
        if len(raw) < length or rate == 0 or root == 0:
            raise PatchError(f"{path}: sample {len(samples)} is truncated or has no rate")
        width = 2 if modes & SIXTEEN_BIT else 1
        samples.append(PatchSample(
            data=_decode(raw, modes), rate=rate, low_hz=low / 1000, high_hz=high / 1000,
            root_hz=root / 1000,
            loop_start=(loop_start + (fractions & 0x0F) / 16) / width,
            loop_end=(loop_end + (fractions >> 4) / 16) / width,
            looping=bool(modes & LOOPING) and loop_end > loop_start,
            pingpong=bool(modes & PINGPONG)))
        offset += SAMPLE_BYTES + length
    if not samples:
        raise PatchError(f"{path}: the patch holds no sample")
    return Patch(name, tuple(samples))


def _positions(sample: PatchSample, step: float, count: int) -> np.ndarray:
    """Read positions into ``sample.data`` for ``count`` output samples, looped where the sample
    loops; positions past the end of a sample that does not loop are NaN. ``(count,)``."""
    position = np.arange(count, dtype=np.float64) * step
    if not sample.looping:
        position[position > len(sample.data) - 1] = np.nan
        return position
    start, end = sample.loop_start, min(sample.loop_end, len(sample.data) - 1)
    period = end - start
    past = position >= end
    if period <= 0 or not past.any():
        return position
    into = position[past] - start
    if sample.pingpong:
        into = np.mod(into, 2 * period)
        into = np.where(into < period, into, 2 * period - into)
    else:
        into = np.mod(into, period)
    position[past] = start + into
    return position


def render_patch(patch: Patch, midi: int, velocity: int, hold_seconds: float,
                 total_seconds: float, sample_rate: int) -> np.ndarray:
    """Play MIDI note ``midi`` at ``velocity`` (1-127): held ``hold_seconds``, released, and cut
    at ``total_seconds``. Mono float32 ``(round(total_seconds * sample_rate),)``."""
    hz = 440.0 * 2 ** ((midi - 69) / 12)
    sample = patch.sample_for(hz)
    count = round(total_seconds * sample_rate)
    step = hz / sample.root_hz * sample.rate / sample_rate
    position = _positions(sample, step, count)
    valid = np.isfinite(position)
    wave = np.zeros(count, dtype=np.float64)
    wave[valid] = np.interp(position[valid], np.arange(len(sample.data)), sample.data)
    time = np.arange(count) / sample_rate
    held = round(hold_seconds * sample_rate)
    envelope = np.minimum(1.0, time / ATTACK_SECONDS)
    release = time[held:] - time[held] if held < count else time[:0]
    envelope[held:] *= 10 ** (-3 * release / RELEASE_60DB_SECONDS)
    level = (velocity / 127) ** 2
    return (wave * envelope * level).astype(np.float32)
