"""Which compressed point to keep: two stated rules over a table of measured points.

A *table* is a sequence of rows (mappings), one per candidate (a rank ``k``, an energy,
a LoRA rank ...). The rules read only the keys named by their arguments, so any sweep
can use them.

**Tolerance rule** (:func:`choose_rank`, the default of ``lowrank compress``): among the
rows whose accuracy is within ``tolerance`` percentage points of the reference (the dense
model's accuracy), ``reference - accuracy <= tolerance / 100``, take the smallest one:
fewest ``size`` (parameters), ties broken by the smaller ``k``, then table order. For a
sweep of one ``k`` for every layer this is the smallest ``k``. When **no** row is within
the tolerance, the rule takes the most accurate row (ties: the smaller one) and says so:
``Choice.within_tolerance`` is False and ``Choice.rule`` states it.

**Knee rule** (:func:`knee`): the knee of accuracy against a cost (latency by default).
Keep the Pareto rows (ordered by cost, each strictly more accurate than every cheaper
one); scale cost and accuracy of those rows linearly to [0, 1] (first row 0, last row 1);
the knee is the row farthest above the chord joining the cheapest and the most accurate
Pareto row (the largest ``accuracy' - cost'``). With fewer than three Pareto rows, or no
row above the chord, the knee is the most accurate row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["Choice", "choose_rank", "knee", "accuracy_key"]

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Choice:
    """The row a rule picked."""

    index: int
    """Position of the row in the table."""
    row: Row
    """The row itself."""
    accuracy: float
    """Its accuracy (the key the rule read), a fraction."""
    reference: float
    """The accuracy it was compared with (the dense model's), a fraction."""
    tolerance: float
    """Allowed drop, in percentage points."""
    within_tolerance: bool
    """False when no row was within the tolerance (the most accurate row was taken instead)."""
    rule: str
    """The rule and its outcome, as a sentence."""


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def accuracy_key(table: Sequence[Row]) -> str:
    """``"acc_after"`` (retrained accuracy) when every row has it, else ``"acc_before"``."""
    return "acc_after" if table and all(_number(r.get("acc_after")) is not None for r in table) else "acc_before"


def choose_rank(table: Sequence[Row], tolerance: float, *, reference: float, accuracy: str | None = None,
                size: str = "params", k: str = "k") -> Choice:
    """The tolerance rule (module docstring): the smallest row within ``tolerance`` points of ``reference``.

    Args:
        table: the candidate rows.
        tolerance: allowed accuracy drop in percentage points (``>= 0``).
        reference: the accuracy to stay close to (a fraction, e.g. the dense model's 0.885).
        accuracy: the key holding each row's accuracy (a fraction); default :func:`accuracy_key`.
        size: the key ordering rows by cost (parameters); ``k``: the tie-break key.
    """
    tol = _number(tolerance)
    if tol is None or tol < 0:
        raise ConfigError(f"tolerance must be a number of percentage points >= 0, got {tolerance!r}")
    ref = _number(reference)
    if ref is None:
        raise ConfigError(f"reference accuracy must be a number, got {reference!r}")
    if not table:
        raise ConfigError("no points to choose from: the table is empty")
    key = accuracy or accuracy_key(table)
    accs = []
    for i, r in enumerate(table):
        a = _number(r.get(key))
        if a is None:
            raise ConfigError(f"row {i} of the table has no accuracy {key!r} (got {r.get(key)!r})")
        accs.append(a)

    def order(i: int) -> tuple[float, float, int]:
        s, kk = _number(table[i].get(size)), _number(table[i].get(k))
        return (math.inf if s is None else s, math.inf if kk is None else kk, i)

    within = [i for i, a in enumerate(accs) if ref - a <= tol / 100 + 1e-12]
    name = _name(table, k)
    if within:
        i = min(within, key=order)
        rule = (f"smallest {name} whose {key} is within {tol:g} points of the reference {100 * ref:.2f}%: "
                f"{_label(table[i], k)} ({100 * accs[i]:.2f}%)")
        return Choice(i, table[i], accs[i], ref, tol, True, rule)
    i = min(range(len(table)), key=lambda j: (-accs[j], *order(j)))
    rule = (f"no {name} is within {tol:g} points of the reference {100 * ref:.2f}% ({key}); taken the most "
            f"accurate: {_label(table[i], k)} ({100 * accs[i]:.2f}%, {100 * (ref - accs[i]):.2f} points below)")
    return Choice(i, table[i], accs[i], ref, tol, False, rule)


def knee(table: Sequence[Row], *, cost: str = "torch_latency_b1", accuracy: str | None = None) -> int | None:
    """Index of the knee row of accuracy against ``cost`` (module docstring); None when no row has both numbers."""
    key = accuracy or accuracy_key(table)
    pts = [(_number(r.get(cost)), _number(r.get(key)), i) for i, r in enumerate(table)]
    pts = sorted(((c, a, i) for c, a, i in pts if c is not None and a is not None), key=lambda p: (p[0], -p[1], p[2]))
    if not pts:
        return None
    front: list[tuple[float, float, int]] = []
    for p in pts:
        if not front or p[1] > front[-1][1]:
            front.append(p)
    last = front[-1]
    if len(front) < 3:
        return last[2]
    c0, a0 = front[0][0], front[0][1]
    dc, da = last[0] - c0, last[1] - a0
    if dc <= 0 or da <= 0:
        return last[2]
    gains = [((a - a0) / da - (c - c0) / dc, i) for c, a, i in front[1:-1]]
    best = max(gains, key=lambda g: g[0])
    return best[1] if best[0] > 0 else last[2]


def _name(table: Sequence[Row], k: str) -> str:
    return k if any(_number(r.get(k)) is not None for r in table) else "point"


def _label(row: Row, k: str) -> str:
    if row.get("label"):
        return str(row["label"])
    return f"{k}={row.get(k)}"
