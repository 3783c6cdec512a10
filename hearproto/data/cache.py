"""The feature cache: log-Mels computed once per (dataset, files, front end), read by every epoch.

A cache entry is a folder holding ``features.f32`` (every clip's frames, one after the other,
float32 ``(total_frames, F)``, read through a memory map), ``index.csv`` (path, label, first
frame, frame count) and ``meta.json`` (front end, files skipped and why). Entries are keyed by a
hash of the dataset name, the front-end settings and each file's path, size and modification
time, so a changed file or setting makes a new entry. Entries are written to a temporary
folder and renamed into place: an interrupted run leaves no half entry behind, and the next
run removes the temporary folder it left.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hearproto.audio import load_audio, quantisation_step
from hearproto.errors import AudioError, DatasetError
from hearproto.files import publish_folder, remove_stale_temporaries, temporary_folder
from hearproto.frontend import FrontEnd, LogMel

__all__ = ["FeatureStore", "cache_key", "load_or_compute_features", "silence_threshold",
           "extend_frames", "SILENCE_RMS", "MIN_FRAMES", "ENCODER_FRAMES"]

# 2: too-short clips and silence at the file's bit depth are skipped; 3: clips of 2-15 frames
# are kept, extended to 16
FEATURE_VERSION = 3
#: A clip whose RMS is below this (-100 dBFS) is silent and skipped (integer PCM files:
#: below their quantisation noise, :func:`silence_threshold`).
SILENCE_RMS = 1e-5
#: A clip shorter than this many frames carries no sound worth a frame of its own: skipped.
MIN_FRAMES = 2
#: The encoder halves time four times: a clip shorter than this many frames is extended to it
#: by repeating it from its start, as training tiles clips shorter than its crops.
ENCODER_FRAMES = 16


def extend_frames(frames: np.ndarray, length: int = ENCODER_FRAMES) -> np.ndarray:
    """``frames`` ``(T, F)``, repeated from their start up to ``length`` frames where ``T`` is
    shorter; unchanged otherwise."""
    if frames.shape[0] >= length:
        return frames
    return np.tile(frames, (-(-length // frames.shape[0]), 1))[:length]


@dataclass
class FeatureStore:
    """Cached log-Mels of a dataset's usable clips."""

    directory: Path
    index: pd.DataFrame  # columns: path, label, start, frames
    features: np.ndarray  # memory map, (total_frames, F)
    skipped: list[dict] = field(default_factory=list)  # {"path", "kind", "reason"}
    computed: bool = False  # True when this call did the feature work
    extended: int = 0  # clips shorter than ENCODER_FRAMES, stored extended to it

    def clip(self, row: int) -> np.ndarray:
        """Frames of clip ``row`` of the index. ``(T, F)``, a view of the memory map."""
        start, frames = self.index.at[row, "start"], self.index.at[row, "frames"]
        return self.features[start:start + frames]


def cache_key(name: str, root: Path, table: pd.DataFrame, frontend: FrontEnd) -> str:
    files = []
    for path in sorted(table["path"]):
        file = root / path
        stat = file.stat() if file.exists() else file.lstat()  # a dangling link: skipped later
        files.append((path, stat.st_size, stat.st_mtime_ns))
    payload = json.dumps(
        {"version": FEATURE_VERSION, "name": name, "frontend": frontend.to_dict(),
         "files": files, "labels": table.sort_values("path")["label"].tolist()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def load_or_compute_features(
    name: str, root: Path, table: pd.DataFrame, frontend: FrontEnd, cache_dir: Path,
    progress: bool = True,
) -> FeatureStore:
    """Log-Mels of every file of ``table`` (columns ``path``, ``label``), from the cache when an
    entry with the same key exists, else computed (with a progress bar) and cached.

    Unreadable, empty, non-finite, too short (under :data:`MIN_FRAMES` frames) or silent
    files are skipped; one warning lists them. Clips shorter than :data:`ENCODER_FRAMES` are
    stored extended to it (:func:`extend_frames`). No usable file at all is a
    :class:`~hearproto.errors.DatasetError`.
    """
    root, cache_dir = Path(root), Path(cache_dir)
    remove_stale_temporaries(cache_dir, f"{name}-")  # what a killed computation left
    directory = cache_dir / f"{name}-{cache_key(name, root, table, frontend)}"
    computed = False
    if not (directory / "meta.json").is_file():
        _compute(directory, root, table, frontend, progress)
        computed = True
    meta = json.loads((directory / "meta.json").read_text())
    skipped = meta["skipped"]
    if skipped:
        listed = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:20])
        more = f"; and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(f"{name}: skipped {len(skipped)} unusable file(s) under {root}: "
                      f"{listed}{more}", stacklevel=2)
    if meta["clips"] == 0:
        raise DatasetError(f"no usable audio in {root}: all {len(skipped)} file(s) skipped "
                           "(see the warning above for why)")
    index = pd.read_csv(directory / "index.csv", dtype={"path": str, "label": str})
    features = np.memmap(directory / "features.f32", dtype=np.float32, mode="r",
                         shape=(meta["total_frames"], meta["n_mels"]))
    return FeatureStore(directory, index, features, skipped, computed, meta.get("extended", 0))


