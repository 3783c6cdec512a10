"""The built-in ``speakers`` data set: synthetic speech from espeak-ng voices.

Each speaker is an espeak-ng voice, an English accent with a voice variant from espeak's
``voices/!v`` folder (``"en-gb-scotland+f2"``), at its own base speaking rate and pitch. Each
utterance is a fresh English sentence from a small seeded grammar, spoken at a rate and pitch
jittered around the speaker's base, trimmed of leading and trailing silence, resampled to
16 kHz and written as 16-bit FLAC. Clips last 2 to 8 seconds.

espeak-ng comes from the ``espeakng-loader`` wheel (library and voice data, no system
install). espeak-ng keeps synthesis state from one utterance to the next (oscillator phase,
flutter, filter memories, its noise generator) and has no call to reset it, so a clip would
depend on everything rendered before it. :class:`Espeak` therefore runs every utterance in a
fresh instance of a private copy of the library (about 4 ms each) and seeds both noise
generators it draws from (its own, and the C library's ``rand`` in the Klatt voices). Every
clip is thus a pure function of (voice, text, rate, pitch, seed): the same seed gives
byte-identical files in any process, and ``limit_per_class=N`` renders exactly the first N
clips of each speaker of the full data set.
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
from tqdm.auto import tqdm

__all__ = ["SAMPLE_RATE", "SPEAKERS", "render"]

SAMPLE_RATE = 16_000
DEFAULT_PER_SPEAKER = 48
MIN_SECONDS, MAX_SECONDS = 2.0, 8.0
LOADER_PIN = "espeakng-loader==0.2.4"

RATE_JITTER = 25  # words per minute, either side of the speaker's base
PITCH_JITTER = 20  # espeak pitch units (0-100, 50 = the voice's own pitch)
MAX_ATTEMPTS = 30  # sentences tried per clip before giving up on it
TRIM_DB = -40.0  # leading/trailing samples quieter than this (re the peak) are silence
MARGIN_SECONDS = 0.05  # silence kept on each side of the trimmed speech
PEAK = 0.7  # clips are peak-normalised to this level (about -3 dBFS)
SILENT_PEAK = 1e-3  # a render whose peak is below this is silent

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

# Chosen from every usable variant (robotic, whispered and effect voices left out) by
# rendering 12 clips each and dropping, one at a time, the speaker most often confused by a
# nearest-class-mean classifier on time-averaged log-mel frames (the model's prototypes are
# one frame each), then balanced to five speakers per accent: 15 female, 1 child-like (Zac),
# 24 male. Base rates lie in 160-180 wpm, base pitches in 44-56 (espeak's 50 is the variant's
# own pitch).
_TABLE: list[tuple[str, str, int, int]] = [
    # (accent, variant file in voices/!v, base rate, base pitch)
    ("gb", "f5", 170, 50),
    ("gb", "belinda", 165, 54),
    ("gb", "adam", 175, 46),
    ("gb", "pablo", 160, 50),
    ("gb", "Lee", 180, 54),
    ("us", "Alicia", 175, 46),
    ("us", "anika", 165, 50),
    ("us", "grandma", 160, 46),
    ("us", "linda", 180, 54),
    ("us", "ed", 170, 50),
    ("rp", "Andrea", 170, 54),
    ("rp", "steph3", 180, 50),
    ("rp", "announcer", 165, 56),
    ("rp", "edward", 160, 50),
    ("rp", "travis", 175, 46),
    ("scottish", "Andy", 170, 50),
    ("scottish", "klatt", 165, 54),
    ("scottish", "max", 180, 46),
    ("scottish", "Reed", 160, 50),
    ("scottish", "Gene2", 175, 54),
    ("caribbean", "Annie", 165, 50),
    ("caribbean", "f1", 175, 54),
    ("caribbean", "ian", 170, 46),
    ("caribbean", "Nguyen", 160, 50),
    ("caribbean", "miguel", 180, 54),
    ("lancaster", "f2", 160, 46),
    ("lancaster", "zac", 170, 44),
    ("lancaster", "iven", 175, 50),
    ("lancaster", "m4", 165, 54),
    ("lancaster", "paul", 180, 50),
    ("midlands", "f3", 175, 50),
    ("midlands", "m5", 160, 46),
    ("midlands", "Marco", 170, 50),
    ("midlands", "mike2", 180, 54),
    ("midlands", "kaukovalta", 165, 50),
    ("nyc", "f4", 165, 50),
    ("nyc", "shelby", 175, 46),
    ("nyc", "boris", 170, 54),
    ("nyc", "norbert", 160, 50),
    ("nyc", "Storm", 180, 46),
]


_STYLES: dict[str, Voice] = {
    f"{accent}_{variant.lower()}": Voice(f"{_ACCENTS[accent]}+{variant}", rate, pitch)
    for accent, variant, rate, pitch in _TABLE
}

SPEAKERS: dict[str, str] = {name: style.voice for name, style in _STYLES.items()}
"""Speaker name -> espeak voice string (language + ``+variant``)."""

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
_TEMPLATES = (
    "{Clause}.",
    "{Time}, {untimed}.",
    "{Clause}, and {clause2}.",
    "{Name} said that {clause}.",
    "When {clause}, {clause2}.",
    "Did {subject} {base} {thing} {place}, or did {subject2} {base2} it {time}?",
    "{Name} counted {number} {plural} {place} {time}.",
    "I think that {subject} will {base} {thing} {place} {time}.",
    "Please {base} {thing} {place} before {name} comes home.",
    "{Clause} because {subject2} {verb2} {thing2}.",
    "Nobody knew why {clause}.",
    "{Name} never {verb} {thing}, but {subject} did {time}.",
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


def _clause(rng: np.random.Generator, timed: bool = True) -> str:
    """subject [adverb] verb object [place] [time]."""
    words = [_subject(rng)]
    if rng.random() < 0.3:
        words.append(_choice(rng, _ADVERBS))
    words += [_choice(rng, _VERBS_PAST), _choice(rng, _THINGS)]
    if rng.random() < 0.6:
        words.append(_choice(rng, _PLACES))
    if timed and rng.random() < 0.4:
        words.append(_choice(rng, _TIMES))
    return " ".join(words)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(rng: np.random.Generator) -> str:
    """A random English sentence from a small grammar (about 6 to 25 words)."""
    slots = {
        "clause": _clause(rng), "clause2": _clause(rng), "untimed": _clause(rng, timed=False),
        "subject": _subject(rng), "subject2": _subject(rng), "name": _choice(rng, _NAMES),
        "verb": _choice(rng, _VERBS_PAST), "verb2": _choice(rng, _VERBS_PAST),
        "base": _choice(rng, _VERBS_BASE), "base2": _choice(rng, _VERBS_BASE),
        "thing": _choice(rng, _THINGS), "thing2": _choice(rng, _THINGS),
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
_RATE, _PITCH = 1, 3

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

    def synthesize(self, voice: str, text: str, rate: int, pitch: int, seed: int) -> np.ndarray:
        """Speak ``text``; returns int16 samples at :attr:`sample_rate` (maybe empty)."""
        encoded = text.encode("utf-8")
        with _LOCK, self._instance() as library:
            code = library.espeak_SetVoiceByName(voice.encode())
            if code != _EE_OK:
                raise ValueError(f"espeak-ng cannot select voice {voice!r} (code {code})")
            library.espeak_SetParameter(_RATE, int(rate), 0)
            library.espeak_SetParameter(_PITCH, int(pitch), 0)
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


def _to_clip(samples: np.ndarray, source_rate: int) -> tuple[np.ndarray | None, str | None]:
    """int16 espeak output -> (trimmed, resampled, peak-normalised float32 clip, problem)."""
    wave = samples.astype(np.float32) / 32768.0
    problem = _problem(wave)
    if problem is not None:
        return None, problem
    wave = soxr.resample(_trim(wave, source_rate), source_rate, SAMPLE_RATE, quality="HQ")
    problem = _problem(wave)
    if problem is not None:
        return None, f"{problem} after resampling"
    return (wave * (PEAK / np.abs(wave).max())).astype(np.float32), None


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
# Rendering


@dataclass
class _Report:
    """What went wrong during a render, for one warning at the end."""

    broken: Counter[tuple[str, str]] = field(default_factory=Counter)  # (speaker, problem) -> renders dropped
    short: dict[str, int] = field(default_factory=dict)  # speaker -> clips made, if too few
    retried: int = 0  # renders outside MIN_SECONDS..MAX_SECONDS, redone with a new sentence

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
    espeak: Espeak, name: str, style: Voice, count: int, seed: int, report: _Report
) -> Iterator[dict]:
    """Up to ``count`` clips of one speaker, each a new sentence lasting 2-8 s."""
    rng = _speaker_rng(seed, name)
    spoken: set[str] = set()
    for _ in range(count):
        for _attempt in range(MAX_ATTEMPTS):
            text = sentence(rng)
            rate = style.rate + int(rng.integers(-RATE_JITTER, RATE_JITTER + 1))
            pitch = int(np.clip(style.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1),
                                0, 100))
            noise_seed = int(rng.integers(2**31))
            if text in spoken:
                continue
            wave, problem = _to_clip(
                espeak.synthesize(style.voice, text, rate, pitch, noise_seed), espeak.sample_rate
            )
            if problem is not None:
                report.broken[name, problem] += 1
                continue
            if not MIN_SECONDS <= wave.size / SAMPLE_RATE <= MAX_SECONDS:
                report.retried += 1
                continue
            spoken.add(text)
            yield {"text": text, "rate": rate, "pitch": pitch, "wave": wave}
            break


def _check_arguments(limit_per_class: int | None, seed: int) -> int:
    count = DEFAULT_PER_SPEAKER if limit_per_class is None else limit_per_class
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"limit_per_class must be a positive integer or None, got "
                         f"{limit_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(count)


def render(
    out_dir: Path, limit_per_class: int | None = None, seed: int = 0, progress: bool = True
) -> list[dict]:
    """Synthesise the data set into ``out_dir/<speaker>/<speaker>_<index:03d>.flac``.

    ``limit_per_class`` clips per speaker (default 48); the same ``seed`` gives byte-identical
    files, and a smaller limit gives the first clips of a larger render. Returns one record per
    clip, speaker by speaker: ``path`` (relative, posix), ``label`` (the speaker), ``text``,
    ``rate`` (words per minute), ``pitch`` (espeak's 0-100 scale) and ``seconds``. Broken
    renders are dropped and reported in a ``RuntimeWarning``. Files of the same names are
    replaced, others left alone. Raises ``ImportError`` without espeakng-loader,
    ``ValueError`` for a voice espeak does not know, ``RuntimeError`` if espeak-ng fails.
    """
    count = _check_arguments(limit_per_class, seed)
    out_dir = Path(out_dir)
    speakers = dict(SPEAKERS)
    records: list[dict] = []
    report = _Report()
    with Espeak() as espeak:
        for name, voice in speakers.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"speaker name {name!r} is not a safe folder name")
            try:
                espeak.check_voice(voice)
            except ValueError as err:
                raise ValueError(f"speaker {name!r}: {err}") from None
        with tqdm(total=count * len(speakers), unit="clip", desc="speakers",
                  disable=not progress) as bar:
            for name, voice in speakers.items():
                made = 0
                for clip in _speaker_clips(espeak, name, _style(name, voice), count, int(seed),
                                           report):
                    path = f"{name}/{name}_{made:03d}.flac"
                    _write_flac(out_dir / path, clip["wave"])
                    records.append({
                        "path": path, "label": name, "text": clip["text"],
                        "rate": clip["rate"], "pitch": clip["pitch"],
                        "seconds": clip["wave"].size / SAMPLE_RATE,
                    })
                    made += 1
                    bar.update()
                if made < count:
                    report.short[name] = made
    report.warn(count)
    return records
