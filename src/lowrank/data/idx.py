"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or plain).

Layout (all integers big-endian)::

    offset 0   u8 0, u8 0, u8 type (0x08 = unsigned byte), u8 ndim
    offset 4   ndim x u32 dimension sizes
    then       prod(dims) data bytes, row-major, and nothing after them

Images are ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N,).
Byte offsets in error messages count from the start of the decompressed data.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError
from .rawfile import read_bytes

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "parse_idx", "read_idx",
           "read_idx_images", "read_idx_labels"]

IDX_IMAGES_MAGIC = 0x00000803
"""Magic number of a 3-d unsigned-byte IDX file (images)."""
IDX_LABELS_MAGIC = 0x00000801
"""Magic number of a 1-d unsigned-byte IDX file (labels)."""

_UBYTE = 0x08


def parse_idx(data: bytes, path: str | os.PathLike[str] = "<bytes>",
              ndim: int | None = None) -> np.ndarray:
    """Decode IDX ``data`` (already decompressed) into a ``uint8`` array.

    ``ndim``, when given, is the number of dimensions the caller expects
    (3 for images, 1 for labels); ``path`` only names the source in errors.
    The result is a read-only view into ``data``; :func:`read_idx` returns a copy.
    """
    if len(data) < 4:
        raise CorruptFileError(
            f"{path}: byte 0: expected a 4-byte IDX magic number, the data has only {len(data)} bytes"
        )
    zero0, zero1, dtype, nd = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    want = f"0x{0x800 | ndim:08x}" if ndim is not None else "0x000008NN (unsigned-byte IDX)"
    if zero0 != 0 or zero1 != 0 or dtype != _UBYTE or nd == 0 or (ndim is not None and nd != ndim):
        raise CorruptFileError(f"{path}: byte 0: expected IDX magic {want}, found 0x{magic:08x}")
    head = 4 + 4 * nd
    if len(data) < head:
        raise CorruptFileError(
            f"{path}: byte {len(data)}: truncated header: expected {nd} big-endian u32 "
            f"dimensions ending at byte {head}, the data ends at byte {len(data)}"
        )
    dims = struct.unpack_from(f">{nd}I", data, 4)
    count = 1
    for d in dims:
        count *= d
    end = head + count
    if len(data) < end:
        raise CorruptFileError(
            f"{path}: byte {len(data)}: data too short: dimensions {list(dims)} need "
            f"{count} bytes from byte {head} to byte {end}, the data ends at byte {len(data)}"
        )
    if len(data) > end:
        raise CorruptFileError(
            f"{path}: byte {end}: expected end of data after dimensions {list(dims)}, "
            f"found {len(data) - end} extra bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=head).reshape(dims)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip detected by magic bytes) into a writable ``uint8`` array.

    Raises :class:`~lowrank.errors.CorruptFileError` naming the file, the byte
    offset and what was expected for a wrong magic number, a truncated header,
    too few or too many data bytes, or a corrupt gzip stream.
    """
    p = Path(path)
    return parse_idx(read_bytes(p), p, ndim).copy()


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file (magic ``0x00000803``): ``uint8`` array (N, rows, cols)."""
    return read_idx(path, ndim=3)


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX label file (magic ``0x00000801``): ``uint8`` array (N,)."""
    return read_idx(path, ndim=1)
