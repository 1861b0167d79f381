"""Datasets given as a path: a ``.npz`` file, a ``.csv`` / ``.csv.gz`` file, or an image folder.

:func:`dataset_path` finds the file or folder a ``DataConfig.dataset`` value
names (an absolute path; a relative one is looked up in the working folder,
then in ``data_dir``). :func:`load_file_dataset` reads it with the matching
reader (:mod:`~lowrank.data.npz`, :mod:`~lowrank.data.csv_table`,
:mod:`~lowrank.data.image_folder`), encodes its targets
(:mod:`~lowrank.data.labels`) and returns a
:class:`~lowrank.data.prepare.Prepared` for
:func:`~lowrank.data.prepare.build_splits`.

What each format gives:

- ``.npz``: the splits as stored (``x_train, y_train, x_test, y_test``) or one
  pool to split (``x, y``); the sample shape is ``x.shape[1:]``, a lone (H, W)
  being taken as a one-channel image (1, H, W).
- CSV: one pool to split, or the rows the split column marks; sample shape (D,).
- Image folder: ``train/`` and ``test/`` as splits, or one pool to split;
  sample shape (C, H, W); always classification, classes = folder names.

Decoded CSV tables and image folders are kept in the array cache
(:mod:`~lowrank.data.cache`), keyed by the file's absolute path, size and
modification time (for a folder: of every image in it) and by the options that
change decoding (``label_column`` and ``split_column``; ``image_mode`` and
``image_size``), so a second load skips decoding. A damaged cache entry is
ignored and decoded again. ``.npz`` files are not cached: loading them is
already a plain array read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .cache import cached_arrays
from .config import DataConfig
from .csv_table import read_csv_table
from .image_folder import ImageFolderLayout, decode_layout, scan_image_folder
from .labels import encode_targets
from .npz import read_npz
from .prepare import Prepared

__all__ = ["FILE_SUFFIXES", "check_data_dir", "dataset_path", "searched_paths", "looks_like_path", "file_kind",
           "load_file_dataset"]

FILE_SUFFIXES = (".npz", ".csv", ".csv.gz")
"""File name endings of the file datasets (an image folder is any folder)."""


def looks_like_path(dataset: str) -> bool:
    """True when ``dataset`` reads as a path (has a folder separator, ``~`` or a dataset file ending)."""
    return (os.sep in dataset or "/" in dataset or dataset.startswith(("~", "."))
            or dataset.lower().endswith(FILE_SUFFIXES))


def check_data_dir(data_dir: str | os.PathLike[str] | None) -> None:
    """A ``data_dir`` that is given must be a folder (never silently skipped for other places)."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(f"data_dir {str(data_dir)!r} is not a folder; pass an existing folder to --data-dir, "
                          f"or leave it out to search the usual places")


