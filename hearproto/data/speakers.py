"""The built-in ``speakers`` data set: synthetic speech from espeak-ng voices, in a room.

Each speaker is an espeak-ng voice, an English accent with a voice variant from espeak's
``voices/!v`` folder (``"en-gb-scotland+f2"``), at its own base speaking rate and pitch: 48
speakers, 70 clips each. Each utterance is a fresh short English sentence (a statement, a
question or an exclamation of 3 to 10 words) from a small seeded grammar, trimmed of leading
and trailing silence, resampled to 16 kHz and written as 16-bit FLAC: clips last 1 to 3 s.

A synthesiser says every sentence of a voice through the same vocal tract, so the average
spectrum of a speaker barely moves and a linear probe on time-averaged log-Mels told the
first version's 40 speakers apart 99 % of the time (2-8 s clips). Each utterance therefore
varies as a real speaker's do, and is heard as a real recording is:

- delivery: a rate within 30 wpm of the speaker's base, a pitch within 20 espeak units
  (about 3 semitones) of it, and an intonation (espeak's pitch range, 25-85: flat to
  lively); statements, questions and exclamations also take different tunes;
- vocal effort, uniform in [-1, 1]: a spectral tilt of up to 3 dB per octave about 1 kHz
  (louder speech is brighter) and up to 6 pitch units (louder speech is higher);
- articulation: every frequency (formants and pitch) scaled by up to 5 % either way, as
  spreading or rounding the lips and the jaw do;
- a mild room: the direct sound plus a tail of exponentially decaying Gaussian noise, RT60
  uniform in 0.1-0.5 s, 0-12 dB below it in energy (the direct-to-reverberant ratio);
- babble behind the speaker: 3 to 6 talkers (a track of 32 sentences by 8 voices no speaker
  uses, read from random starts), through the room's tail only, 15-30 dB below the speech.

:mod:`hearproto.data.conditions` then gives every clip a level, a colouring and a noise
floor, as for the instruments. Measured by ``docs/scripts/speakers_floors.py`` (test split):
linear probe 87.1 %, K-means 7.7 %, 1-NN on level-free mean log-Mels 62.4 % (chance 2.1 %).

espeak-ng comes from the ``espeakng-loader`` wheel (library and voice data, no system
install). espeak-ng keeps synthesis state from one utterance to the next (oscillator phase,
flutter, filter memories, its noise generator) and has no call to reset it, so a clip would
depend on everything rendered before it. :class:`Espeak` therefore runs every utterance in a
fresh instance of a private copy of the library (about 4 ms each) and seeds both noise
generators it draws from (its own, and the C library's ``rand`` in the Klatt voices). Every
other draw (sentence, delivery, effort, articulation, room, babble) comes from the speaker's
own generator, seeded by (seed, speaker), and the babble track from one seeded by the seed
alone. Every clip is thus a pure function of the seed: the same seed gives byte-identical
files in any process and with any number of worker processes, and ``limit_per_class=N``
renders exactly the first N clips of each speaker of the full data set.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import re
import shutil
import tempfile
import threading
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import soundfile as sf
import soxr
from scipy.fft import irfft, next_fast_len, rfft
from scipy.signal import fftconvolve
from tqdm.auto import tqdm

from hearproto.data.workers import map_chunks

__all__ = ["SAMPLE_RATE", "SPEAKERS", "render"]

SAMPLE_RATE = 16_000
DEFAULT_PER_SPEAKER = 70
MIN_SECONDS, MAX_SECONDS = 1.0, 3.0
LOADER_PIN = "espeakng-loader==0.2.4"

RATE_JITTER = 30  # words per minute, either side of the speaker's base
PITCH_JITTER = 20  # espeak pitch units (0-100, 50 = the voice's own); 20 ~ 3 semitones
INTONATION = (25, 85)  # espeak's pitch range (0-100, 50 = the voice's own): flat to lively
EFFORT_TILT = 3.0  # dB per octave of spectral tilt, at full vocal effort (effort in [-1, 1])
EFFORT_PITCH = 6  # espeak pitch units added at full vocal effort (~1 semitone)
FORMANT_WARP = 0.05  # articulation: every frequency scaled by up to this fraction either way
MAX_ATTEMPTS = 30  # sentences tried per clip before giving up on it
TRIM_DB = -40.0  # leading/trailing samples quieter than this (re the peak) are silence
MARGIN_SECONDS = 0.05  # silence kept on each side of the trimmed speech
PEAK = 0.7  # clips are peak-normalised to this level (about -3 dBFS)
SILENT_PEAK = 1e-3  # a render whose peak is below this is silent

RT60_SECONDS = (0.1, 0.5)  # reverberation time of the room, uniform
DRR_DB = (0.0, 12.0)  # direct-to-reverberant energy ratio, uniform
BABBLE_SNR_DB = (15.0, 30.0)  # speech to background babble, uniform
BABBLE_TALKERS = (3, 6)  # talkers in the babble, inclusive
BABBLE_UTTERANCES = 32  # sentences in the babble track, all speakers of BABBLE_VOICES
SPEAKERS_PER_TASK = 4  # speakers rendered by one task of a worker process

# --------------------------------------------------------------------------------------------
# Speakers


@dataclass(frozen=True)
class Voice:
    """An espeak voice string with the speaker's base rate (wpm) and pitch (0-100)."""

    voice: str
    rate: int
    pitch: int


