"""The library's typed errors. Their messages speak of arguments and files; the command line
adds its flags (:mod:`hearproto.cli`)."""

from __future__ import annotations

__all__ = ["AudioError"]


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, or of the wrong shape."""
