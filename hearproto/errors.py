"""The library's typed errors. Their messages speak of arguments and files; the command line
adds its flags (:mod:`hearproto.cli`)."""

from __future__ import annotations

__all__ = ["AudioError", "CheckpointError", "DatasetError", "SettingError", "RunMismatch",
           "RunLocked", "TrainingDiverged"]


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, or of the wrong shape."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, foreign, or not finite."""


class DatasetError(ValueError):
    """A dataset that cannot be used as asked: missing, empty, or not what a run expects."""


class RunMismatch(ValueError):
    """A run folder that holds another run: other settings or other data than asked."""


class RunLocked(RuntimeError):
    """A run folder another process is training into."""


class TrainingDiverged(RuntimeError):
    """A training loss that stopped being finite."""


class SettingError(ValueError):
    """A setting outside its valid range; ``setting`` names it (the command line adds its
    flag)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
