"""hearproto: audio identification with playable spectral prototypes (ISMIR 2022 companion).

The names below load on first use, so that ``import hearproto.transforms`` (pure torch) does
not import the audio libraries.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_HOMES = {
    "PRESETS": "hearproto.frontend",
    "FrontEnd": "hearproto.frontend",
    "LogMel": "hearproto.frontend",
    "AudioError": "hearproto.errors",
    "load_audio": "hearproto.audio",
    "mel_to_audio": "hearproto.audio",
    "prototype_to_audio": "hearproto.audio",
    "save_audio": "hearproto.audio",
    "identify": "hearproto.identification",
    "explain": "hearproto.identification",
    "Identification": "hearproto.identification",
}

__all__ = [*_HOMES, "__version__"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'hearproto' has no attribute {name!r}")