# Accents: espeak's English languages ("en" is British English). Speaker name: short accent
# + "_" + the variant in lower case.
_ACCENTS = {
    "gb": "en",
    "us": "en-us",
    "rp": "en-gb-x-rp",
    "scottish": "en-gb-scotland",
    "caribbean": "en-029",
    "lancaster": "en-gb-x-gbclan",
    "midlands": "en-gb-x-gbcwmd",
    "nyc": "en-us-nyc",
}

# The first 40 were chosen from every usable variant (robotic, whispered and effect voices left
# out) by rendering 12 clips each and dropping, one at a time, the speaker most often confused
# by a nearest-class-mean classifier on time-averaged log-mel frames (the model's prototypes
# are one frame each), then balanced to five speakers per accent: 15 female, 1 child-like
# (Zac), 24 male. The sixth of each accent (8 male variants, median F0 87-116 Hz) was added
# greedily from the remaining variants, each tried in every accent, by the same test on 12
# clean 1-3 s clips per speaker: no added speaker was ever confused (leave-one-out class
# means), and the 40 no more than before (9.6 % of their clips; 8.0 % of the 48's). Base rates
# lie in 160-180 wpm, base pitches in 44-56 (espeak's 50 is the variant's own pitch).
_TABLE: list[tuple[str, str, int, int]] = [
    # (accent, variant file in voices/!v, base rate, base pitch)
    ("gb", "f5", 170, 50),
    ("gb", "belinda", 165, 54),
    ("gb", "adam", 175, 46),
    ("gb", "pablo", 160, 50),
    ("gb", "Lee", 180, 54),
    ("gb", "AnxiousAndy", 170, 46),
    ("us", "Alicia", 175, 46),
    ("us", "anika", 165, 50),
    ("us", "grandma", 160, 46),
    ("us", "linda", 180, 54),
    ("us", "ed", 170, 50),
    ("us", "Michael", 160, 54),
    ("rp", "Andrea", 170, 54),
    ("rp", "steph3", 180, 50),
    ("rp", "announcer", 165, 56),
    ("rp", "edward", 160, 50),
    ("rp", "travis", 175, 46),
    ("rp", "m8", 175, 50),
    ("scottish", "Andy", 170, 50),
    ("scottish", "klatt", 165, 54),
    ("scottish", "max", 180, 46),
    ("scottish", "Reed", 160, 50),
    ("scottish", "Gene2", 175, 54),
    ("scottish", "rob", 165, 46),
    ("caribbean", "Annie", 165, 50),
    ("caribbean", "f1", 175, 54),
    ("caribbean", "ian", 170, 46),
    ("caribbean", "Nguyen", 160, 50),
    ("caribbean", "miguel", 180, 54),
    ("caribbean", "sandro", 170, 50),
    ("lancaster", "f2", 160, 46),
    ("lancaster", "zac", 170, 44),
    ("lancaster", "iven", 175, 50),
    ("lancaster", "m4", 165, 54),
    ("lancaster", "paul", 180, 50),
    ("lancaster", "m2", 175, 46),
    ("midlands", "f3", 175, 50),
    ("midlands", "m5", 160, 46),
    ("midlands", "Marco", 170, 50),
    ("midlands", "mike2", 180, 54),
    ("midlands", "kaukovalta", 165, 50),
    ("midlands", "Denis", 175, 54),
    ("nyc", "f4", 165, 50),
    ("nyc", "shelby", 175, 46),
    ("nyc", "boris", 170, 54),
    ("nyc", "norbert", 160, 50),
    ("nyc", "Storm", 180, 46),
    ("nyc", "Jacky", 165, 50),
]


_STYLES: dict[str, Voice] = {
    f"{accent}_{variant.lower()}": Voice(f"{_ACCENTS[accent]}+{variant}", rate, pitch)
    for accent, variant, rate, pitch in _TABLE
}

