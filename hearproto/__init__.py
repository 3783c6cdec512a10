"""hearproto: audio identification with playable spectral prototypes (ISMIR 2022 companion)."""

from hearproto.audio import (
    PRESETS,
    AudioError,
    FrontEnd,
    LogMel,
    load_audio,
    mel_to_audio,
    prototype_to_audio,
    save_audio,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AudioError",
    "FrontEnd",
    "LogMel",
    "load_audio",
    "mel_to_audio",
    "prototype_to_audio",
    "save_audio",
    "__version__",
]
