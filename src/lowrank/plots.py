"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display).

Every function takes plain Python data (no database, no files) and returns a
:class:`matplotlib.figure.Figure` whose axes are all labelled; :func:`to_png`
turns one into PNG bytes. Curves are passed as :class:`Series`.

Labels are user strings (run names, dataset paths): :func:`to_png` draws every text
literally, mathtext off, so a run named ``$\\foo$`` is shown as typed and never breaks
the figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

__all__ = ["Series", "Panel", "rank_panels", "to_png", "curves", "confusion_grid", "rank_evolution", "pareto",
           "xy_lines", "heatmap", "palette", "predicted_vs_true"]

DPI = 100
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p"]


@dataclass
class Series:
    """One labelled line: ``x`` against ``y`` (``None`` values are skipped)."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    style: dict = field(default_factory=dict)


def palette(n: int) -> list[str]:
    """``n`` distinct colours (tab10, then tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def to_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig``, every text drawn as written (no mathtext) but the tick labels of
    log axes, which matplotlib's formatter writes as mathtext (``$10^{2}$``)."""
    log_ticks = {id(label) for ax in fig.axes for axis, scale in ((ax.xaxis, ax.get_xscale()),
                                                                  (ax.yaxis, ax.get_yscale())) if scale != "linear"
                 for tick in axis.get_major_ticks() + axis.get_minor_ticks() for label in (tick.label1, tick.label2)}
    for text in fig.findobj(Text):
        if id(text) not in log_ticks:
            text.set_parse_math(False)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _panels(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, list]:
    """A figure with ``n`` panels of ``size`` inches, at most ``ncols`` to a row, and its axes."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


def _clean(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and not (isinstance(y, float) and math.isnan(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curves(runs: Sequence[tuple[str, dict[str, Sequence[float | None]]]], *, keys: Sequence[tuple[str, str]],
           ylabel: str, title: str, log: bool = False) -> Figure:
    """Per-run lines against the epoch, one panel per key (e.g. train loss | test loss).

    ``runs`` is ``[(label, {"epoch": [...], key: [...], ...})]``; ``keys`` is
    ``[(key, panel name)]``. Panels share the y axis; one legend (a colour per run).
    """
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(4.6 * len(keys) + 2.6, 4.0), layout="constrained")
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    colours = palette(len(runs))
    for ax, (key, name) in zip(axes, keys):
        for colour, marker, (label, cols) in zip(colours, MARKERS * len(runs), runs):
            x, y = _clean([e + 1 for e in cols["epoch"]], cols.get(key, []))
            if y:
                ax.plot(x, y, color=colour, marker=marker, markersize=3.5, linewidth=1.3)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
        _integer_ticks(ax)
    axes[0].set_ylabel(ylabel)
    axes[-1].tick_params(labelleft=True)
    fig.suptitle(title, fontsize=11)
    handles = [Line2D([], [], color=c, marker=m, markersize=4, label=label)
               for c, m, (label, _) in zip(colours, MARKERS * len(runs), runs)]
    fig.legend(handles=handles, fontsize=8, loc="outside right upper", frameon=False)
    return fig


def confusion_grid(mats: Sequence[tuple[str, Sequence[Sequence[int]]]], *, ncols: int = 3) -> Figure:
    """One confusion matrix per run (rows: true class, columns: predicted), as row percentages."""
    fig, axes = _panels(len(mats), ncols, (3.6, 3.5))
    for ax, (label, mat) in zip(axes, mats):
        k = len(mat)
        rows = [[v / max(1, sum(r)) * 100 for v in r] for r in mat]
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=100)
        if k <= 12:
            for t in range(k):
                for p in range(k):
                    v = rows[t][p]
                    if v >= 1:
                        ax.text(p, t, f"{v:.0f}", ha="center", va="center", fontsize=6,
                                color="white" if v > 50 else "black")
            ax.set_xticks(range(k))
            ax.set_yticks(range(k))
            ax.tick_params(labelsize=6)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(label, fontsize=9)
    fig.suptitle("Confusion matrices (% of each true class)", fontsize=10)
    return fig


def predicted_vs_true(runs: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, ncols: int = 3,
                      unit: str = "") -> Figure:
    """One panel per run (label, true values, predictions): predictions against targets, with the diagonal.

    Every panel has the same axis limits (all runs' values), so panels compare at a glance.
    """
    fig, axes = _panels(len(runs), ncols, (3.6, 3.5))
    values = [v for _, t, p in runs for v in list(t) + list(p) if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = 0.03 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    colours = palette(len(runs))
    suffix = f" ({unit})" if unit else ""
    for ax, (label, true, pred), colour in zip(axes, runs, colours):
        ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=0.8, linestyle="--")
        ax.scatter(list(true), list(pred), s=6, alpha=0.6, color=colour, linewidths=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("true" + suffix)
        ax.set_ylabel("predicted" + suffix)
        ax.set_title(label, fontsize=9)
    fig.suptitle("Predicted against true (test set)", fontsize=10)
    return fig


def rank_evolution(runs: Sequence[tuple[str, Sequence[Series]]], *, ncols: int = 2) -> Figure:
    """One panel per run: each layer's rank against the epoch (caps dotted, if given)."""
    fig, axes = _panels(len(runs), ncols, (4.8, 3.4))
    for ax, (label, layers) in zip(axes, runs):
        top = 1.0
        for colour, s in zip(palette(len(layers)), layers):
            x, y = _clean(s.x, s.y)
            ax.plot(x, y, marker="o", markersize=3, color=colour, label=s.label, **s.style)
            top = max([top, *y])
        ax.set_ylim(0, top * 1.15 + 1)
        ax.set_xlabel("epoch (0: initial rank)")
        ax.set_ylabel("rank")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        _integer_ticks(ax, y=True)
        ax.legend(fontsize=7)
    fig.suptitle("Rank of each layer at the end of each epoch", fontsize=10)
    return fig


def pareto(points: Sequence[tuple[str, float, float]], *, xlabel: str, ylabel: str, title: str,
           log_x: bool = True, higher_is_better: bool = True, log_y: bool = False) -> Figure:
    """Scatter of ``(label, x, y)``, labelled, with the front of points no other beats in both
    (smaller ``x``, larger ``y``, or smaller ``y`` when not ``higher_is_better``) joined by a line."""
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for colour, marker, (label, x, y) in zip(palette(len(points)), MARKERS * len(points), points):
        ax.scatter([x], [y], color=colour, marker=marker, s=42, zorder=3, label=label)
    front = pareto_front([(x, y) for _, x, y in points], higher_is_better=higher_is_better)
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="grey", alpha=0.6, zorder=2,
                label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_x and points and min(p[1] for p in points) > 0:
        ax.set_xscale("log")
    if log_y and points and min(p[2] for p in points) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    if points:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def pareto_front(points: Sequence[tuple[float, float]], *, higher_is_better: bool = True
                 ) -> list[tuple[float, float]]:
    """Points not dominated by another with smaller-or-equal ``x`` and larger ``y`` (smaller ``y`` when
    not ``higher_is_better``), by ``x``."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if not front or sign * y > sign * front[-1][1]:
            front.append((x, y))
    return front


def xy_lines(series: Sequence[Series], *, xlabel: str, ylabel: str, title: str, log_x: bool = False) -> Figure:
    """Several labelled lines on one pair of axes (accuracy against k, against LoRA rank ...)."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for colour, s in zip(palette(len(series)), series):
        x, y = _clean(s.x, s.y)
        ax.plot(x, y, marker="o", markersize=4, color=colour, label=s.label, **s.style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return fig


def heatmap(values: Sequence[Sequence[float | None]], *, xticks: Sequence[str], yticks: Sequence[str],
            xlabel: str, ylabel: str, title: str, fmt: str = "{:.1f}") -> Figure:
    """A value grid (rows = ``yticks``, columns = ``xticks``), each cell annotated; ``None`` is blank."""
    nx, ny = len(xticks), len(yticks)
    fig = Figure(figsize=(max(3.6, 0.9 * nx + 2.0), max(2.8, 0.5 * ny + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    nan = float("nan")
    grid = [[nan if v is None else float(v) for v in row] for row in values]
    finite = [v for row in grid for v in row if not math.isnan(v)]
    im = ax.imshow(grid, cmap="viridis", aspect="auto",
                   vmin=min(finite) if finite else 0, vmax=max(finite) if finite else 1)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                light = hi == lo or (v - lo) / (hi - lo) < 0.6
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8,
                        color="white" if light else "black")
    ax.set_xticks(range(nx), [str(t) for t in xticks], fontsize=7, rotation=30 if nx > 4 else 0)
    ax.set_yticks(range(ny), [str(t) for t in yticks], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _integer_ticks(ax, y: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


@dataclass
class Panel:
    """One panel of :func:`rank_panels`: lines against the rank and labelled horizontal references."""

    ylabel: str
    series: Sequence[Series]
    references: Sequence[tuple[str, float]] = ()
    """``(label, y)``: a dashed horizontal line across the panel (e.g. full fine-tuning)."""
    log_y: bool = False


def rank_panels(panels: Sequence[Panel], *, xlabel: str, title: str, ncols: int = 2) -> Figure:
    """Panels sharing a log-2 rank axis (LoRA accuracy, parameters, time, memory against rank),
    each with its references as dashed horizontal lines."""
    fig, axes = _panels(len(panels), ncols, (4.6, 3.3))
    refs = sorted({label for p in panels for label, _ in p.references})
    ref_colour = dict(zip(refs, ["#444444", "#b04a1a", "#1a7ab0", "#7a1ab0"]))
    for ax, p in zip(axes, panels):
        for colour, s in zip(palette(len(p.series)), p.series):
            x, y = _clean(s.x, s.y)
            ax.plot(x, y, marker="o", markersize=4, color=colour, label=s.label, **s.style)
            if x:
                ax.set_xscale("log", base=2)
                ax.set_xticks(x, [str(int(v)) for v in x])
        for label, y in p.references:
            ax.axhline(y, linestyle="--", linewidth=1.2, color=ref_colour.get(label, "#444444"), label=label)
        if p.log_y:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(p.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
