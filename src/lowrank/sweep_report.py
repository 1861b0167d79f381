"""The summary report of a test matrix: every grid point's result, accuracy by axis value,
and heatmaps of mean test accuracy for every pair of axes that vary.

Read from the database: the run of each grid point is the newest one stored under
the sweep's name and the point's key (see :mod:`lowrank.sweep`).
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

from . import plots
from .document import Document, Image, ReportFiles, Section, Table, write_document
from .sweep_matrix import Matrix, format_value
from .store import Store
from .sweep import TERMINAL, sweep_runs

__all__ = ["sweep_document", "write_sweep_report"]


def _point_rows(matrix: Matrix, store: Store) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(axis values, newest run row or None) for every grid point, done runs preferred."""
    by_key = sweep_runs(store, matrix.name)
    out = []
    for p in matrix.points:
        rows = by_key.get(p.key, [])
        done = [r for r in rows if r["status"] in TERMINAL]
        out.append((p.values, (done or rows or [None])[-1]))
    return out


def _acc(row: dict[str, Any] | None) -> float | None:
    if row is None or row["status"] != "finished" or not row["summary"]:
        return None
    acc = row["summary"].get("test_acc")
    return None if acc is None else 100 * acc


def sweep_document(matrix: Matrix, store: Store) -> Document:
    """The summary report of ``matrix`` from what ``store`` holds."""
    points = _point_rows(matrix, store)
    varying = [a for a, vals in matrix.axes.items() if len({format_value(v) for v in vals}) > 1]
    fixed = [a for a in matrix.axes if a not in varying]
    status_count: dict[str, int] = {}
    for _, row in points:
        st = row["status"] if row else "not run"
        status_count[st] = status_count.get(st, 0) + 1
    overview = Section("Overview", paragraphs=[
        f"{len(points)} grid points over {len(matrix.axes)} axes "
        f"({', '.join(f'{a}: {len(v)}' for a, v in matrix.axes.items())}). "
        + ", ".join(f"{n} {s}" for s, n in sorted(status_count.items())) + "."]
        + ([f"Fixed: {', '.join(f'{a} = {format_value(matrix.axes[a][0])}' for a in fixed)}."] if fixed else [])
        + ([matrix.description] if matrix.description else []),
        notes=[f"merged duplicate point (dense has no rank): {k}" for k in matrix.skipped])

    cols = [*varying, "status", "run", "test accuracy", "test loss", "epoch time", "hidden weights kept"]
    table_rows = []
    for values, row in sorted(points, key=lambda pr: -(_acc(pr[1]) or -1.0)):
        s = (row or {}).get("summary") or {}
        hw = s.get("hidden_weights")
        ratio = hw.get("ratio") if isinstance(hw, dict) else None
        acc = _acc(row)
        table_rows.append([*(format_value(values[a]) for a in varying), row["status"] if row else "not run",
                           str(row["id"]) if row else "–", "–" if acc is None else f"{acc:.2f}%",
                           "–" if s.get("test_loss") is None else f"{s['test_loss']:.4f}",
                           "–" if s.get("epoch_time") is None else f"{s['epoch_time']:.2f} s",
                           "–" if ratio is None else f"{100 * ratio:.1f}%"])
    n = len(varying)
    results = Section("Every grid point", table=Table(cols, table_rows, numeric={n + 1, n + 2, n + 3, n + 4, n + 5}),
                      paragraphs=["Sorted by test accuracy; one row per grid point (its newest finished run)."])

    marg_rows = []
    for a in varying:
        for v in _distinct(matrix.axes[a]):
            accs = [x for vals, row in points if format_value(vals[a]) == v and (x := _acc(row)) is not None]
            marg_rows.append([a, v, str(len(accs)), f"{statistics.fmean(accs):.2f}%" if accs else "–",
                              f"{max(accs):.2f}%" if accs else "–"])
    marginals = Section("Test accuracy by axis value", table=Table(
        ["axis", "value", "finished runs", "mean test accuracy", "best test accuracy"], marg_rows, numeric={2, 3, 4}),
        paragraphs=["Mean and best over every other axis."])

    images = []
    for a, b in itertools.combinations(varying, 2):
        xs, ys = _distinct(matrix.axes[a]), _distinct(matrix.axes[b])
        grid: list[list[float | None]] = []
        for yv in ys:
            row_vals: list[float | None] = []
            for xv in xs:
                accs = [x for vals, row in points if format_value(vals[a]) == xv and format_value(vals[b]) == yv
                        and (x := _acc(row)) is not None]
                row_vals.append(statistics.fmean(accs) if accs else None)
            grid.append(row_vals)
        fig = plots.heatmap(grid, xticks=xs, yticks=ys, xlabel=a, ylabel=b,
                            title=f"mean test accuracy (%) by {a} and {b}")
        images.append(Image(f"heatmap_{_safe(a)}_{_safe(b)}", plots.to_png(fig),
                            alt=f"heatmap of mean test accuracy by {a} and {b}"))
    heat = Section("Heatmaps of accuracy by parameter pairs", images=images,
                   paragraphs=["Each cell: mean test accuracy (%) of the finished runs with that pair of values, "
                               "averaged over every other axis; blank: no finished run."])
    sections = [overview, results, marginals] + ([heat] if images else [])
    return Document(matrix.title, f"Sweep {matrix.name}" + (f" ({matrix.source})" if matrix.source else ""),
                    sections)


def write_sweep_report(matrix: Matrix, store: Store, out_dir: str | Path) -> ReportFiles:
    """Write the sweep's ``report.html``, ``report.md`` and figures into ``out_dir``."""
    return write_document(sweep_document(matrix, store), out_dir)


def _distinct(values: list[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        if format_value(v) not in out:
            out.append(format_value(v))
    return out


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s)