def _candidates(dataset: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    check_data_dir(data_dir)
    p = Path(dataset).expanduser()
    if p.is_absolute():
        return [p]
    out = [Path.cwd() / p]
    if data_dir is not None:
        out.append(Path(data_dir).expanduser().absolute() / p)
    return out


def dataset_path(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The absolute path of the existing file or folder ``dataset`` names, or None.

    A relative path is looked up in the working folder, then in ``data_dir``.
    """
    for c in _candidates(dataset, data_dir):
        if c.exists():
            return c.absolute()
    return None


def searched_paths(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every place :func:`dataset_path` looks for ``dataset``, in order."""
    return _candidates(dataset, data_dir)


def file_kind(path: Path) -> str:
    """``"npz"``, ``"csv"`` or ``"image_folder"``; ConfigError for any other file."""
    if path.is_dir():
        return "image_folder"
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ConfigError(f"{path}: not a dataset file: expected a .npz, .csv or .csv.gz file or an image "
                      f"folder (root/<class name>/<image>.png)")


def _sample_shape(x: np.ndarray) -> tuple[int, ...]:
    if x.ndim == 1:
        return (1,)
    if x.ndim == 3:
        return (1,) + tuple(x.shape[1:])
    return tuple(x.shape[1:])


def _npz(path: Path, cfg: DataConfig) -> Prepared:
    a = read_npz(path)
    t = encode_targets(a.y_train, a.y_test, task=cfg.task, where=str(path))
    return Prepared(a.x_train, t.y_train, a.x_test, t.y_test, name=cfg.dataset, num_classes=t.num_classes,
                    classes=t.classes, sample_shape=_sample_shape(a.x_train), sources=[str(path)])


def _csv(path: Path, cfg: DataConfig, use_cache: bool) -> Prepared:
    label, split = cfg.label_column, cfg.split_column

    def decode() -> tuple[np.ndarray, ...]:
        table = read_csv_table(path, label, split)
        flags = np.zeros(0, np.int8) if table.is_test is None else table.is_test.astype(np.int8)
        return table.x, table.labels, flags

    def check(a: tuple[np.ndarray, ...]) -> bool:
        x, y, f = a
        return (x.dtype == np.float32 and x.ndim == 2 and y.ndim == 1 and len(y) == len(x)
                and y.dtype.kind in "ifU" and f.dtype == np.int8 and len(f) == (0 if split is None else len(x)))

    x, labels, flags = cached_arrays([path], f"csv-table-v1\0{label}\0{split}", 3, decode,
                                     use_cache=use_cache, check=check)
    where, shape = str(path), (int(x.shape[1]),)
    if split is None:
        t = encode_targets(labels, None, task=cfg.task, where=where)
        return Prepared(x, t.y_train, None, None, name=cfg.dataset, num_classes=t.num_classes,
                        classes=t.classes, sample_shape=shape, sources=[where])
    test = flags.astype(bool)
    t = encode_targets(labels[~test], labels[test], task=cfg.task, where=where)
    return Prepared(x[~test], t.y_train, x[test], t.y_test, name=cfg.dataset, num_classes=t.num_classes,
                    classes=t.classes, sample_shape=shape, sources=[where])


def _image_folder(root: Path, cfg: DataConfig, use_cache: bool) -> Prepared:
    if cfg.task == "regression":
        raise ConfigError(f"{root}: an image folder is a classification dataset (one folder per class); "
                          f"task regression needs a .npz or CSV file")
    layout: ImageFolderLayout = scan_image_folder(root)
    mode, size = cfg.image_mode, cfg.image_size
    split = layout.test_files is not None
    count = 4 if split else 2

    def decode() -> tuple[np.ndarray, ...]:
        d = decode_layout(layout, mode, size)
        if d.x_test is None or d.y_test is None:
            return d.x_train, d.y_train
        return d.x_train, d.y_train, d.x_test, d.y_test

    def check(a: tuple[np.ndarray, ...]) -> bool:
        want = [(a[0], a[1], layout.train_labels)] + ([(a[2], a[3], layout.test_labels)] if split else [])
        for x, y, labels in want:
            if not (x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] in (1, 3)
                    and x.shape[1:] == a[0].shape[1:] and np.array_equal(y, labels)):
                return False
        c, h, w = a[0].shape[1:]
        return ((mode == "auto" or c == (1 if mode == "L" else 3))
                and (size is None or (h, w) == (size, size)))

    tag = f"image-folder-v1\0{mode}\0{size}\0{layout.fingerprint()}"
    arrays = cached_arrays([root], tag, count, decode, use_cache=use_cache, check=check)
    x_test, y_test = (arrays[2], arrays[3]) if split else (None, None)
    return Prepared(arrays[0], arrays[1].astype(np.int64), x_test, y_test, name=cfg.dataset,
                    num_classes=len(layout.classes), classes=list(layout.classes),
                    sample_shape=tuple(int(s) for s in arrays[0].shape[1:]), sources=[str(root)])


def load_file_dataset(path: str | os.PathLike[str], cfg: DataConfig, *, use_cache: bool = True) -> Prepared:
    """Read the dataset file or folder ``path`` as ``cfg`` says (see the module docstring)."""
    p = Path(path).absolute()
    kind = file_kind(p)
    if kind == "npz":
        return _npz(p, cfg)
    if kind == "csv":
        return _csv(p, cfg, use_cache)
    return _image_folder(p, cfg, use_cache)