SPEAKERS: dict[str, str] = {name: style.voice for name, style in _STYLES.items()}
"""Speaker name -> espeak voice string (language + ``+variant``)."""

BABBLE_VOICES: tuple[str, ...] = (  # variants no speaker uses, 3 female and 5 male
    "en+aunty", "en-us+m1", "en-gb-x-rp+steph", "en-gb-scotland+m3", "en-029+steph2",
    "en-us-nyc+m6", "en-gb-x-gbclan+m7", "en-gb-x-gbcwmd+victor",
)
"""The background talkers of every clip's babble (:func:`babble_track`)."""

# --------------------------------------------------------------------------------------------
# Sentences

_NAMES = (
    "Anna", "Boris", "Clara", "Daniel", "Elena", "Felix", "Grace", "Henry", "Irene", "Jack",
    "Karen", "Leo", "Maria", "Nathan", "Olivia", "Peter", "Rosa", "Samuel", "Tina", "Victor",
)
_ADJECTIVES = (
    "old", "young", "clever", "tired", "quiet", "busy", "friendly", "nervous", "patient",
    "careful", "lucky", "proud", "cheerful", "curious", "gentle", "stubborn",
)
_PEOPLE = (
    "farmer", "teacher", "doctor", "baker", "sailor", "painter", "driver", "student",
    "neighbour", "gardener", "pilot", "musician", "writer", "engineer", "child", "captain",
)
_THINGS = (
    "a red umbrella", "the heavy box", "a cup of tea", "the letter", "an old map",
    "the yellow bicycle", "a loaf of bread", "the broken clock", "a basket of apples",
    "the wooden chair", "a silver key", "the green jacket", "a small boat", "the newspaper",
    "a bag of potatoes", "the blue notebook", "a jar of honey", "the garden gate",
    "a pair of boots", "the kitchen window", "a bunch of flowers", "the violin",
)
_VERBS_PAST = (
    "found", "carried", "painted", "dropped", "opened", "cleaned", "borrowed", "repaired",
    "forgot", "bought", "hid", "moved", "sold", "washed", "described", "noticed", "lost",
    "wrapped",
)
_VERBS_BASE = (
    "find", "carry", "paint", "drop", "open", "clean", "borrow", "repair", "forget", "buy",
    "hide", "move", "sell", "wash", "describe", "notice", "lose", "wrap",
)
_ADVERBS = (
    "slowly", "quickly", "carefully", "happily", "quietly", "suddenly", "finally", "gladly",
    "nervously", "proudly", "calmly", "secretly",
)
_PLACES = (
    "near the station", "in the garden", "behind the library", "at the market",
    "on the bridge", "by the river", "in the old barn", "under the big tree",
    "at the harbour", "in the kitchen", "on the hill", "outside the bakery",
    "across the street", "in the village square",
)
_TIMES = (
    "yesterday", "this morning", "last winter", "on Sunday", "after lunch", "before dawn",
    "every evening", "last week", "at midnight", "in the spring",
)
_NUMBERS = (
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
    "twenty", "forty",
)
_PLURALS = (
    "apples", "letters", "boats", "chairs", "birds", "books", "candles", "stones", "coins",
    "shells", "lamps", "songs",
)
_TEMPLATES = (  # short: 3 to 10 words, 1 to 3 s at a conversational rate
    "{Subject} {verb} {thing}.",
    "{Subject} {verb} {thing} {time}.",
    "{Name} {adverb} {verb} {thing}.",
    "{Subject} {verb} it {place}.",
    "{Thing} is {place}.",
    "Is {thing} {place}?",
    "Did {subject} {base} {thing}?",
    "Why did {name} {base} {thing}?",
    "Where did {subject} {base} it?",
    "Please {base} {thing}.",
    "{Name}, {base} {thing} {place}!",
    "{Name} counted {number} {plural}.",
    "Nobody {verb} {thing}.",
    "{Time}, {subject} {verb} it.",
    "How {adjective} {name} was!",
    "I {verb} {thing} {time}.",
    "{Subject} was {adjective} {time}.",
    "Oh no, {name} {verb} {thing}!",
)


