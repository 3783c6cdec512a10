"""A user's own sounds: any ``CLASS/**/*.{wav,flac,mp3,ogg}`` tree, one class per top-level folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from hearproto.audio import AUDIO_EXTENSIONS

__all__ = ["list_audio_files", "index_folder"]


def list_audio_files(root: Path) -> list[Path]:
    """Every audio file below ``root`` (any depth, extension case-insensitive), sorted,
    skipping hidden files and folders. Symbolic links whose target is missing are listed too,
    so that the feature pass reports them as it reports any other unusable file."""
    files = [
        path for path in Path(root).rglob("*")
        if path.suffix.lower() in AUDIO_EXTENSIONS
        and (path.is_file() or (path.is_symlink() and not path.exists()))
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(files)


def index_folder(root: Path, class_depth: int = 1) -> pd.DataFrame:
    """Files of a class-folder tree -> a table with columns ``path`` (relative, posix) and
    ``label`` (the folder ``class_depth`` levels below ``root``).

    Files that sit above the class level are ignored with a warning; class folders without
    any audio file are reported too.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder. A folder dataset is a tree ROOT/CLASS/**/*.wav "
            f"(or {', '.join(AUDIO_EXTENSIONS[1:])}), one folder per class."
        )
    rows, stray = [], []
    for path in list_audio_files(root):
        parts = path.relative_to(root).parts
        if len(parts) <= class_depth:
            stray.append(path.relative_to(root).as_posix())
            continue
        rows.append({"path": Path(*parts).as_posix(), "label": parts[class_depth - 1]})
    if stray:
        warnings.warn(
            f"{root}: {len(stray)} audio file(s) outside any class folder were ignored: "
            + ", ".join(stray[:10]) + (" ..." if len(stray) > 10 else ""),
            stacklevel=2,
        )
    table = pd.DataFrame(rows, columns=["path", "label"])
    found = set(table["label"])
    empty = sorted(
        p.name for p in _folders_at_depth(root, class_depth) if p.name not in found
    )
    if empty:
        warnings.warn(f"{root}: class folder(s) without audio files: {', '.join(empty)}",
                      stacklevel=2)
    if table.empty:
        raise FileNotFoundError(
            f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class folders "
            f"{class_depth} level(s) down. Expected ROOT/CLASS/**/*.wav."
        )
    return table


def _folders_at_depth(root: Path, depth: int) -> list[Path]:
    level = [root]
    for _ in range(depth):
        level = [child for folder in level for child in sorted(folder.iterdir())
                 if child.is_dir() and not child.name.startswith(".")]
    return level
