"""Where the project's files go (:func:`data_home`) and how they are written: atomically, to a
temporary file beside the target, then renamed over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "data_home"]


def data_home() -> Path:
    """Where generated data and caches go: ``$HEARPROTO_DATA``, else the user's cache
    (``$XDG_CACHE_HOME/hearproto`` or ``~/.cache/hearproto``)."""
    if os.environ.get("HEARPROTO_DATA"):
        return Path(os.environ["HEARPROTO_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hearproto"


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; on success it replaces
    ``path`` in one rename, on failure it is removed. Readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
