"""Reader for datasets stored as a table in a CSV file (``.csv``, or gzip-compressed ``.csv.gz``).

Format: comma-separated UTF-8 text (standard CSV quoting; a leading byte-order
mark is ignored; gzip is detected by its magic bytes). The first non-blank row
is a header naming every column; each later non-blank row is one sample with
exactly as many fields as the header. One column, named by ``label_column``,
holds the targets; an optional column named by ``split_column`` holds ``train``
or ``test`` (any case) for each row; every other column is a numeric feature
(integers or decimals such as ``3``, ``-0.5``, ``1e-3``; empty cells, text and
NaN or infinite values are errors). Feature values are kept as float32 in
column order.

The targets are returned as integers when every label is written as an
integer, as float64 when every label is a number, and as text otherwise;
:mod:`lowrank.data.labels` turns them into classes or regression targets.
Errors name the file, the 1-based line number and the column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import NoReturn

import numpy as np

from ..errors import ConfigError, CorruptFileError
from .rawfile import read_bytes

__all__ = ["CsvTable", "read_csv_table", "parse_csv_table"]

_SHOWN_COLUMNS = 12
"""How many column names an error message lists before '...'."""


@dataclass
class CsvTable:
    """The decoded content of a dataset CSV file."""

    x: np.ndarray
    """float32 (N, D) feature values, columns in file order."""
    labels: np.ndarray
    """(N,) targets: int64 (all written as integers), float64 (all numbers) or text."""
    is_test: np.ndarray | None
    """bool (N,): True for the rows whose split column says ``test``; None without a split column."""
    feature_names: list[str]
    """Header names of the D feature columns."""


def read_csv_table(path: str | os.PathLike[str], label_column: str = "label",
                   split_column: str | None = None) -> CsvTable:
    """Read a dataset CSV file (see the module docstring for the format).

    Raises :class:`~lowrank.errors.ConfigError` when the header lacks
    ``label_column`` or ``split_column`` (the message lists the columns), and
    :class:`~lowrank.errors.CorruptFileError` for an empty file, a missing or
    numeric-only header, a row with the wrong number of fields, a feature cell
    that is not a finite number, an empty label, or a split value other than
    train/test, naming the file, line and column.
    """
    p = Path(path)
    return parse_csv_table(read_bytes(p), p, label_column, split_column)


def _columns(header: list[str]) -> str:
    shown = ", ".join(repr(h) for h in header[:_SHOWN_COLUMNS])
    if len(header) > _SHOWN_COLUMNS:
        shown += f", ... ({len(header)} columns in all)"
    return shown


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _find_column(header: list[str], name: str, option: str, path: Path, header_line: int) -> int:
    hits = [i for i, h in enumerate(header) if h == name]
    if not hits:
        raise ConfigError(f"{path}: line {header_line}: the header has no column named {name!r} ({option}); "
                          f"its columns are {_columns(header)}; set {option} to one of them")
    if len(hits) > 1:
        raise CorruptFileError(f"{path}: line {header_line}: the header names column {name!r} "
                               f"{len(hits)} times (columns {', '.join(str(i + 1) for i in hits)}); "
                               f"expected it once")
    return hits[0]


def parse_csv_table(data: bytes | str, path: str | os.PathLike[str] = "<bytes>", label_column: str = "label",
                    split_column: str | None = None) -> CsvTable:
    """Decode dataset CSV ``data`` (already decompressed); ``path`` names it in errors."""
    p = Path(path)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise CorruptFileError(f"{p}: byte {e.start}: expected UTF-8 text (a CSV file), "
                                   f"found byte 0x{data[e.start]:02x}") from None
    else:
        text = data
    header, header_line, rows, lines = _split_rows(text, p)
    label_i = _find_column(header, label_column, "label_column", p, header_line)
    split_i = None if split_column is None else _find_column(header, split_column, "split_column", p,
                                                             header_line)
    feat_i = [i for i in range(len(header)) if i not in (label_i, split_i)]
    if not feat_i:
        raise CorruptFileError(f"{p}: line {header_line}: no feature columns besides {label_column!r}; "
                               f"expected at least one numeric column")
    if not rows:
        raise CorruptFileError(f"{p}: line {header_line + 1}: the file has a header but no data rows; "
                               f"expected one row per sample")
    x = _features(rows, feat_i, lines, header, p, label_column)
    labels = _labels(np.array([r[label_i] for r in rows], dtype=str), lines, header[label_i], label_i, p)
    is_test = None
    if split_i is not None:
        is_test = _split_flags(np.array([r[split_i] for r in rows], dtype=str), lines, header[split_i],
                               split_i, p)
    return CsvTable(x, labels, is_test, [header[i] for i in feat_i])


def _split_rows(text: str, p: Path) -> tuple[list[str], int, list[list[str]], list[int]]:
    """Header (names stripped), its line, the data rows and the line each row ends on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 1
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header is None:
                header, header_line = [c.strip() for c in row], reader.line_num
                continue
            if len(row) != len(header):
                raise CorruptFileError(
                    f"{p}: line {reader.line_num}: expected {len(header)} comma-separated fields like "
                    f"the header (line {header_line}), found {len(row)}")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise CorruptFileError(f"{p}: line {reader.line_num}: malformed CSV: {e}") from None
    if header is None:
        raise CorruptFileError(f"{p}: line 1: the file is empty; expected a header row naming the "
                               f"columns (for example x1,x2,label), then one row per sample")
    if all(_is_number(h) for h in header):
        raise CorruptFileError(f"{p}: line {header_line}: expected a header row naming the columns, "
                               f"found only numbers ({_columns(header)}); add a header line such as "
                               f"x1,x2,...,label")
    return header, header_line, rows, lines


