"""Datasets: built-in generated ones, local copies of the paper's, and your own folders.

>>> from hearproto.data import get_dataset
>>> train = get_dataset("speakers", split="train")   # generated on first use
"""

from hearproto.data.dataset import ClipDataset, pad_collate
from hearproto.data.registry import (
    DATASETS,
    PreparedDataset,
    data_home,
    get_dataset,
    prepare_dataset,
)

__all__ = ["DATASETS", "ClipDataset", "PreparedDataset", "data_home", "get_dataset",
           "pad_collate", "prepare_dataset"]
