"""The sample banks the built-in ``instruments`` are rendered from: where each lies, what it is,
and one way to play a note with any of them.

Each bank is a General MIDI set of real recordings, packaged by Debian, and read from its
package's files: SoundFonts (``.sf2``, and ``.sf3`` whose samples are Ogg-compressed) are played
with ``tinysoundfont``, GUS patches (``.pat``) with :mod:`hearproto.data.gus`. ``make banks``
(part of ``make install``) unpacks the packages into the virtual environment without root;
a system-wide install (``apt-get install PACKAGE``) is found too.

Banks of one *lineage* share recordings: MuseScore General grew out of FluidR3 and keeps many
of its samples. The unseen-bank split holds out a whole lineage, so that a held-out note is
never a twin of a training one.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["BANKS", "Bank", "BankPlayer", "bank_identity", "bank_path", "lineage_title",
           "open_bank", "search_dirs"]

BANKS_ENV = "HEARPROTO_BANKS"
INSTALL_HINT = "run `make banks`, or `apt-get install {package}`"
TINYSOUNDFONT_HINT = "pip install --no-deps tinysoundfont==0.3.7"


@dataclass(frozen=True)
class Bank:
    name: str
    title: str
    lineage: str
    package: str  # the Debian package that ships it
    file: str  # path under the package's root (usr/share/...)
    kind: str  # "soundfont" or "gus"
    licence: str


BANKS: dict[str, Bank] = {bank.name: bank for bank in (
    Bank("fluidr3", "FluidR3 GM (Frank Wen)", "fluidr3", "fluid-soundfont-gm",
         "usr/share/sounds/sf2/FluidR3_GM.sf2", "soundfont", "MIT"),
    Bank("musescore", "MuseScore General (S. Christian Collins, after FluidR3)", "fluidr3",
         "musescore-general-soundfont", "usr/share/sounds/sf3/MuseScore_General_Full.sf3",
         "soundfont", "MIT"),
    Bank("timgm6mb", "TimGM6mb (Tim Brechbill)", "timgm6mb", "timgm6mb-soundfont",
         "usr/share/sounds/sf2/TimGM6mb.sf2", "soundfont", "GPL-2"),
    Bank("freepats", "FreePats (freepats.opensrc.org)", "freepats", "freepats",
         "usr/share/midi/freepats/Tone_000", "gus", "GPL-2 with a composition exception"),
)}


def lineage_title(lineage: str) -> str:
    """A lineage as readers know it, by its banks' names ("FluidR3 GM and MuseScore General");
    a name that is no lineage of :data:`BANKS` comes back as it is."""
    names = [bank.title.split(" (")[0] for bank in BANKS.values() if bank.lineage == lineage]
    return " and ".join(names) or lineage


def search_dirs() -> list[Path]:
    """Package roots searched in order: ``$HEARPROTO_BANKS`` (colon-separated), the virtual
    environment's ``share/hearproto-banks``, then the system root."""
    dirs = [Path(p) for p in os.environ.get(BANKS_ENV, "").split(os.pathsep) if p]
    return [*dirs, Path(sys.prefix) / "share" / "hearproto-banks", Path("/")]


def bank_path(name: str) -> Path:
    """Where bank ``name`` lies; a missing bank raises FileNotFoundError saying how to install
    it."""
    bank = BANKS[name]
    for root in search_dirs():
        if (root / bank.file).exists():
            return root / bank.file
    raise FileNotFoundError(
        f"the sample bank {bank.title} ({bank.file}) is not installed: "
        + INSTALL_HINT.format(package=bank.package))


def _package_version(path: Path, package: str) -> str:
    """The Debian version of ``package`` from the changelog installed beside ``path``."""
    root = path
    while root != root.parent and root.name != "usr":
        root = root.parent
    changelog = root / "share" / "doc" / package / "changelog.Debian.gz"
    try:
        with gzip.open(changelog, "rt", errors="replace") as lines:
            first = lines.readline()
        return first.split("(", 1)[1].split(")", 1)[0]
    except (OSError, IndexError):
        return "unknown"


@lru_cache(maxsize=None)
def _digest(path: Path, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    files = sorted(path.glob("*.pat")) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def bank_identity(name: str) -> dict:
    """What identifies the installed bank: package, version and a digest of its files."""
    bank, path = BANKS[name], bank_path(name)
    stat = path.stat()
    return {"bank": name, "package": bank.package,
            "version": _package_version(path, bank.package),
            "sha256": _digest(path, stat.st_size, stat.st_mtime)}


class BankPlayer(Protocol):
    def has(self, program: int) -> bool: ...

    def render(self, program: int, midi: int, velocity: int, hold_seconds: float,
               total_seconds: float) -> np.ndarray: ...


class SoundFontPlayer:
    """A SoundFont played with tinysoundfont; notes never leak into the next one."""

    def __init__(self, path: Path, sample_rate: int):
        try:
            import tinysoundfont
        except ImportError:
            raise ImportError("the instruments dataset is rendered with tinysoundfont, which "
                              f"is not installed: {TINYSOUNDFONT_HINT}") from None
        self.sample_rate = sample_rate
        self.synth = tinysoundfont.Synth(samplerate=sample_rate)
        self.sfid = self.synth.sfload(str(path))

    def has(self, program: int) -> bool:
        try:
            return bool(self.synth.sfpreset_name(self.sfid, 0, program))
        except Exception:  # tinysoundfont raises its own error for a missing preset
            return False

    def _generate(self, frames: int) -> np.ndarray:
        return np.frombuffer(self.synth.generate(frames), dtype=np.float32).reshape(frames, 2)

    def _silence(self, max_seconds: float = 2.0) -> None:
        self.synth.sounds_off()
        block = 256
        for _ in range(int(max_seconds * self.sample_rate) // block):
            if not self._generate(block).any():
                return
        raise RuntimeError(f"the synthesiser still sounds {max_seconds} s after sounds_off")

    def render(self, program: int, midi: int, velocity: int, hold_seconds: float,
               total_seconds: float) -> np.ndarray:
        total = round(total_seconds * self.sample_rate)
        held = min(total, round(hold_seconds * self.sample_rate))
        self.synth.program_select(0, self.sfid, 0, program)
        self.synth.noteon(0, midi, velocity)
        attack = self._generate(held)
        self.synth.noteoff(0, midi)
        release = self._generate(total - held)
        self._silence()
        return np.concatenate([attack, release]).mean(axis=1, dtype=np.float32)


class PatchPlayer:
    """A folder of GUS patches named ``PPP_Name.pat`` by their 0-based GM program."""

    def __init__(self, path: Path, sample_rate: int):
        from hearproto.data.gus import read_patch

        self.sample_rate = sample_rate
        self.files = {int(p.name[:3]): p for p in sorted(path.glob("[0-9][0-9][0-9]_*.pat"))}
        self._read = lru_cache(maxsize=None)(read_patch)

    def has(self, program: int) -> bool:
        return program in self.files

    def render(self, program: int, midi: int, velocity: int, hold_seconds: float,
               total_seconds: float) -> np.ndarray:
        from hearproto.data.gus import render_patch

        return render_patch(self._read(self.files[program]), midi, velocity, hold_seconds,
                            total_seconds, self.sample_rate)


def open_bank(name: str, sample_rate: int) -> Any:
    """A :class:`BankPlayer` for bank ``name`` (loading a large SoundFont takes seconds)."""
    path = bank_path(name)
    player = SoundFontPlayer if BANKS[name].kind == "soundfont" else PatchPlayer
    return player(path, sample_rate)
