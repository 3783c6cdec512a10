"""One entry point for every dataset: generate or index, validate, split, cache, serve."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from hearproto.errors import DatasetError
from hearproto.files import (data_home, publish_folder, remove_stale_temporaries,
                             temporary_folder)
from hearproto.audio import file_sample_rate
from hearproto.frontend import SPEAKERS_MAX_RATE, FrontEnd, preset_for_rate, resolve_frontend
from hearproto.data.cache import FeatureStore, load_or_compute_features
from hearproto.data.dataset import ClipDataset
from hearproto.data.splits import (RANDOM, SPLITS, heldout_source, load_or_make_splits,
                                   split_hash)

__all__ = ["DATASETS", "DatasetSpec", "PreparedDataset", "data_home", "get_dataset",
           "prepare_dataset"]

GENERATOR_MARKER = "dataset.json"
GENERATED_TABLE = "clips.csv"
#: Columns of a generated table that say where each clip comes from (kept in the dataset's
#: table: the held-out splits and per-source scores read them).
SOURCE_COLUMNS = ("bank", "lineage")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    preset: str  # default front end
    crop_frames: int  # training crop T (docs/design.md, "Front end")
    builtin: bool


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec("instruments", "single notes of General MIDI instruments (built in)",
                    "instruments", 256, True),
        # 96 frames, 3 s: the built-in utterances last 1-3 s (LibriSpeech's 192 would tile
        # each 2-6 times, at twice the cost of a step)
        DatasetSpec("speakers", "synthetic speech of espeak-ng voices (built in)",
                    "speakers", 96, True),
        DatasetSpec("sol", "SOL 0.9 HQ / OrchideaSOL notes (local copy)", "instruments", 256,
                    False),
        DatasetSpec("librispeech", "LibriSpeech speakers (local copy)", "speakers", 192, False),
        DatasetSpec("folder", "your own CLASS/**/*.wav tree", "instruments", 256, False),
    )
}


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------------------------
# Built-in datasets: generated once into a folder of their own


def _renderer(name: str) -> Callable[..., list[dict]]:
    return importlib.import_module(f"hearproto.data.{name}").render


def _sources(name: str) -> dict:
    """What rendered built-in dataset ``name`` (its banks), where its generator says."""
    module = importlib.import_module(f"hearproto.data.{name}")
    return module.identity() if hasattr(module, "identity") else {}


def default_builtin_root(name: str, limit_per_class: int | None, seed: int) -> Path:
    suffix = ("" if limit_per_class is None else f"-limit{limit_per_class}") + (
        "" if seed == 0 else f"-seed{seed}")
    return data_home() / f"{name}{suffix}"


def generator_digest(name: str) -> str:
    """Hash of the code that makes built-in dataset ``name``: when it changes, the data is
    regenerated."""
    from hearproto.data import conditions

    module = importlib.import_module(f"hearproto.data.{name}")
    digest = hashlib.sha256()
    for source in (module.__file__, conditions.__file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def ensure_generated(name: str, root: Path, limit_per_class: int | None, seed: int,
                     progress: bool = True) -> pd.DataFrame:
    """Generate built-in dataset ``name`` into ``root`` unless it is already there: render,
    then give every clip recording conditions of its own (:mod:`hearproto.data.conditions`).
    Data made by an older generator is regenerated. Several processes may ask at once (tests in
    parallel, experiments started together): each generates, the first to finish publishes, the
    others use its data. Returns the clip table (``path``, ``label``, the generator's
    attributes, the conditions)."""
    from hearproto.data.conditions import condition_clips

    remove_stale_temporaries(root.parent, f"{root.name}-")  # what a killed generation left
    wanted = {"name": name, "seed": seed, "limit_per_class": limit_per_class}
    generator = generator_digest(name)
    marker = root / GENERATOR_MARKER
    stale = False
    if marker.is_file():
        found = json.loads(marker.read_text())
        different = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        if different:
            details = ", ".join(f"{k} is {old!r} there, {new!r} asked" for k, (old, new)
                                in different.items())
            raise DatasetError(f"{root} holds another generated dataset ({details}); pass "
                               f"another root, or delete that folder to regenerate it")
        if found.get("generator") == generator:
            return pd.read_csv(root / GENERATED_TABLE, dtype={"path": str, "label": str})
        warnings.warn(f"{root} was made by another version of the {name} generator; "
                      "regenerating it", stacklevel=2)
        stale = True
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and was not made by hearproto; refusing to write "
                              f"into it. Pass an empty or new folder as root.")
    # a generation killed midway left its temporary folder: temporary_folder removes it
    with temporary_folder(root.parent, f"{root.name}-") as tmp:
        rows = _renderer(name)(tmp, limit_per_class=limit_per_class, seed=seed, progress=progress)
        rows = condition_clips(tmp, rows, seed, progress)
        table = pd.DataFrame(rows)
        table.to_csv(tmp / GENERATED_TABLE, index=False)
        sources = _sources(name)
        (tmp / GENERATOR_MARKER).write_text(json.dumps(
            {**wanted, "generator": generator, "clips": len(table), **sources}, indent=1))
        if stale:  # swap, then drop the old data: never a moment without a complete dataset
            old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-old-"))
            os.replace(root, old / root.name)
            publish_folder(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                if root.exists():
                    root.rmdir()  # empty, checked above
                publish_folder(tmp, root)
            except OSError:  # another process generated it meanwhile: keep what it published
                if not _generated_here(root, wanted, generator):
                    raise
                return pd.read_csv(root / GENERATED_TABLE, dtype={"path": str, "label": str})
    return table.astype({"path": str, "label": str})


def _generated_here(root: Path, wanted: dict, generator: str) -> bool:
    """Whether ``root`` holds the complete dataset ``wanted`` made by ``generator``."""
    try:
        found = json.loads((root / GENERATOR_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return found.get("generator") == generator and all(
        found.get(k) == v for k, v in wanted.items())


# --------------------------------------------------------------------------------------------
# Any dataset


@dataclass
class PreparedDataset:
    """A dataset ready to serve: usable clips with their split, classes and cached features."""

    name: str
    root: Path
    frontend: FrontEnd
    table: pd.DataFrame  # path, label, start, frames, split (usable clips only)
    classes: list[str]
    store: FeatureStore
    splits_csv: Path
    crop_frames: int
    split_name: str = RANDOM  # how the clips were split: random, or heldout-SOURCE
    sources: dict = field(default_factory=dict)  # what rendered a built-in dataset
    frontend_choice: str | None = None  # why this front end, where it was chosen from the files

    def split(self, split: str | None = "train", crop_frames: int | None | str = "auto") -> ClipDataset:
        """The clips of ``split`` (``train``, ``val``, ``test`` or None for all).
        ``crop_frames="auto"``: the dataset's training crop for ``train``, whole clips else."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if crop_frames == "auto":
            crop_frames = self.crop_frames if split == "train" else None
        rows = self.table if split is None else self.table[self.table["split"] == split]
        return ClipDataset(self.store, rows, self.classes, self.frontend, self.name, split,
                           crop_frames)

    def info(self) -> dict:
        counts = self.table["split"].value_counts()
        return {
            "name": self.name,
            "classes": len(self.classes),
            "clips": len(self.table),
            "splits": {s: int(counts.get(s, 0)) for s in SPLITS},
            "sample_rate": self.frontend.sample_rate,
            "hop_length": self.frontend.hop_length,
            "class_names": self.classes,
            "root": str(self.root),
            "skipped": len(self.store.skipped),
            "skipped_by_kind": dict(Counter(s["kind"] for s in self.store.skipped)),
            "extended": self.store.extended,
            "split": self.split_name,
            "split_csv": str(self.splits_csv),
            "split_hash": split_hash(self.table),
            "feature_cache": str(self.store.directory),
            "frames": int(self.table["frames"].sum()),
            **({"frontend_choice": self.frontend_choice} if self.frontend_choice else {}),
            **self.sources,
        }


