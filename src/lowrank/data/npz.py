"""Reader for datasets stored as a NumPy ``.npz`` archive.

The archive holds either four arrays ``x_train, y_train, x_test, y_test`` (the
splits as given) or two arrays ``x, y`` (the test set is then split off at
random, see :mod:`lowrank.data.prepare`). Inputs ``x*`` are (N, ...) numbers,
one sample per row of the first axis; targets ``y*`` are (N,) (or (N, 1))
numbers or text. Other arrays in the archive are ignored.

The archive is opened with ``allow_pickle=False``: it can hold only plain
arrays, never Python objects, so loading it never runs code.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError

__all__ = ["NpzArrays", "read_npz"]

_SPLIT_NAMES = ("x_train", "y_train", "x_test", "y_test")
_WHOLE_NAMES = ("x", "y")


@dataclass
class NpzArrays:
    """The dataset arrays of one ``.npz`` file."""

    x_train: np.ndarray
    """Inputs (N, ...): ``x_train``, or ``x`` when the file has no split."""
    y_train: np.ndarray
    """Targets (N,): ``y_train``, or ``y``."""
    x_test: np.ndarray | None
    """``x_test``, or None when the file holds ``x, y``."""
    y_test: np.ndarray | None
    names: list[str]
    """Every array name in the archive, sorted."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _expected() -> str:
    return f"{', '.join(_SPLIT_NAMES)} or {', '.join(_WHOLE_NAMES)}"


def read_npz(path: str | os.PathLike[str]) -> NpzArrays:
    """Read and check the dataset arrays of ``path``.

    Raises :class:`~lowrank.errors.CorruptFileError` naming the file for a file
    that is not a ``.npz`` archive, missing arrays (listing the arrays found),
    pickled object arrays, inputs that are not real numbers, non-finite input
    values, targets that are not one per sample, and inputs and targets of
    different lengths.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise CorruptFileError(f"{p}: cannot read file: {e.strerror or e}") from None
    if magic.startswith(b"\x93NUMPY"):
        raise CorruptFileError(f"{p}: holds a single .npy array, not a .npz archive; expected arrays "
                               f"named {_expected()} (save them with numpy.savez)")
    if not magic.startswith(b"PK"):
        raise CorruptFileError(f"{p}: not a .npz archive (no zip signature at byte 0); save the "
                               f"arrays {_expected()} with numpy.savez")
    try:
        archive = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"{p}: damaged .npz archive: {_one_line(e)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # pragma: no cover - the magic says zip
        raise CorruptFileError(f"{p}: not a .npz archive")
    with archive:
        names = sorted(archive.files)
        if all(n in names for n in _SPLIT_NAMES):
            wanted = _SPLIT_NAMES
        elif all(n in names for n in _WHOLE_NAMES):
            wanted = _WHOLE_NAMES
        else:
            found = ", ".join(names) if names else "no arrays at all"
            raise CorruptFileError(f"{p}: expected arrays named {_expected()}; the file has {found}")
        arrays = {n: _array(archive, n, p) for n in wanted}
    if wanted == _WHOLE_NAMES:
        x, y = _pair(arrays, "x", "y", p)
        return NpzArrays(x, y, None, None, names)
    xtr, ytr = _pair(arrays, "x_train", "y_train", p)
    xte, yte = _pair(arrays, "x_test", "y_test", p)
    if xtr.shape[1:] != xte.shape[1:]:
        raise CorruptFileError(f"{p}: x_train samples have shape {xtr.shape[1:]} but x_test samples "
                               f"{xte.shape[1:]}; expected the same shape")
    if (xtr.dtype == np.uint8) != (xte.dtype == np.uint8):
        raise CorruptFileError(f"{p}: x_train is {xtr.dtype} but x_test is {xte.dtype}; expected both uint8 "
                               f"(8-bit data, scaled to [0, 1]) or both other numbers")
    return NpzArrays(xtr, ytr, xte, yte, names)


def _array(archive: np.lib.npyio.NpzFile, name: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(archive[name])
    except ValueError as e:
        if "pickle" in str(e):  # "Object arrays cannot be loaded when allow_pickle=False"
            raise CorruptFileError(f"{path}: array {name!r} holds Python objects, which are never "
                                   f"unpickled; store plain numeric or text arrays") from None
        raise CorruptFileError(f"{path}: array {name!r} is damaged: {_one_line(e)}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise CorruptFileError(f"{path}: array {name!r} is damaged: {_one_line(e)}") from None


def _pair(arrays: dict[str, np.ndarray], xn: str, yn: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = arrays[xn], arrays[yn]
    if x.ndim == 0:
        raise CorruptFileError(f"{path}: array {xn!r} is a single number; expected (N, ...) samples")
    if x.dtype.kind not in "biuf":
        raise CorruptFileError(f"{path}: array {xn!r} has dtype {x.dtype}; expected real numbers")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise CorruptFileError(f"{path}: array {yn!r} has shape {y.shape}; expected one target per "
                               f"sample, shape ({len(x)},)")
    if y.dtype.kind not in "biufUS":
        raise CorruptFileError(f"{path}: array {yn!r} has dtype {y.dtype}; expected numbers or text")
    if len(x) != len(y):
        raise CorruptFileError(f"{path}: {xn!r} has {len(x)} samples but {yn!r} has {len(y)} "
                               f"targets; expected one target per sample")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CorruptFileError(f"{path}: {xn!r} sample {i} holds a NaN or infinite value; "
                                   f"expected finite numbers (fill or drop missing values)")
    return x, y
