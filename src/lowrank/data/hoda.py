"""Reader for the Hoda Farsi-digit ``.cdb`` format, resized to MNIST-like 28x28 images.

File layout (little-endian), 1024-byte header::

    0    u16 year, u8 month, u8 day
    4    u8 width, u8 height          (both 0: every record carries its own size)
    6    u32 record count
    10   128 x u32 count of each label
    522  u8 image type                (0 = binary, run-length coded)
    523  256-byte comment (NUL padded), then 245 reserved bytes

Each record: ``0xFF``, u8 label, u8 width, u8 height, u16 byte count, then
``byte count`` bytes of pixel data. (When the header gives a fixed size the
per-record width and height bytes are absent, as in the widely used reference
reader; no such file was at hand to verify that layout. Grey-level files,
image type 1, are rejected.) Binary images
are run-length coded row by row: each row is a sequence of u8 run lengths that
alternate white (background), black (ink), white, ..., always starting with a
white run (which may be 0 long); the row ends as soon as the runs add up to the
width. The byte count is exactly the number of run bytes of the record.

Decoding is vectorized with numpy (no per-pixel Python loop); only the record
headers are walked one by one. Each image is then centred on a square canvas
(aspect kept), resized to ``size x size`` with ``torch.nn.functional.interpolate``
(area averaging when shrinking, bilinear when enlarging) and scaled to 0-255
``uint8`` with the digit white on black, like MNIST.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CorruptFileError
from .rawfile import read_bytes

__all__ = ["HODA_HEADER_SIZE", "HodaHeader", "HodaRecords", "parse_hoda_header",
           "decode_hoda", "read_hoda", "resize_to_square"]

HODA_HEADER_SIZE = 1024
"""Bytes before the first record."""

_HEADER = struct.Struct("<HBBBBI128IB256s245s")
assert _HEADER.size == HODA_HEADER_SIZE


@dataclass(frozen=True)
class HodaHeader:
    """The decoded 1024-byte ``.cdb`` header."""

    year: int
    month: int
    day: int
    width: int
    """Fixed image width, 0 when images vary in size."""
    height: int
    """Fixed image height, 0 when images vary in size."""
    count: int
    """Number of records."""
    letter_counts: tuple[int, ...]
    """128 per-label record counts."""
    image_type: int
    """0 = binary (run-length coded)."""
    comment: str


@dataclass(frozen=True)
class HodaRecords:
    """Decoded records at their original sizes; the ink is kept as horizontal runs."""

    labels: np.ndarray
    """``uint8`` (N,)."""
    widths: np.ndarray
    """``int64`` (N,)."""
    heights: np.ndarray
    """``int64`` (N,)."""
    run_image: np.ndarray
    """``int64`` (R,): image of each black (ink) run, ascending."""
    run_row: np.ndarray
    """``int64`` (R,): row of each ink run."""
    run_col: np.ndarray
    """``int64`` (R,): first column of each ink run."""
    run_len: np.ndarray
    """``int64`` (R,): length of each ink run (> 0)."""

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` at its original size, (height, width) ``uint8`` of 0 (paper) / 1 (ink)."""
        img = np.zeros((int(self.heights[i]), int(self.widths[i])), np.uint8)
        lo, hi = np.searchsorted(self.run_image, [i, i + 1])
        for r, c, k in zip(self.run_row[lo:hi], self.run_col[lo:hi], self.run_len[lo:hi]):
            img[r, c:c + k] = 1
        return img


