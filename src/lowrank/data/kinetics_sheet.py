"""Reader of the spreadsheets of a stopped-flow experiment folder (``.xlsx`` or CSV).

A sheet is a table whose first non-empty row is a header; one column,
``Filename``, names a ``.bka`` file of the folder (with or without the
``.bka`` ending), and the others hold numbers (``X_start`` in the start-time
sheet, ``Slope``, ``Intercept``, ``Amplitude`` and ``Rate`` in the
fitted-parameter sheet). ``.xlsx`` workbooks are read with openpyxl (their
first worksheet); CSV files may separate fields by commas, semicolons or tabs.
Errors name the file, the 1-based row (line) and the column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptFileError

__all__ = ["Sheet", "read_sheet", "SHEET_SUFFIXES", "FILENAME_COLUMN", "trace_key"]

SHEET_SUFFIXES = (".xlsx", ".csv")
FILENAME_COLUMN = "Filename"


def trace_key(name: str) -> str:
    """How a sheet's file name is matched to a trace: stripped, without a ``.bka`` ending."""
    s = str(name).strip()
    return s[:-4] if s.lower().endswith(".bka") else s


@dataclass
class Sheet:
    """The header and data rows of one sheet."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[Any]]]
    """(1-based row number, cells) of every non-empty row after the header."""

    def column(self, name: str) -> int:
        """Index of column ``name``; a missing column is a CorruptFileError listing the header."""
        try:
            return self.header.index(name)
        except ValueError:
            raise CorruptFileError(f"{self.path}: the header has no column {name!r} (its columns: "
                                   f"{', '.join(repr(h) for h in self.header)})") from None

    def values(self, name: str) -> dict[str, tuple[float, int]]:
        """``{trace key: (value of column name, row)}``; a non-number or a file listed twice is an error."""
        fi, vi = self.column(FILENAME_COLUMN), self.column(name)
        out: dict[str, tuple[float, int]] = {}
        for line, cells in self.rows:
            fname = cells[fi] if fi < len(cells) else None
            if fname is None or not str(fname).strip():
                raise CorruptFileError(f"{self.path}: line {line}: column {FILENAME_COLUMN!r} is empty; "
                                       f"expected the name of a .bka file")
            key = trace_key(str(fname))
            if key in out:
                raise CorruptFileError(f"{self.path}: line {line}: {str(fname).strip()!r} is listed again "
                                       f"(first on line {out[key][1]}); expected one row per file")
            raw = cells[vi] if vi < len(cells) else None
            out[key] = (_number(raw, self.path, line, name), line)
        return out


def _number(raw: Any, path: Path, line: int, column: str) -> float:
    if isinstance(raw, bool) or raw is None or (isinstance(raw, str) and not raw.strip()):
        v = math.nan
    elif isinstance(raw, (int, float)):
        v = float(raw)
    else:
        text = str(raw).strip()
        if text.count(",") == 1 and "." not in text:
            text = text.replace(",", ".")  # a decimal comma, as some locales export
        try:
            v = float(text)
        except ValueError:
            v = math.nan
    if not math.isfinite(v):
        raise CorruptFileError(f"{path}: line {line}, column {column!r}: expected a finite number, found {raw!r}")
    return v


def _rows(table: list[list[Any]], path: Path) -> Sheet:
    header: list[str] | None = None
    rows: list[tuple[int, list[Any]]] = []
    for n, cells in enumerate(table, start=1):
        if all(c is None or (isinstance(c, str) and not c.strip()) for c in cells):
            continue
        if header is None:
            header = ["" if c is None else str(c).strip() for c in cells]
            while header and not header[-1]:
                header.pop()
            continue
        rows.append((n, list(cells)))
    if header is None:
        raise CorruptFileError(f"{path}: the sheet is empty; expected a header row (Filename, ...) and one row "
                               f"per .bka file")
    return Sheet(path, header, rows)


def _xlsx(path: Path) -> list[list[Any]]:
    try:
        from openpyxl import load_workbook
    except ImportError:
        raise ConfigError(f"{path}: reading .xlsx sheets needs openpyxl: pip install "
                          f"'lowrank-train[kinetics]'") from None
    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError, XML errors ... for a damaged file
        raise CorruptFileError(f"{path}: not a readable .xlsx workbook ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        ws = wb.worksheets[0]
        return [list(r) for r in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


def _csv(path: Path) -> list[list[Any]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_bytes().decode("latin-1")
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot be read ({e.strerror})") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = max((",", ";", "\t"), key=first.count)
    try:
        return [list(r) for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)]
    except csv.Error as e:
        raise CorruptFileError(f"{path}: malformed CSV: {e}") from None


def read_sheet(path: str | os.PathLike[str]) -> Sheet:
    """Read the ``.xlsx`` or ``.csv`` sheet at ``path`` (see the module docstring)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".xlsx"):
        return _rows(_xlsx(p), p)
    if name.endswith(".csv"):
        return _rows(_csv(p), p)
    raise ConfigError(f"{p}: not a sheet; expected a .xlsx or .csv file")
