"""Reader of the Large Movie Review Dataset (IMDB, Maas et al. 2011) in its own layout.

The published layout is ``aclImdb/{train,test}/{pos,neg}/ID_RATING.txt`` (one review per
file, UTF-8); ``train/unsup``, ``README``, ``imdb.vocab`` and the ``.feat`` files are not
read. It is read either from a folder holding that layout or straight from the
``.tar.gz`` it is published as: the archive's members are read in memory, never
extracted. An archive member with an absolute name or a ``..`` part, or a link or
device member, is refused (:class:`~lowrank.errors.CorruptFileError`) before anything
of it is used, whether or not its name looks like a review.

Reviews are returned in a fixed order (sorted by class and review id, then one fixed
seeded permutation, so that the first N of a split hold both classes), labels
``0 = neg``, ``1 = pos``. :func:`load_imdb` keeps the decoded texts of an archive in the
array cache (one ``uint8`` blob and offsets per split), so the archive is decompressed once.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import CorruptFileError
from .cache import cached_arrays

__all__ = ["Reviews", "ImdbData", "IMDB_ARCHIVES", "locate_imdb", "read_imdb_folder", "read_imdb_tar",
           "load_imdb", "check_member"]

IMDB_ARCHIVES = ("aclImdb_v1_labeled.tar.gz", "aclImdb_v1.tar.gz")
"""Archive names looked for in a dataset folder (the shared copy, the publisher's own)."""
LABELS = ("neg", "pos")
"""Folder name of each class index."""
SPLITS = ("train", "test")
_REVIEW = re.compile(r"(?:.*/)?aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt")
_MAX_REVIEW_BYTES = 1 << 20
"""A review file larger than this (the largest published one is 14 kB) is not a review."""


@dataclass
class Reviews:
    """The reviews of one split, in a fixed order."""

    texts: list[str]
    labels: np.ndarray
    """(N,) int64: 0 = negative, 1 = positive."""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class ImdbData:
    """Both labelled splits and where they were read from."""

    train: Reviews
    test: Reviews
    source: str
    """Absolute path of the archive or folder."""


def locate_imdb(folder: Path) -> dict[str, Path] | None:
    """``{"archive": path}`` or ``{"folder": path of aclImdb/}`` when ``folder`` holds the data, else None.

    The unpacked layout (``folder/aclImdb/`` or ``folder`` itself with ``train/pos`` ...)
    wins over an archive in the same folder."""
    for root in (folder / "aclImdb", folder):
        if all((root / s / c).is_dir() for s in SPLITS for c in LABELS):
            return {"folder": root}
    for name in IMDB_ARCHIVES:
        if (folder / name).is_file():
            return {"archive": folder / name}
    return None


def _sort_key(item: tuple[int, int, str]) -> tuple[int, int]:
    label, review_id, _ = item
    return label, review_id


_ORDER_SEED = 0x1DB
"""Seed of the fixed order of the reviews (the same for every run and every reader)."""


def _as_reviews(items: list[tuple[int, int, str]]) -> Reviews:
    """Sorted by (label, id), then put in one fixed random order, so that the first N reviews of a
    split (``test_size``) hold both classes."""
    items.sort(key=_sort_key)
    items = [items[i] for i in np.random.default_rng(_ORDER_SEED).permutation(len(items))]
    return Reviews([t for _, _, t in items], np.array([lab for lab, _, _ in items], dtype=np.int64))


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def read_imdb_folder(root: str | Path) -> ImdbData:
    """Read ``root/{train,test}/{pos,neg}/*.txt`` (``root`` is the ``aclImdb`` folder)."""
    root = Path(root)
    splits: dict[str, list[tuple[int, int, str]]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for label, cls in enumerate(LABELS):
            folder = root / split / cls
            if not folder.is_dir():
                raise CorruptFileError(f"IMDB folder {root} has no {split}/{cls}/ folder; expected the aclImdb "
                                       f"layout train|test/pos|neg/ID_RATING.txt")
            for path in folder.iterdir():
                m = re.fullmatch(r"(\d+)_(\d+)\.txt", path.name)
                if m is None or not path.is_file():
                    continue
                if path.stat().st_size > _MAX_REVIEW_BYTES:
                    raise CorruptFileError(f"{path} is {path.stat().st_size} bytes, too large for a review")
                splits[split].append((label, int(m.group(1)), _decode(path.read_bytes())))
    _check_counts(splits, str(root))
    return ImdbData(_as_reviews(splits["train"]), _as_reviews(splits["test"]), str(root.absolute()))


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse a member that could point outside the archive's own tree: an absolute name, a
    ``..`` part, a symbolic or hard link, a device or FIFO (:class:`CorruptFileError`)."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts:
        raise CorruptFileError(f"archive {archive} has a member named {name!r} (absolute or with '..'): "
                               f"refused; use the publisher's aclImdb archive")
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise CorruptFileError(f"archive {archive} has a {kind} member {name!r}: refused (only files and "
                               f"folders are read); use the publisher's aclImdb archive")


def read_imdb_tar(path: str | Path) -> ImdbData:
    """Read the labelled reviews from an ``aclImdb`` ``.tar.gz`` (or plain ``.tar``) in memory."""
    path = Path(path)
    where = str(path)
    splits: dict[str, list[tuple[int, int, str]]] = {s: [] for s in SPLITS}
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                check_member(member, where)
                m = _REVIEW.fullmatch(member.name)
                if m is None or not member.isfile():
                    continue
                if member.size > _MAX_REVIEW_BYTES:
                    raise CorruptFileError(f"archive {where}: member {member.name} is {member.size} bytes, "
                                           f"too large for a review")
                f = tf.extractfile(member)
                assert f is not None  # a regular file
                split, cls, review_id, _ = m.groups()
                splits[split].append((LABELS.index(cls), int(review_id), _decode(f.read())))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise CorruptFileError(f"archive {where} cannot be read as a tar.gz ({e}); download it again") from None
    _check_counts(splits, where)
    return ImdbData(_as_reviews(splits["train"]), _as_reviews(splits["test"]), str(path.absolute()))


def _check_counts(splits: dict[str, list[tuple[int, int, str]]], where: str) -> None:
    for split in SPLITS:
        labels = {lab for lab, _, _ in splits[split]}
        if labels != {0, 1}:
            raise CorruptFileError(f"{where} holds no {split} reviews of class "
                                   f"{' or '.join(LABELS[i] for i in sorted({0, 1} - labels))}; expected "
                                   f"aclImdb/{split}/pos and aclImdb/{split}/neg")


def _pack(reviews: Reviews) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(uint8 blob, int64 offsets (N+1,), int64 labels)`` of a split's texts, UTF-8."""
    encoded = [t.encode("utf-8") for t in reviews.texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets, reviews.labels


def _unpack(blob: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> Reviews:
    raw = blob.tobytes()
    return Reviews([raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)],
                   labels.astype(np.int64))


def load_imdb(files: dict[str, Path], use_cache: bool = True) -> ImdbData:
    """The reviews of a located dataset (:func:`locate_imdb`): a folder is read as is; an
    archive once, then from the array cache (keyed by its path, size and time)."""
    if "folder" in files:
        return read_imdb_folder(files["folder"])
    archive = files["archive"]

    def decode() -> tuple[np.ndarray, ...]:
        data = read_imdb_tar(archive)
        return (*_pack(data.train), *_pack(data.test))

    def check(a: tuple[np.ndarray, ...]) -> bool:
        return all(a[i].dtype == np.uint8 and a[i + 1][-1] == len(a[i]) and len(a[i + 2]) == len(a[i + 1]) - 1
                   for i in (0, 3))

    arrays = cached_arrays([archive], "imdb-v2", 6, decode, use_cache=use_cache, check=check)
    return ImdbData(_unpack(*arrays[:3]), _unpack(*arrays[3:]), str(Path(archive).absolute()))