def parse_hoda_header(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> HodaHeader:
    """Decode the 1024-byte header at the start of ``data``."""
    if len(data) < HODA_HEADER_SIZE:
        raise CorruptFileError(
            f"{path}: byte {len(data)}: truncated header: expected a {HODA_HEADER_SIZE}-byte "
            f"Hoda .cdb header, the file ends at byte {len(data)}"
        )
    f = _HEADER.unpack_from(data, 0)
    year, month, day, width, height, count = f[:6]
    letters = tuple(f[6:134])
    image_type, comment = f[134], f[135]
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise CorruptFileError(
            f"{path}: byte 2: expected a date (month 1-12, day 1-31) in the Hoda .cdb header, "
            f"found month {month}, day {day} (not a .cdb file?)"
        )
    if image_type != 0:
        raise CorruptFileError(
            f"{path}: byte 522: expected image type 0 (binary, run-length coded), found "
            f"{image_type} (grey-level .cdb files are not supported)"
        )
    if (width == 0) != (height == 0):
        raise CorruptFileError(
            f"{path}: byte 4: expected width and height both 0 (variable size) or both "
            f"non-zero, found {width}x{height}"
        )
    text = comment.split(b"\0", 1)[0].decode("latin-1")
    return HodaHeader(year, month, day, width, height, count, letters, image_type, text)


def decode_hoda(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> tuple[HodaHeader, HodaRecords]:
    """Decode all records of ``.cdb`` ``data`` to 0/1 images at their original sizes.

    Raises :class:`~lowrank.errors.CorruptFileError` with the file and byte
    offset for a bad header, a record not starting with 0xFF, a record running
    past the end of the file, run lengths that do not tile the image exactly,
    or bytes after the last record.
    """
    head = parse_hoda_header(data, path)
    n = head.count
    fixed = head.width > 0
    rec_head = 4 if fixed else 6
    if n * rec_head > len(data) - HODA_HEADER_SIZE:
        raise CorruptFileError(
            f"{path}: byte 6: header claims {n} records, but the {len(data) - HODA_HEADER_SIZE} "
            f"bytes after the header cannot hold that many ({rec_head} bytes each at least)"
        )
    labels = np.empty(n, np.int64)
    widths = np.empty(n, np.int64)
    heights = np.empty(n, np.int64)
    starts = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    end = len(data)
    off = HODA_HEADER_SIZE
    unpack6 = struct.Struct("<BBBBH").unpack_from
    unpack4 = struct.Struct("<BBH").unpack_from
    for i in range(n):
        if off + rec_head > end:
            raise CorruptFileError(
                f"{path}: byte {off}: record {i}: expected a {rec_head}-byte record header, "
                f"the file ends at byte {end} (truncated file?)"
            )
        if fixed:
            mark, lab, nb = unpack4(data, off)
            w, h = head.width, head.height
        else:
            mark, lab, w, h, nb = unpack6(data, off)
        if mark != 0xFF:
            raise CorruptFileError(
                f"{path}: byte {off}: record {i}: expected record start byte 0xff, found 0x{mark:02x}"
            )
        if w == 0 or h == 0:
            raise CorruptFileError(
                f"{path}: byte {off + 2}: record {i}: expected a non-empty image, found size {w}x{h}"
            )
        if off + rec_head + nb > end:
            raise CorruptFileError(
                f"{path}: byte {off + rec_head}: record {i}: expected {nb} bytes of pixel data, "
                f"the file ends at byte {end} (truncated file?)"
            )
        labels[i], widths[i], heights[i], starts[i], counts[i] = lab, w, h, off + rec_head, nb
        off += rec_head + nb
    if off != end:
        raise CorruptFileError(
            f"{path}: byte {off}: expected end of file after {n} records, found {end - off} extra bytes"
        )
    runs = _decode_runs(data, path, widths, heights, starts, counts)
    return head, HodaRecords(labels.astype(np.uint8), widths, heights, *runs)


def _decode_runs(data: bytes, path: str | os.PathLike[str], widths: np.ndarray, heights: np.ndarray,
                 starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Decode every record's run lengths at once; return the ink runs (image, row, col, len)."""
    n = len(widths)
    total = int(counts.sum())
    cum = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=cum[1:])
    rec = np.repeat(np.arange(n, dtype=np.int64), counts)          # record of each run byte
    src = np.arange(total, dtype=np.int64) + np.repeat(starts - cum[:-1], counts)  # file offset
    runs = np.frombuffer(data, np.uint8)[src].astype(np.int64)
    acc = np.zeros(total + 1, np.int64)
    np.cumsum(runs, out=acc[1:])                                    # runs summed over all records
    stop = acc[1:] - acc[cum[:-1]][rec]                             # run end within its image
    begin = stop - runs                                             # run start within its image
    size = widths * heights
    rec_total = acc[cum[1:]] - acc[cum[:-1]]
    wrong = np.flatnonzero(rec_total != size)
    if wrong.size:
        i = int(wrong[0])
        raise CorruptFileError(
            f"{path}: byte {int(starts[i])}: record {i}: expected run lengths adding up to "
            f"{int(widths[i])}x{int(heights[i])} = {int(size[i])} pixels, they add up to {int(rec_total[i])}"
        )
    w = widths[rec]
    row = begin // w
    last_row = np.where(runs > 0, (stop - 1) // w, row)
    bad = np.flatnonzero((row != last_row) | (row >= heights[rec]))
    if bad.size:
        j = int(bad[0])
        i = int(rec[j])
        what = ("is a run after the last row" if row[j] >= heights[i] else
                f"crosses the end of row {int(row[j])} (width {int(widths[i])})")
        raise CorruptFileError(
            f"{path}: byte {int(src[j])}: record {i}: run of {int(runs[j])} pixels {what}; "
            f"expected each row's runs to add up to exactly the width"
        )
    # runs alternate white/black within a row, starting with white
    idx = np.arange(total, dtype=np.int64)
    new_row = np.ones(total, bool)
    new_row[1:] = (rec[1:] != rec[:-1]) | (row[1:] != row[:-1])
    first = np.maximum.accumulate(np.where(new_row, idx, 0))
    ink = (((idx - first) & 1) == 1) & (runs > 0)
    return rec[ink], row[ink], (begin - row * w)[ink], runs[ink]


def resize_to_square(records: HodaRecords, size: int = 28, margin: int = 0) -> np.ndarray:
    """Centre every image on a square canvas, resize it and return ``uint8`` (N, size, size).

    The digit is drawn 255 on 0 (white on black). With ``margin > 0`` the digit is
    resized to ``size - 2 * margin`` and framed by ``margin`` black pixels (MNIST
    itself uses a 20x20 box in a 28x28 image, i.e. ``margin=4``). Images are
    grouped by canvas side so each group is painted from its ink runs and
    resized by one ``interpolate`` call.
    """
    inner = size - 2 * margin
    if inner <= 0 or margin < 0:
        raise ValueError(f"margin {margin} does not fit a {size}x{size} image")
    n = len(records.labels)
    out = np.zeros((n, size, size), np.uint8)
    w, h = records.widths, records.heights
    side = np.maximum(w, h)
    top, left = (side - h) // 2, (side - w) // 2
    run_side = side[records.run_image]
    order = np.argsort(run_side, kind="stable")
    sorted_side = run_side[order]
    slot = np.empty(n, np.int64)
    for s in np.unique(side):
        s = int(s)
        members = np.flatnonzero(side == s)
        slot[members] = np.arange(len(members))
        lo, hi = np.searchsorted(sorted_side, [s, s + 1])
        sel = order[lo:hi]
        img = records.run_image[sel]
        begin = slot[img] * (s * s) + (records.run_row[sel] + top[img]) * s + records.run_col[sel] + left[img]
        marks = np.zeros(len(members) * s * s + 1, np.int8)
        marks[begin] += 1
        marks[begin + records.run_len[sel]] -= 1
        canvas = np.cumsum(marks[:-1], dtype=np.int8).astype(np.float32)
        t = torch.from_numpy(canvas).view(len(members), 1, s, s)
        if s > inner:
            t = F.interpolate(t, size=(inner, inner), mode="area")
        elif s < inner:
            t = F.interpolate(t, size=(inner, inner), mode="bilinear", align_corners=False)
        pix = (t.squeeze(1) * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
        out[members, margin:margin + inner, margin:margin + inner] = pix
    return out


def read_hoda(path: str | os.PathLike[str], size: int = 28, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Read a Hoda ``.cdb`` file: ``uint8`` images (N, size, size) and ``uint8`` labels (N,).

    See :func:`decode_hoda` for the errors and :func:`resize_to_square` for the resizing.
    """
    p = Path(path)
    _, records = decode_hoda(read_bytes(p), p)
    return resize_to_square(records, size, margin), records.labels