def prepare_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    limit_per_class: int | None = None,
    seed: int = 0,
    split_seed: int = 0,
    n_speakers: int | None = 128,
    frontend: FrontEnd | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: str | None = None,
    splits_csv: str | os.PathLike | None = None,
    progress: bool = True,
    split: str = RANDOM,
) -> PreparedDataset:
    """Generate (built-ins) or index (local copies) dataset ``name``, compute or reuse its
    features, and split it 70/10/20.

    ``limit_per_class`` caps the clips per class (built-ins: generated that size; others: the
    first files of each class by split order); ``n_speakers`` is LibriSpeech's top-k by
    duration (None: all); ``frontend`` overrides the dataset's front-end preset (a
    :class:`FrontEnd` or a preset name; None: a built-in's own, a local copy's from its files'
    sample rate, said in one line on stderr with ``progress``); ``download`` fetches a LibriSpeech subset first;
    ``splits_csv`` reads (or writes) the split from (to) that file, to repeat a split exactly
    elsewhere; ``split`` is ``random`` (70/10/20 per class) or ``heldout-SOURCE`` (test on
    every clip of one source, :func:`~hearproto.data.splits.assign_heldout_splits`). Built-in
    data keeps its split CSV beside the data; nothing is written into a local copy: its split
    goes to ``data_home()/splits``.
    """
    heldout_source(split)  # an unknown split fails before any work
    spec = _spec(name)
    given = frontend
    frontend = resolve_frontend(frontend or spec.preset)  # an unknown preset fails here
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be positive, got {limit_per_class}")
    cache_dir = Path(cache_dir) if cache_dir is not None else data_home() / "features"

    if spec.builtin:
        root = Path(root) if root is not None else default_builtin_root(name, limit_per_class, seed)
        table = ensure_generated(name, root, limit_per_class, seed, progress)
        tag = name
    else:
        if root is None:
            raise DatasetError(f"dataset {name!r} needs root: the folder of your local copy")
        root = Path(root).expanduser()
        if name == "librispeech":
            from hearproto.data.librispeech import download as fetch, index_librispeech
            if download:
                fetch(download, root)
            table = index_librispeech(root, n_speakers, progress)
            tag = f"{name}-top{n_speakers}" if n_speakers else f"{name}-all"
        elif name == "sol":
            from hearproto.data.sol import index_sol
            table = index_sol(root)
            tag = name
        else:
            from hearproto.data.folder import index_folder
            table = index_folder(root)
            tag = name
        if limit_per_class is not None:
            table = _limit_per_class(table, limit_per_class, seed)
            tag += f"-limit{limit_per_class}"

    choice = None
    if not spec.builtin:
        frontend, choice = _frontend_for_files(name, root, table, frontend, given is None)
        if choice and progress:
            print(choice, file=sys.stderr, flush=True)
    store = load_or_compute_features(tag, root, table, frontend, cache_dir, progress)
    usable = store.index
    described = [c for c in SOURCE_COLUMNS if c in table]
    if described:  # which bank, lineage... each clip comes from
        usable = usable.merge(table[["path", *described]], on="path", how="left")
    dropped = sorted(set(table["label"]) - set(usable["label"]))
    if dropped:
        warnings.warn(f"{name}: class(es) with no usable clip left after skipping bad files, "
                      f"dropped: {', '.join(dropped)}", stacklevel=2)
    # Built-in data is ours: its split lives beside it. A local copy is the user's: we write
    # nothing into it, the split goes to the data home (or where ``splits_csv`` says).
    own_folder = data_home() / "splits" / f"{tag}-{_path_hash(root)}"
    if splits_csv is None:
        suffix = "" if split == RANDOM else f"-{split}"
        splits_csv = (root if spec.builtin else own_folder) / f"hearproto-splits-{tag}{suffix}.csv"
    usable, splits_csv = load_or_make_splits(usable, Path(splits_csv), seed=split_seed,
                                             fallback_dir=own_folder, split=split)
    classes = sorted(usable["label"].unique(), key=_natural_key)
    sources = {}
    if spec.builtin and (root / GENERATOR_MARKER).is_file():
        marker = json.loads((root / GENERATOR_MARKER).read_text())
        sources = {k: marker[k] for k in ("banks",) if k in marker}
    return PreparedDataset(name, root, frontend, usable, classes, store, splits_csv,
                           spec.crop_frames, split, sources, choice)