def _bad_cell(p: Path, line: int, name: str, col: int, value: str, what: str) -> NoReturn:
    shown = value if len(value) <= 40 else value[:40] + "..."
    raise CorruptFileError(f"{p}: line {line}, column {name!r} (column {col + 1}): expected {what}, "
                           f"found {shown!r}")


def _features(rows: list[list[str]], feat_i: list[int], lines: list[int], header: list[str], p: Path,
              label_column: str) -> np.ndarray:
    what = f"a finite number (every column but {label_column!r} is a numeric feature)"
    pick = itemgetter(*feat_i)
    cells = chain.from_iterable(map(pick, rows)) if len(feat_i) > 1 else map(pick, rows)
    try:  # float() in C over all cells: several times faster than numpy's text conversion
        x = np.fromiter(map(float, cells), dtype=np.float64, count=len(rows) * len(feat_i))
        if np.isfinite(x).all():
            return x.reshape(len(rows), len(feat_i)).astype(np.float32)
    except ValueError:
        pass
    for r, row in enumerate(rows):  # find and report the first bad cell
        for j in feat_i:
            try:
                v = float(row[j])
            except ValueError:
                _bad_cell(p, lines[r], header[j], j, row[j], what)
            if not math.isfinite(v):
                _bad_cell(p, lines[r], header[j], j, row[j], what)
    raise CorruptFileError(f"{p}: a feature value is not a number; expected {what}")  # pragma: no cover


def _labels(col: np.ndarray, lines: list[int], name: str, j: int, p: Path) -> np.ndarray:
    col = np.char.strip(col)
    empty = np.flatnonzero(col == "")
    if empty.size:
        r = int(empty[0])
        _bad_cell(p, lines[r], name, j, "", "a label (fill or drop the row)")
    try:
        return col.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        y = col.astype(np.float64)
    except (ValueError, OverflowError):
        return col  # text labels: classes
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        r = int(bad[0])
        _bad_cell(p, lines[r], name, j, str(col[r]), "a finite number as target")
    return y


def _split_flags(col: np.ndarray, lines: list[int], name: str, j: int, p: Path) -> np.ndarray:
    vals = np.char.lower(np.char.strip(col))
    bad = np.flatnonzero((vals != "train") & (vals != "test"))
    if bad.size:
        r = int(bad[0])
        _bad_cell(p, lines[r], name, j, str(col[r]), "train or test")
    is_test = vals == "test"
    for flag, word in ((True, "test"), (False, "train")):
        if not (is_test == flag).any():
            raise CorruptFileError(f"{p}: column {name!r} (column {j + 1}) marks no row as {word!r}; "
                                   f"expected both train and test rows")
    return is_test