def _choice(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _subject(rng: np.random.Generator) -> str:
    """'the tired baker', 'a sailor' or a name."""
    if rng.random() < 0.25:
        return _choice(rng, _NAMES)
    adjective = f"{_choice(rng, _ADJECTIVES)} " if rng.random() < 0.6 else ""
    noun_phrase = f"{adjective}{_choice(rng, _PEOPLE)}"
    if rng.random() < 0.7:
        return f"the {noun_phrase}"
    return f"{'an' if noun_phrase[0] in 'aeiou' else 'a'} {noun_phrase}"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(rng: np.random.Generator) -> str:
    """A random short English statement, question or exclamation (3 to 10 words)."""
    slots = {
        "subject": _subject(rng), "name": _choice(rng, _NAMES),
        "verb": _choice(rng, _VERBS_PAST), "base": _choice(rng, _VERBS_BASE),
        "adverb": _choice(rng, _ADVERBS), "adjective": _choice(rng, _ADJECTIVES),
        "thing": _choice(rng, _THINGS),
        "place": _choice(rng, _PLACES), "time": _choice(rng, _TIMES),
        "number": _choice(rng, _NUMBERS), "plural": _choice(rng, _PLURALS),
    }
    slots.update({key.capitalize(): _capitalise(value) for key, value in list(slots.items())})
    return _choice(rng, _TEMPLATES).format(**slots)


# --------------------------------------------------------------------------------------------
# espeak-ng through ctypes

_ENS_OK = 0
_ENOUTPUT_MODE_SYNCHRONOUS = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_RATE, _PITCH, _RANGE = 1, 3, 4

_CALLBACK_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_CHUNKS: list[np.ndarray] = []  # filled by the callback during one espeak_Synth call
_LOCK = threading.Lock()  # one synthesis at a time: _CHUNKS is shared


def _collect(samples, count: int, events) -> int:
    """espeak's synth callback: copy each block of int16 samples; 0 = keep going."""
    if samples and count > 0:
        _CHUNKS.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
    return 0


_CALLBACK = _CALLBACK_TYPE(_collect)  # module-level: must outlive every library instance


def _c_library() -> ctypes.CDLL | None:
    """The process's C library (for ``srand``), or None where it cannot be found."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand.argtypes, libc.srand.restype = [ctypes.c_uint], None
    except (OSError, TypeError, AttributeError):
        return None
    return libc


_LIBC = _c_library()


def _loader() -> ModuleType:
    """The espeakng_loader module, or an ImportError saying how to install it."""
    try:
        import espeakng_loader
    except ImportError:
        raise ImportError(
            "the built-in 'speakers' data set needs espeak-ng from the espeakng-loader "
            f"package: pip install {LOADER_PIN}"
        ) from None
    return espeakng_loader


def _unload(library: ctypes.CDLL) -> None:
    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")
    close(library._handle)


class Espeak:
    """espeak-ng, rendering each utterance in a fresh instance of a private library copy.

    The copy (in a temporary folder) keeps us apart from any other user of espeak-ng in the
    process; loading it anew for each utterance resets espeak's global state. Use it as a
    context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        loader = _loader()
        self.data_path = Path(loader.get_data_path())
        self._folder = tempfile.TemporaryDirectory(prefix="hearproto-espeak-")
        source = Path(loader.get_library_path())
        self._library_path = Path(self._folder.name) / f"private-{source.name}"
        shutil.copyfile(source, self._library_path)
        variants = self.data_path / "voices" / "!v"
        if not (self.data_path / "phontab").is_file() or not variants.is_dir():
            raise RuntimeError(
                f"espeak-ng voice data not found at {self.data_path} (no phontab or voices/!v); "
                f"reinstall it: pip install --force-reinstall {LOADER_PIN}"
            )
        self.variants = frozenset(os.listdir(variants))
        self._languages_checked: set[str] = set()
        self._sample_rate = 0
        with _LOCK, self._instance():
            pass
        self.sample_rate: int = self._sample_rate

    def close(self) -> None:
        self._folder.cleanup()

    def __enter__(self) -> "Espeak":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _instance(self) -> Iterator[ctypes.CDLL]:
        """A freshly loaded and initialised espeak-ng, unloaded afterwards."""
        try:
            library = ctypes.CDLL(str(self._library_path), mode=ctypes.RTLD_LOCAL)
        except OSError as err:
            raise RuntimeError(f"cannot load espeak-ng from espeakng-loader: {err}") from None
        rate = 0
        try:
            _declare(library)
            rate = self._initialise(library)
            self._sample_rate = rate
            library.espeak_SetSynthCallback(_CALLBACK)
            yield library
        finally:
            if rate > 0:
                library.espeak_Terminate()
            _unload(library)

    def _initialise(self, library: ctypes.CDLL) -> int:
        """Initialise for synchronous output; returns the sample rate.

        espeak-ng's own ``espeak_Initialize`` calls ``exit()`` on bad voice data, so this
        uses the ``espeak_ng_*`` calls, which return a status instead.
        """
        library.espeak_ng_InitializePath(str(self.data_path).encode())
        context = ctypes.c_void_p()
        status = library.espeak_ng_Initialize(ctypes.byref(context))
        if context:
            library.espeak_ng_ClearErrorContext(ctypes.byref(context))
        if status == _ENS_OK:
            status = library.espeak_ng_InitializeOutput(_ENOUTPUT_MODE_SYNCHRONOUS, 0, None)
        rate = library.espeak_ng_GetSampleRate() if status == _ENS_OK else 0
        if rate <= 0:
            message = ctypes.create_string_buffer(512)
            library.espeak_ng_GetStatusCodeMessage(status, message, len(message))
            raise RuntimeError(
                f"espeak-ng failed to initialise with the voice data at {self.data_path}: "
                f"{message.value.decode(errors='replace')} (status {status:#x}); reinstall it: "
                f"pip install --force-reinstall {LOADER_PIN}"
            )
        return rate

    def check_voice(self, voice: str) -> None:
        """Raise ``ValueError`` unless espeak knows the language and the ``+variant``."""
        language, _, variant = voice.partition("+")
        if variant and variant not in self.variants:
            raise ValueError(
                f"espeak voice {voice!r}: no variant {variant!r} in {self.data_path}/voices/!v "
                f"(names are case-sensitive; e.g. {', '.join(sorted(self.variants)[:8])}, ...)"
            )
        if language in self._languages_checked:
            return
        with _LOCK, self._instance() as library:
            code = library.espeak_SetVoiceByName(language.encode())
        if code != _EE_OK:
            raise ValueError(
                f"espeak voice {voice!r}: espeak-ng does not know the language {language!r} "
                f"(code {code}); see the 'language' lines under {self.data_path}/lang"
            )
        self._languages_checked.add(language)

    def synthesize(self, voice: str, text: str, rate: int, pitch: int, seed: int,
                   intonation: int = 50) -> np.ndarray:
        """Speak ``text`` at ``rate`` (wpm), ``pitch`` and ``intonation`` (espeak's pitch range;
        both 0-100, 50 = the voice's own); returns int16 samples at :attr:`sample_rate` (maybe
        empty)."""
        encoded = text.encode("utf-8")
        with _LOCK, self._instance() as library:
            code = library.espeak_SetVoiceByName(voice.encode())
            if code != _EE_OK:
                raise ValueError(f"espeak-ng cannot select voice {voice!r} (code {code})")
            library.espeak_SetParameter(_RATE, int(rate), 0)
            library.espeak_SetParameter(_PITCH, int(pitch), 0)
            library.espeak_SetParameter(_RANGE, int(intonation), 0)
            library.espeak_ng_SetRandSeed(int(seed))
            if _LIBC is not None:  # the Klatt voices draw their noise from the C library
                _LIBC.srand(int(seed))
            _CHUNKS.clear()
            try:
                code = library.espeak_Synth(
                    encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
                if code != _EE_OK:
                    raise RuntimeError(f"espeak_Synth failed (code {code}) on {text!r}")
                library.espeak_Synchronize()
                chunks = list(_CHUNKS)
            finally:
                _CHUNKS.clear()
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def _declare(library: ctypes.CDLL) -> None:
    """ctypes signatures of the few espeak-ng calls used here."""
    c = ctypes
    library.espeak_ng_InitializePath.argtypes = [c.c_char_p]
    library.espeak_ng_InitializePath.restype = None
    library.espeak_ng_Initialize.argtypes = [c.POINTER(c.c_void_p)]
    library.espeak_ng_Initialize.restype = c.c_uint
    library.espeak_ng_ClearErrorContext.argtypes = [c.POINTER(c.c_void_p)]
    library.espeak_ng_ClearErrorContext.restype = None
    library.espeak_ng_InitializeOutput.argtypes = [c.c_int, c.c_int, c.c_char_p]
    library.espeak_ng_InitializeOutput.restype = c.c_uint
    library.espeak_ng_GetStatusCodeMessage.argtypes = [c.c_uint, c.c_char_p, c.c_size_t]
    library.espeak_ng_GetStatusCodeMessage.restype = None
    library.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
    library.espeak_SetSynthCallback.restype = None
    library.espeak_SetVoiceByName.argtypes = [c.c_char_p]
    library.espeak_SetParameter.argtypes = [c.c_int, c.c_int, c.c_int]
    library.espeak_ng_SetRandSeed.argtypes = [c.c_long]
    library.espeak_ng_SetRandSeed.restype = None
    library.espeak_Synth.argtypes = [
        c.c_void_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint, c.c_uint, c.c_void_p, c.c_void_p
    ]


# --------------------------------------------------------------------------------------------
# From espeak's samples to a clip


def _problem(wave: np.ndarray) -> str | None:
    """Why a render is unusable ('empty', 'non-finite', 'silent'), or None."""
    if wave.size == 0:
        return "empty"
    if not np.isfinite(wave).all():
        return "non-finite"
    if np.abs(wave).max() < SILENT_PEAK:
        return "silent"
    return None


def _trim(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading and trailing silence (below TRIM_DB re the peak), keeping a margin."""
    loud = np.flatnonzero(np.abs(wave) > np.abs(wave).max() * 10 ** (TRIM_DB / 20))
    margin = int(MARGIN_SECONDS * sample_rate)
    return wave[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def _to_clip(samples: np.ndarray, source_rate: int,
             warp: float = 1.0) -> tuple[np.ndarray | None, str | None]:
    """int16 espeak output -> (trimmed, resampled, peak-normalised float32 clip, problem).
    ``warp`` scales every frequency (formants and pitch) and divides the duration: the
    samples are read as if made at ``warp * source_rate``."""
    wave = samples.astype(np.float32) / 32768.0
    problem = _problem(wave)
    if problem is not None:
        return None, problem
    wave = soxr.resample(_trim(wave, source_rate), warp * source_rate, SAMPLE_RATE,
                         quality="HQ")
    problem = _problem(wave)
    if problem is not None:
        return None, f"{problem} after resampling"
    return (wave * (PEAK / np.abs(wave).max())).astype(np.float32), None


def tilt(wave: np.ndarray, db_per_octave: float, sample_rate: int) -> np.ndarray:
    """``wave`` ``(L,)`` with its spectrum tilted by ``db_per_octave`` about 1 kHz (flat below
    100 Hz). ``(L,)``."""
    size = next_fast_len(wave.size, real=True)
    frequencies = np.maximum(np.fft.rfftfreq(size, 1 / sample_rate), 100.0)
    gain = (frequencies / 1000.0) ** (db_per_octave / (20 * np.log10(2)))
    return irfft(rfft(wave, n=size) * gain, n=size)[: wave.size]


def _write_flac(path: Path, wave: np.ndarray) -> None:
    """Write mono 16-bit FLAC at SAMPLE_RATE, atomically (temporary file, then rename)."""
    pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        sf.write(temporary, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The room and the background


@dataclass(frozen=True)
class Scene:
    """Where one utterance is heard: the room and the babble behind the speaker."""

    rt60: float  # seconds for the reverberation to decay by 60 dB
    drr_db: float  # direct-to-reverberant energy ratio
    snr_db: float  # speech to babble
    talkers: int  # voices in the babble
    seed: int  # of the room's noise and of where the babble's talkers start


def draw_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        rt60=float(rng.uniform(*RT60_SECONDS)), drr_db=float(rng.uniform(*DRR_DB)),
        snr_db=float(rng.uniform(*BABBLE_SNR_DB)),
        talkers=int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1)),
        seed=int(rng.integers(2**31)),
    )


def room_response(rng: np.random.Generator, rt60: float, drr_db: float,
                  sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """A room's impulse response: the direct sound (a unit impulse) and, ``drr_db`` below it
    in energy, a tail of Gaussian noise whose amplitude falls by 60 dB in ``rt60`` seconds.
    Returns the whole response and the tail alone at unit energy, both
    ``(round(rt60 * sample_rate),)``."""
    t = np.arange(max(2, round(rt60 * sample_rate))) / sample_rate
    tail = rng.standard_normal(t.size) * 10.0 ** (-3.0 * t / rt60)
    tail[0] = 0.0
    tail /= np.linalg.norm(tail)
    response = tail * 10.0 ** (-drr_db / 20)
    response[0] = 1.0
    return response, tail


def _rms(wave: np.ndarray) -> float:
    return max(float(np.sqrt(np.mean(np.square(wave)))), 1e-12)


def babble(track: np.ndarray, rng: np.random.Generator, length: int, talkers: int) -> np.ndarray:
    """``talkers`` stretches of ``track`` ``(N,)`` (read circularly from random starts),
    summed and scaled to unit RMS. ``(length,)``."""
    starts = rng.integers(track.size, size=talkers)
    stretches = track[(starts[:, None] + np.arange(length)) % track.size]
    mix = stretches.sum(axis=0, dtype=np.float64)
    return mix / _rms(mix)


def hear_in_scene(wave: np.ndarray, scene: Scene, track: np.ndarray) -> np.ndarray:
    """A dry clip ``(L,)`` spoken in ``scene``'s room over its babble (the babble through the
    tail alone: the other talkers are further away), peak-normalised to PEAK. ``(L,)``."""
    rng = np.random.default_rng(scene.seed)
    response, tail = room_response(rng, scene.rt60, scene.drr_db, SAMPLE_RATE)
    speech = fftconvolve(wave, response)[: wave.size]
    background = fftconvolve(babble(track, rng, wave.size, scene.talkers), tail)[: wave.size]
    mixed = speech + background * (_rms(speech) / _rms(background) * 10.0 ** (-scene.snr_db / 20))
    return (mixed * (PEAK / np.abs(mixed).max())).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Rendering


@dataclass
class _Report:
    """What went wrong during a render, for one warning at the end."""

    broken: Counter[tuple[str, str]] = field(default_factory=Counter)  # (speaker, problem) -> renders dropped
    short: dict[str, int] = field(default_factory=dict)  # speaker -> clips made, if too few
    retried: int = 0  # renders outside MIN_SECONDS..MAX_SECONDS, redone with a new sentence

    def add(self, other: "_Report") -> None:
        self.broken.update(other.broken)
        self.short.update(other.short)
        self.retried += other.retried

    def warn(self, wanted: int) -> None:
        parts = []
        if self.broken:
            details = "; ".join(f"{speaker}: {n} {problem}"
                                for (speaker, problem), n in sorted(self.broken.items()))
            parts.append(f"dropped {sum(self.broken.values())} broken espeak render(s) and "
                         f"spoke another sentence instead ({details})")
        if self.short:
            details = "; ".join(f"{speaker}: {made} of {wanted}"
                                for speaker, made in sorted(self.short.items()))
            parts.append(f"some speakers have fewer clips than asked, after {MAX_ATTEMPTS} "
                         f"sentences per clip ({details})")
        if parts:
            warnings.warn("speakers data set: " + "; ".join(parts), RuntimeWarning, stacklevel=3)


def _style(name: str, voice: str) -> Voice:
    """The speaker's base rate and pitch (defaults for a voice added to SPEAKERS by hand)."""
    style = _STYLES.get(name)
    return style if style is not None and style.voice == voice else Voice(voice, 170, 50)


def _speaker_rng(seed: int, name: str) -> np.random.Generator:
    """One stream per (seed, speaker), independent of the other speakers and their order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _speaker_clips(
    espeak: Espeak, name: str, style: Voice, count: int, seed: int, track: np.ndarray,
    report: _Report,
) -> Iterator[dict]:
    """Up to ``count`` clips of one speaker, each a new sentence lasting 1-3 s, in a scene."""
    rng = _speaker_rng(seed, name)
    spoken: set[str] = set()
    for _ in range(count):
        for _attempt in range(MAX_ATTEMPTS):
            text = sentence(rng)
            rate = style.rate + int(rng.integers(-RATE_JITTER, RATE_JITTER + 1))
            jitter = int(rng.integers(-PITCH_JITTER, PITCH_JITTER + 1))
            intonation = int(rng.integers(INTONATION[0], INTONATION[1] + 1))
            effort = float(rng.uniform(-1.0, 1.0))
            warp = float(rng.uniform(1 - FORMANT_WARP, 1 + FORMANT_WARP))
            noise_seed = int(rng.integers(2**31))
            scene = draw_scene(rng)
            if text in spoken:
                continue
            pitch = int(np.clip(style.pitch + jitter + round(EFFORT_PITCH * effort), 0, 100))
            wave, problem = _to_clip(
                espeak.synthesize(style.voice, text, rate, pitch, noise_seed, intonation),
                espeak.sample_rate, warp,
            )
            if problem is not None:
                report.broken[name, problem] += 1
                continue
            if not MIN_SECONDS <= wave.size / SAMPLE_RATE <= MAX_SECONDS:
                report.retried += 1
                continue
            spoken.add(text)
            wave = tilt(wave.astype(np.float64), EFFORT_TILT * effort, SAMPLE_RATE)
            yield {"text": text, "rate": rate, "pitch": pitch, "intonation": intonation,
                   "effort": effort, "warp": warp, "scene": scene,
                   "wave": hear_in_scene(wave, scene, track)}
            break


def babble_track(espeak: Espeak, seed: int) -> np.ndarray:
    """BABBLE_UTTERANCES sentences spoken by the BABBLE_VOICES in turn, each at unit RMS, end
    to end: the material of every clip's babble, a function of ``seed`` alone. ``(N,)``."""
    rng = np.random.default_rng([seed, zlib.crc32(b"babble"), 0])
    pieces = []
    for i in range(BABBLE_UTTERANCES):
        text = sentence(rng)
        rate, pitch = int(rng.integers(150, 201)), int(rng.integers(35, 66))
        noise_seed = int(rng.integers(2**31))
        voice = BABBLE_VOICES[i % len(BABBLE_VOICES)]
        wave, problem = _to_clip(espeak.synthesize(voice, text, rate, pitch, noise_seed),
                                 espeak.sample_rate)
        if problem is None:
            pieces.append(wave / _rms(wave))
    if not pieces:
        raise RuntimeError("espeak-ng rendered no usable babble: every render was broken")
    return np.concatenate(pieces).astype(np.float32)


def _check_arguments(limit_per_class: int | None, seed: int) -> int:
    count = DEFAULT_PER_SPEAKER if limit_per_class is None else limit_per_class
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"limit_per_class must be a positive integer or None, got "
                         f"{limit_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(count)


def _record(path: str, name: str, clip: dict) -> dict:
    scene = clip["scene"]
    return {
        "path": path, "label": name, "text": clip["text"], "rate": clip["rate"],
        "pitch": clip["pitch"], "intonation": clip["intonation"],
        "effort": round(clip["effort"], 3), "warp": round(clip["warp"], 4),
        "seconds": clip["wave"].size / SAMPLE_RATE, "rt60": round(scene.rt60, 3),
        "drr_db": round(scene.drr_db, 2), "babble_snr_db": round(scene.snr_db, 2),
        "talkers": scene.talkers,
    }


def _render_speakers(out_dir: Path, count: int, seed: int, track: np.ndarray,
                     speakers: list[tuple[str, Voice]]) -> list[tuple[list[dict], _Report]]:
    """Write up to ``count`` clips of each of ``speakers`` (name, style) into ``out_dir``;
    returns each speaker's records and report. Runs in a worker process or in this one."""
    results = []
    with Espeak() as espeak:
        for name, style in speakers:
            report = _Report()
            records = []
            for made, clip in enumerate(_speaker_clips(espeak, name, style, count, seed, track,
                                                       report)):
                path = f"{name}/{name}_{made:03d}.flac"
                _write_flac(out_dir / path, clip["wave"])
                records.append(_record(path, name, clip))
            if len(records) < count:
                report.short[name] = len(records)
            results.append((records, report))
    return results


def render(
    out_dir: Path, limit_per_class: int | None = None, seed: int = 0, progress: bool = True,
    workers: int | None = None,
) -> list[dict]:
    """Synthesise the data set into ``out_dir/<speaker>/<speaker>_<index:03d>.flac``.

    ``limit_per_class`` clips per speaker (default 70); the same ``seed`` gives byte-identical
    files whatever the number of ``workers`` (processes; default: one per core for a large
    render), and a smaller limit gives the first clips of a larger render. Returns one record
    per clip, speaker by speaker: ``path`` (relative, posix), ``label`` (the speaker),
    ``text``, ``rate`` (words per minute), ``pitch`` and ``intonation`` (espeak's 0-100
    scales), ``effort`` (-1 to 1), ``warp`` (the frequency scale), ``seconds``, and the scene:
    ``rt60`` (s), ``drr_db``, ``babble_snr_db``, ``talkers``. Broken renders are dropped and
    reported in a ``RuntimeWarning``. Files of the same names are replaced, others left alone.
    Raises ``ImportError`` without espeakng-loader, ``ValueError`` for a voice espeak does not
    know, ``RuntimeError`` if espeak-ng fails.
    """
    count = _check_arguments(limit_per_class, seed)
    out_dir = Path(out_dir)
    speakers = [(name, _style(name, voice)) for name, voice in SPEAKERS.items()]
    with Espeak() as espeak:
        for name, voice in [*SPEAKERS.items(), *(("babble", v) for v in BABBLE_VOICES)]:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"speaker name {name!r} is not a safe folder name")
            try:
                espeak.check_voice(voice)
            except ValueError as err:
                raise ValueError(f"speaker {name!r}: {err}") from None
        track = babble_track(espeak, int(seed))
    chunks = [speakers[i:i + SPEAKERS_PER_TASK] for i in range(0, len(speakers), SPEAKERS_PER_TASK)]
    records: list[dict] = []
    report = _Report()
    with tqdm(total=count * len(speakers), unit="clip", desc="speakers",
              disable=not progress) as bar:
        for _, results in map_chunks(_render_speakers, chunks, out_dir, count, int(seed), track,
                                     workers=workers, total=count * len(speakers)):
            for speaker_records, speaker_report in results:
                records += speaker_records
                report.add(speaker_report)
                bar.update(count)
    report.warn(count)
    return records
