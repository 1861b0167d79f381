"""Datasets: readers of the publishers' own formats and a registry of named datasets.

``load_dataset(DataConfig(...))`` finds a dataset's files (see
:mod:`lowrank.data.registry` for the search order), decodes them once (the
decoded arrays are cached as ``.npy``) and returns float32 tensors split into
train / validation / test.
"""

from __future__ import annotations

from .cache import array_cache_dir, cache_root
from .dataset import ArrayDataset, Splits
from .hoda import HodaHeader, HodaRecords, decode_hoda, read_hoda, resize_to_square
from .idx import parse_idx, read_idx, read_idx_images, read_idx_labels
from .mnist_csv import parse_mnist_csv, read_mnist_csv
from .rawfile import read_bytes
from .registry import (DATASETS, DatasetInfo, DatasetSpec, RawData, find_dataset, list_datasets,
                       load_dataset, load_raw, register, search_places)

__all__ = [
    "load_dataset", "list_datasets", "find_dataset", "search_places", "load_raw", "register",
    "DATASETS", "DatasetSpec", "DatasetInfo", "RawData", "ArrayDataset", "Splits",
    "read_idx", "read_idx_images", "read_idx_labels", "parse_idx",
    "read_mnist_csv", "parse_mnist_csv",
    "read_hoda", "decode_hoda", "resize_to_square", "HodaHeader", "HodaRecords",
    "read_bytes", "cache_root", "array_cache_dir",
]
