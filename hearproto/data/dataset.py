"""A torch ``Dataset`` of cached log-Mel clips with labels: random crops for training, whole
clips for evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from hearproto.frontend import FrontEnd
from hearproto.data.cache import FeatureStore

__all__ = ["ClipDataset", "clip_statistics", "crop_batches", "crop_or_tile", "pad_collate",
           "subset", "tile_frames", "whole_clip_batches"]


def crop_or_tile(frames: np.ndarray, length: int, start: int) -> np.ndarray:
    """``length`` frames of ``frames`` ``(T, F)`` from ``start``; a clip shorter than
    ``length`` is tiled (repeated) first. ``start`` must lie in ``[0, max(T - length, 0)]``."""
    if frames.shape[0] < length:
        repeats = -(-length // frames.shape[0])
        return np.tile(frames, (repeats, 1))[:length]
    return frames[start:start + length]


def tile_frames(x: torch.Tensor, length: int) -> torch.Tensor:
    """A batch ``(B, T, F)`` shorter than ``length`` frames, repeated in time and cut to
    ``(B, length, F)`` (as :func:`crop_or_tile` does to training clips); longer batches are
    returned as they are."""
    if x.shape[1] >= length:
        return x
    return x.repeat(1, -(-length // x.shape[1]), 1)[:, :length]


class ClipDataset(Dataset):
    """Items are ``(logmel, label)``: ``logmel`` float32 ``(T, F)``, ``label`` an int.

    With ``crop_frames`` set, each item is a random crop of that many frames (short clips are
    tiled), drawn from torch's generator, so seeding torch makes it repeatable; with ``None``
    items are whole clips of varying length (see :func:`pad_collate`).
    """

    def __init__(
        self, store: FeatureStore, table: pd.DataFrame, classes: list[str], frontend: FrontEnd,
        name: str, split: str | None, crop_frames: int | None = None,
    ) -> None:
        self.store = store
        self.table = table.reset_index(drop=True)  # rows of store.index with a split column
        self.classes = list(classes)
        self.frontend = frontend
        self.name = name
        self.split = split
        self.crop_frames = crop_frames
        lookup = {label: i for i, label in enumerate(self.classes)}
        self.labels = torch.tensor([lookup[label] for label in self.table["label"]],
                                   dtype=torch.long)
        # the table's columns as arrays: a pandas lookup per item cost 16 us of the 50
        self._starts = self.table["start"].to_numpy(np.int64)
        self._lengths = self.table["frames"].to_numpy(np.int64)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def frames(self, i: int) -> np.ndarray:
        """The whole clip ``i``. ``(T, F)``."""
        start = self._starts[i]
        return self.store.features[start:start + self._lengths[i]]

    def _crop(self, i: int) -> np.ndarray:
        """A random crop of clip ``i`` (one draw from torch's generator). ``(crop_frames, F)``"""
        frames = self.frames(i)
        slack = max(frames.shape[0] - self.crop_frames, 0)
        start = int(torch.randint(slack + 1, ()).item())
        return crop_or_tile(frames, self.crop_frames, start)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        frames = self.frames(i) if self.crop_frames is None else self._crop(i)
        return torch.from_numpy(np.array(frames, dtype=np.float32)), int(self.labels[i])

    def batch(self, indices: Sequence[int], pin_memory: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops of the clips ``indices`` ``(B, crop_frames, F)`` and their labels
        ``(B,)``: the numbers of stacking ``self[i]`` for each index in turn (the same draws),
        written straight into one tensor (in pinned memory with ``pin_memory``, for a copy
        to a GPU that does not wait)."""
        if self.crop_frames is None:
            raise ValueError("batch() needs crops (crop_frames): whole clips differ in length "
                             "(see pad_collate)")
        out = torch.empty(len(indices), self.crop_frames, self.store.features.shape[1],
                          pin_memory=pin_memory)
        rows = out.numpy()
        for row, i in enumerate(indices):
            rows[row] = self._crop(i)
        return out, self.labels[list(indices)]

    def class_counts(self) -> pd.Series:
        return self.table["label"].value_counts().reindex(self.classes, fill_value=0)

    def __repr__(self) -> str:
        crop = f"crops of {self.crop_frames} frames" if self.crop_frames else "whole clips"
        return (f"ClipDataset({self.name!r}, split={self.split!r}, {len(self)} clips, "
                f"{self.num_classes} classes, {crop}, {self.frontend.sample_rate} Hz)")


class _Batches(Dataset):
    """``dataset.batch(indices)`` as items, for a ``DataLoader`` whose sampler yields
    batches of indices."""

    def __init__(self, dataset: Dataset, pin_memory: bool) -> None:
        self.dataset, self.pin_memory = dataset, pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.batch(indices, self.pin_memory)


def crop_batches(dataset: Dataset, batch_size: int, generator: torch.Generator,
                 drop_last: bool, pin_memory: bool = False) -> DataLoader:
    """Shuffled batches of random crops of ``dataset`` (anything with :meth:`ClipDataset.batch`):
    the very batches of ``DataLoader(dataset, batch_size, shuffle=True, generator=generator,
    drop_last=drop_last)``, in the same order with the same crops, each built as one tensor
    instead of ``batch_size`` tensors stacked (with ``pin_memory``, built in pinned memory).
    At B = 128 on 2 CPU cores, 5.1 ms a batch instead of 8.4 (docs/kernels.md, "CUDA
    graphs"): the host must keep up with a GPU step of a few milliseconds."""
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last)
    # the loader draws its base seed from ``generator`` too, as a shuffling DataLoader does
    return DataLoader(_Batches(dataset, pin_memory), sampler=sampler, batch_size=None,
                      generator=generator)


def pad_collate(
    batch: list[tuple[torch.Tensor, int]], multiple: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack whole clips of different lengths: zero-pad in time to the longest, rounded up to
    a multiple of ``multiple`` (the encoder halves time four times). Returns
    ``(logmels (B, T, F), labels (B,), lengths (B,))``."""
    lengths = torch.tensor([x.shape[0] for x, _ in batch])
    longest = int(lengths.max())
    padded_length = -(-longest // multiple) * multiple
    out = torch.zeros(len(batch), padded_length, batch[0][0].shape[-1])
    for i, (x, _) in enumerate(batch):
        out[i, : x.shape[0]] = x
    return out, torch.tensor([y for _, y in batch]), lengths


def subset(dataset: ClipDataset, count: int | None, seed: int) -> ClipDataset:
    """At most ``count`` clips of ``dataset`` (None: all), a draw of ``seed`` kept in the
    dataset's order; the same ``seed`` and dataset give the same clips."""
    if count is None or count >= len(dataset):
        return dataset
    chosen = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:count])
    return ClipDataset(dataset.store, dataset.table.iloc[chosen], dataset.classes,
                       dataset.frontend, dataset.name, dataset.split, dataset.crop_frames)


def clip_statistics(dataset: ClipDataset) -> tuple[np.ndarray, np.ndarray]:
    """Each whole clip's log-Mel mean and standard deviation over time, in float64: two
    ``(N, F)`` arrays."""
    clips = [np.asarray(dataset.frames(i), dtype=np.float64) for i in range(len(dataset))]
    return np.stack([c.mean(0) for c in clips]), np.stack([c.std(0) for c in clips])


def whole_clip_batches(dataset: ClipDataset, batch_size: int
                       ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Whole clips of ``dataset`` in batches of equal length (no padding): yields the clip
    indices ``(b,)`` and the stacked log-Mels ``(b, T, F)``, shortest clips first."""
    lengths = dataset.table["frames"].to_numpy()
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        stop = start + 1
        while (stop < len(order) and stop - start < batch_size
               and lengths[order[stop]] == lengths[order[start]]):
            stop += 1
        indices = order[start:stop]
        yield indices, torch.stack([torch.from_numpy(np.array(dataset.frames(i), dtype=np.float32))
                                    for i in indices])
        start = stop
