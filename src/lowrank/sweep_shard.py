"""``lowrank sweep MATRIX --shard I/N``: a deterministic share of a sweep's grid.

Shard ``I`` of ``N`` (1-based, ``1 <= I <= N``) takes the grid points whose position in
the list of point keys *sorted* is ``I - 1`` modulo ``N``: the shares are disjoint, cover
the grid, differ in size by at most one, and depend only on the set of keys, never on
the order of the lists in the file or on the machine. So a SLURM array
(``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``), a Kubernetes indexed job or
plain ``ssh`` can spread a matrix, each shard into its own database; ``lowrank merge``
then combines them (:mod:`lowrank.store_merge`).
"""

from __future__ import annotations

import dataclasses
import re

from .errors import ConfigError
from .sweep_matrix import Matrix

__all__ = ["Shard", "parse_shard", "shard_matrix"]


@dataclasses.dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` of a grid."""

    index: int
    """Which share, 1 .. count."""
    count: int
    """Number of shares."""

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and isinstance(self.index, int) and 1 <= self.index <= self.count):
            raise ConfigError(f"shard {self.index}/{self.count} does not exist: give --shard I/N with "
                              f"1 <= I <= N (e.g. 1/3, 2/3, 3/3)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"2/3"`` -> ``Shard(2, 3)``; anything else is a :class:`~lowrank.errors.ConfigError`."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text or "")
    if m is None:
        raise ConfigError(f"--shard {text!r} is not I/N (two whole numbers, e.g. 1/3 for the first of 3 shares)")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_matrix(matrix: Matrix, shard: Shard) -> Matrix:
    """``matrix`` with only the grid points of ``shard`` (in their file order)."""
    keys = sorted(p.key for p in matrix.points)
    mine = {k for i, k in enumerate(keys) if i % shard.count == shard.index - 1}
    return dataclasses.replace(matrix, points=[p for p in matrix.points if p.key in mine])