def _compute(directory: Path, root: Path, table: pd.DataFrame, frontend: FrontEnd,
             progress: bool) -> None:
    tag = directory.name.rsplit("-", 1)[0]
    with temporary_folder(directory.parent, f"{tag}-") as tmp:
        logmel = LogMel.from_frontend(frontend)
        shortest = (MIN_FRAMES - 1) * frontend.hop_length  # samples: num_frames() is MIN_FRAMES
        rows, skipped, start, extended = [], [], 0, 0
        ordered = table.sort_values("path").reset_index(drop=True)
        with open(tmp / "features.f32", "wb") as out, torch.no_grad():
            for path, label in tqdm(zip(ordered["path"], ordered["label"]), total=len(ordered),
                                    desc=f"log-Mel features ({tag})", unit="clip",
                                    disable=not progress):
                try:
                    wave = load_audio(root / path, frontend.sample_rate)
                    floor = silence_threshold(root / path)
                except (AudioError, OSError) as err:
                    skipped.append({"path": path, "kind": "unreadable",
                                    "reason": _short_reason(err)})
                    continue
                if frontend.num_frames(len(wave)) < MIN_FRAMES:
                    skipped.append({"path": path, "kind": "too short", "reason": (
                        f"too short ({1000 * len(wave) / frontend.sample_rate:.0f} ms; a clip "
                        f"needs {MIN_FRAMES} frames, {1000 * shortest / frontend.sample_rate:.0f}"
                        " ms)")})
                    continue
                rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
                if rms < floor:
                    skipped.append({"path": path, "kind": "silent", "reason": f"silent (RMS {rms:.1e}, below "
                                    f"{floor:.1e})"})
                    continue
                frames = logmel(torch.from_numpy(wave)).numpy()
                if frames.shape[0] < ENCODER_FRAMES:
                    frames, extended = extend_frames(frames), extended + 1
                out.write(np.ascontiguousarray(frames, dtype=np.float32).tobytes())
                rows.append({"path": path, "label": label, "start": start,
                             "frames": frames.shape[0]})
                start += frames.shape[0]
        pd.DataFrame(rows, columns=["path", "label", "start", "frames"]).to_csv(
            tmp / "index.csv", index=False)
        meta = {"version": FEATURE_VERSION, "frontend": frontend.to_dict(),
                "total_frames": start, "n_mels": frontend.n_mels, "clips": len(rows),
                "extended": extended, "skipped": skipped, "root": str(root)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            publish_folder(tmp, directory)
        except OSError:  # a concurrent run finished first: keep its entry
            if not (directory / "meta.json").is_file():
                raise


def silence_threshold(path: Path) -> float:
    """The RMS below which ``path`` holds no sound: :data:`SILENCE_RMS`, or twice the
    quantisation step of an integer PCM file if that is larger (a 16-bit file's step, 3e-5,
    is above -100 dBFS: two channels that cancel leave a residue of one step)."""
    step = quantisation_step(path)
    return SILENCE_RMS if step is None else max(SILENCE_RMS, 2 * step)


def _short_reason(err: Exception) -> str:
    text = str(err)
    # AudioError messages start with the path; the warning already names the file.
    return text.split(": ", 1)[1] if ": " in text else text
