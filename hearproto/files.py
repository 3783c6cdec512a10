"""Where the project's files go (:func:`data_home`) and how they are written: atomically, to a
temporary file or folder beside the target, then renamed over it. A process killed mid-write
leaves its temporary behind; the next writer of the same kind removes it
(:func:`remove_stale_temporaries`)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "data_home", "temporary_folder", "publish_folder",
           "remove_stale_temporaries", "OWNER_FILE"]

#: The file inside a temporary folder naming the host and pid of the process building it.
OWNER_FILE = ".hearproto-owner"
#: A temporary without an owner file (killed before writing it, or made by an older version)
#: is stale after this many seconds.
UNOWNED_STALE_SECONDS = 3600


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


def _owner_alive(folder: Path) -> bool:
    """Whether the process that made temporary ``folder`` may still be writing it."""
    try:
        host, pid = (folder / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        try:
            return time.time() - folder.stat().st_mtime < UNOWNED_STALE_SECONDS
        except OSError:
            return False
    if host != socket.gethostname():
        return True  # another machine's (a shared folder): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def remove_stale_temporaries(parent: Path, prefix: str) -> list[Path]:
    """Remove the folders ``parent/.PREFIX*`` that :func:`temporary_folder` made for a process
    that is gone (killed mid-write). Returns what was removed."""
    removed = []
    if not Path(parent).is_dir():
        return removed
    for folder in Path(parent).glob(f".{prefix}*"):
        if folder.is_dir() and not folder.is_symlink() and not _owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def temporary_folder(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new folder ``parent/.PREFIX-XXXX`` to build into, then :func:`publish_folder` into
    place; removed if it is still there when the block ends. Stale folders of the same prefix
    (their owner is gone) are removed first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(parent, prefix)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{prefix}-"))
    try:
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, target: Path) -> None:
    """Move a finished :func:`temporary_folder` to ``target`` (which must not exist) in one
    rename."""
    (tmp / OWNER_FILE).unlink(missing_ok=True)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
