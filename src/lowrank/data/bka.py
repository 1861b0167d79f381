"""Reader of stopped-flow ``.bka`` (biokine analysis) traces.

Format (thesis §3.3.2): tab-separated text; 18 metadata lines, the 18th
containing ``_DATA``; then one row per sample, ``time_ms<TAB>volts`` (two
numbers; any whitespace separates them). Blank lines at the end are ignored.
Errors name the file and the 1-based line.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError
from .rawfile import read_bytes

__all__ = ["BkaTrace", "read_bka", "parse_bka", "METADATA_LINES", "DATA_MARKER"]

METADATA_LINES = 18
"""Lines before the data rows; the last of them holds :data:`DATA_MARKER`."""
DATA_MARKER = "_DATA"


@dataclass
class BkaTrace:
    """The rows of one trace."""

    time_ms: np.ndarray
    """float64 (R,) times in milliseconds, in file order."""
    volts: np.ndarray
    """float64 (R,) signal in volts."""
    metadata: list[str]
    """The 18 metadata lines as written."""


def read_bka(path: str | os.PathLike[str]) -> BkaTrace:
    """Read the ``.bka`` file at ``path``; :class:`~lowrank.errors.CorruptFileError` names file and line."""
    p = Path(path)
    data = read_bytes(p)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # instrument metadata may hold a degree sign or µ in Latin-1
    return parse_bka(text, p)


def _first_bad_row(rows: list[str], first: int, path: object) -> None:
    """Raise the CorruptFileError of the first row that is not two finite numbers."""
    for i, row in enumerate(rows):
        f = row.split()
        if len(f) != 2:
            raise CorruptFileError(f"{path}: line {first + i}: expected 2 values (time_ms<TAB>volts), found "
                                   f"{len(f)}: {row[:60]!r}")
        for col, v in zip(("time_ms", "volts"), f):
            try:
                x = float(v)
            except ValueError:
                x = float("nan")
            if not np.isfinite(x):
                raise CorruptFileError(f"{path}: line {first + i}: {col} is {v!r}; expected a finite number")
    raise CorruptFileError(f"{path}: line {first}: the rows are not time_ms<TAB>volts numbers")  # pragma: no cover


def parse_bka(text: str, path: str | os.PathLike[str] = "<text>") -> BkaTrace:
    """Decode the content of a ``.bka`` file; ``path`` names it in errors."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < METADATA_LINES:
        raise CorruptFileError(f"{path}: line {len(lines) + 1}: the file ends after {len(lines)} lines; expected "
                               f"{METADATA_LINES} metadata lines (the {METADATA_LINES}th holding {DATA_MARKER}) "
                               f"and then time_ms<TAB>volts rows")
    marker = lines[METADATA_LINES - 1]
    if DATA_MARKER not in marker:
        shown = marker if len(marker) <= 40 else marker[:40] + "..."
        raise CorruptFileError(f"{path}: line {METADATA_LINES}: expected the end of the metadata, a line holding "
                               f"{DATA_MARKER}, found {shown!r}; is this a .bka trace?")
    rows = lines[METADATA_LINES:]
    first = METADATA_LINES + 1
    if len(rows) < 2:
        raise CorruptFileError(f"{path}: line {METADATA_LINES + len(rows)}: the file ends after {len(rows)} data "
                               f"row(s) after {DATA_MARKER}; expected at least 2 rows of time_ms<TAB>volts")
    try:  # numpy's C reader checks every row has 2 numbers; on any complaint, find the line ourselves
        values = np.loadtxt(io.StringIO("\n".join(rows)), dtype=np.float64, ndmin=2, comments=None)
        ok = values.shape == (len(rows), 2) and bool(np.isfinite(values).all())
    except ValueError:
        ok = False
    if not ok:
        _first_bad_row(rows, first, path)
    return BkaTrace(values[:, 0].copy(), values[:, 1].copy(), lines[:METADATA_LINES])
