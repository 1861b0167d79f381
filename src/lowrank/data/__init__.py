"""Datasets: readers of the publishers' own formats, of .npz / CSV / image-folder files, and a registry.

``load_dataset(DataConfig(...))`` loads a registered dataset by name (see
:mod:`lowrank.data.registry` for where its files are searched) or a dataset
file or folder by path (see :mod:`lowrank.data.files`), decodes it once (the
decoded arrays are cached as ``.npy``) and returns float32 tensors split into
train / validation / test. :func:`as_splits` does the same for data already
in memory (a torch ``Dataset`` or an ``(x, y)`` pair).
"""

from __future__ import annotations

from .augment import Augmentation, augment_images
from .cache import array_cache_dir, cache_root
from .config import DataConfig
from .csv_table import CsvTable, parse_csv_table, read_csv_table
from .custom import as_splits
from .dataset import ArrayDataset, Splits
from .files import dataset_path, load_file_dataset
from .hoda import HodaHeader, HodaRecords, decode_hoda, read_hoda, resize_to_square
from .idx import parse_idx, read_idx, read_idx_images, read_idx_labels
from .image_folder import (IMAGE_EXTENSIONS, ImageFolderData, ImageFolderLayout, decode_images,
                           read_image_folder, scan_image_folder)
from .labels import Targets, encode_targets
from .mnist_csv import parse_mnist_csv, read_mnist_csv
from .npz import NpzArrays, read_npz
from .prepare import Prepared, build_splits
from .rawfile import read_bytes
from .registry import (DATASETS, DatasetInfo, DatasetSpec, RawData, find_dataset, list_datasets,
                       load_dataset, load_raw, register, search_places)

__all__ = [
    "load_dataset", "as_splits", "list_datasets", "find_dataset", "search_places", "load_raw", "register",
    "DATASETS", "DatasetSpec", "DatasetInfo", "RawData", "ArrayDataset", "Splits", "DataConfig",
    "dataset_path", "load_file_dataset", "Prepared", "build_splits", "Targets", "encode_targets",
    "read_npz", "NpzArrays", "read_csv_table", "parse_csv_table", "CsvTable",
    "read_image_folder", "scan_image_folder", "decode_images", "ImageFolderData", "ImageFolderLayout",
    "IMAGE_EXTENSIONS",
    "read_idx", "read_idx_images", "read_idx_labels", "parse_idx",
    "read_mnist_csv", "parse_mnist_csv",
    "read_hoda", "decode_hoda", "resize_to_square", "HodaHeader", "HodaRecords",
    "read_bytes", "cache_root", "array_cache_dir", "Augmentation", "augment_images",
]