def _frontend_for_files(name: str, root: Path, table: pd.DataFrame, frontend: FrontEnd,
                        choose: bool, count: int = 64) -> tuple[FrontEnd, str | None]:
    """The front end for a local dataset's files, read from up to ``count`` file headers
    spread over ``table``: with ``choose``, the preset for their median sample rate
    (:func:`~hearproto.frontend.preset_for_rate`) and the line that says why; else
    ``frontend`` as given. Warns when it resamples the files up by more than 2x."""
    paths = sorted(table["path"])
    picked = sorted({paths[round(i)] for i in np.linspace(0, len(paths) - 1,
                                                            min(count, len(paths)))})
    rates = [r for r in (file_sample_rate(root / p) for p in picked) if r]
    if not rates:
        return frontend, None  # no readable header: the features step names the bad files
    rate = int(np.median(rates))
    read = f"{rate} Hz, the median of {len(rates)} file(s)" if len(rates) > 1 else f"{rate} Hz"
    choice = None
    if choose:
        preset = preset_for_rate(rate)
        frontend = resolve_frontend(preset)
        side = "at or below" if rate <= SPEAKERS_MAX_RATE else "above"
        choice = (f"{name}: the {preset} front end ({frontend.sample_rate} Hz), chosen from the "
                  f"files' sample rate ({read}; {side} {SPEAKERS_MAX_RATE} Hz); --preset "
                  "chooses another")
    if frontend.sample_rate > 2 * rate:
        warnings.warn(
            f"{name}: the files under {root} are at {read}; the front end resamples them to "
            f"{frontend.sample_rate} Hz ({frontend.sample_rate / rate:.1f}x), so its mel bins "
            f"above {rate // 2} Hz hold no sound. --preset speakers (16 kHz) suits files at "
            f"{SPEAKERS_MAX_RATE} Hz or less", stacklevel=3)
    return frontend, choice


def get_dataset(name: str, root: str | os.PathLike | None = None, split: str | None = "train",
                crop_frames: int | None | str = "auto", **kwargs) -> ClipDataset:
    """The torch ``Dataset`` of one split of dataset ``name``; see :func:`prepare_dataset` for
    the keyword arguments."""
    return prepare_dataset(name, root, **kwargs).split(split, crop_frames)


def _limit_per_class(table: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    keyed = table.assign(_key=[hashlib.sha1(f"{seed}:{p}".encode()).hexdigest()
                               for p in table["path"]])
    kept = keyed.sort_values("_key").groupby("label", sort=False).head(limit)
    return kept.drop(columns="_key").sort_values("path").reset_index(drop=True)


def _path_hash(path: Path) -> str:
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]


def _natural_key(label: str):
    return (0, int(label), "") if label.isdigit() else (1, 0, label)

