"""Short spoken words at 8 kHz: how many a folder dataset keeps.

    python docs/scripts/short_words.py [--voices N] [--words N] [--out DIR]

Speaks single words with espeak-ng voices (one folder per voice, so a class is a speaker),
trims their silence, resamples them to 8 kHz, as telephone-band recordings of spoken words
are, and writes them as 16-bit WAV files. Then prepares the folder without ``--preset``, in a
temporary data home, and prints what the front end chose, the clips' lengths in frames, how
many the rule before 2026-12-07 (a clip needs 16 frames) would have skipped, how many are
skipped now (under 2 frames, or silent) and how many are extended to 16 frames.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from hearproto.data import speakers
from hearproto.data.cache import ENCODER_FRAMES

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one",
         "two", "three", "four", "five", "six", "seven", "eight", "nine", "cat", "dog", "bed",
         "bird", "tree", "house", "wow", "happy", "sheila", "marvin", "learn", "follow")
RATE = 8_000


def speak(out: Path, voices: int, words: int) -> int:
    """Write ``words`` words by each of ``voices`` speakers into ``out/VOICE/WORD.wav``."""
    chosen = sorted(speakers.SPEAKERS.items())[:voices]
    written = 0
    with speakers.Espeak() as espeak:
        for name, voice in chosen:
            (out / name).mkdir(parents=True, exist_ok=True)
            for i, word in enumerate(WORDS[:words]):
                samples = espeak.synthesize(voice, word, rate=175 + 5 * (i % 5), pitch=50,
                                            seed=i)
                wave = samples.astype(np.float32) / 32768.0
                if wave.size == 0 or np.abs(wave).max() == 0:
                    continue
                wave = speakers._trim(wave, espeak.sample_rate)
                import soxr

                wave = soxr.resample(wave, espeak.sample_rate, RATE, quality="HQ")
                sf.write(out / name / f"{word}.wav", 0.5 * wave / np.abs(wave).max(), RATE,
                         subtype="PCM_16")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=12)
    parser.add_argument("--words", type=int, default=len(WORDS))
    parser.add_argument("--out", type=Path, help="where the words go (default: a temporary "
                                                 "folder, removed afterwards)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="short-words-") as scratch:
        out = args.out or Path(scratch) / "words"
        written = speak(out, args.voices, args.words)
        os.environ["HEARPROTO_DATA"] = str(Path(scratch) / "home")
        from hearproto.data import prepare_dataset

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = prepare_dataset("folder", root=out, progress=True)
        info = data.info()
        lengths = []
        for path in sorted(out.rglob("*.wav")):
            seconds = sf.info(str(path)).duration
            lengths.append(1 + int(seconds * data.frontend.sample_rate) // data.frontend.hop_length)
        lengths = np.array(lengths)
        print(f"{written} words written at {RATE} Hz by {args.voices} voices: "
              f"median {np.median([sf.info(str(p)).duration for p in out.rglob('*.wav')]):.2f} s, "
              f"{np.median(lengths):.0f} frames (hop {data.frontend.hop_length} at "
              f"{data.frontend.sample_rate} Hz)")
        print(f"front end: {info.get('frontend_choice', 'given')}")
        print(f"the earlier rule (16 frames) would skip {(lengths < ENCODER_FRAMES).sum()} of "
              f"{len(lengths)} ({100 * (lengths < ENCODER_FRAMES).mean():.0f} %)")
        print(f"now: {info['clips']} clips kept, {info['skipped']} skipped "
              f"({info['skipped_by_kind']}), {info['extended']} extended to {ENCODER_FRAMES} "
              f"frames; {len(caught)} warning(s)")
        for warning in caught:
            print(f"  warning: {warning.message}")


if __name__ == "__main__":
    main()
