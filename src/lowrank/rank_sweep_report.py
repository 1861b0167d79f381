"""The report's *accuracy and time against k* section: fixed-rank runs of one method at several ranks.

For each group of finished runs that share a dataset, a model and a low-rank method whose
config gives a fixed ``rank`` (not adaptive), with at least two different ranks: test
accuracy against ``k`` and mean training-epoch time against ``k``, with every dense run
of the same dataset and model drawn as a flat reference line, and a table of ``k``
against accuracy, epoch time (and its ratio to dense), parameters at inference and the
parameters of the converted layers; :func:`~lowrank.compress.rank_rule.choose_rank` (the rule of
``lowrank compress``) names the smallest ``k`` within :data:`TOLERANCE` points of dense. The rank-adaptive runs of the same data are listed in
the table with their final ranks (their evolution is the report's rank section).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import plots
from .compress.rank_rule import choose_rank
from .document import Image, Section, Table

__all__ = ["rank_sweep_section", "sweep_groups", "TOLERANCE"]

TOLERANCE = 1.0
"""Percentage points of test accuracy the rank rule allows below dense (``lowrank compress``'s default)."""


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _params(summary: dict[str, Any]) -> int | None:
    return _get(summary, "accounting", "inference", "count")


def _key(r: Any) -> tuple[str, str]:
    return r.dataset, str(r.config.get("model", "mlp"))


def sweep_groups(runs: list[Any]) -> list[tuple[str, str, str, list[Any], list[Any], list[Any]]]:
    """``(dataset, model, method, fixed-rank runs sorted by k, dense runs, adaptive runs)`` per group of
    finished runs with at least two ranks."""
    done = [r for r in runs if r.status == "finished" and r.summary]
    dense = defaultdict(list)
    fixed: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    adaptive = defaultdict(list)
    for r in done:
        method = _get(r.config, "method") or {}
        if r.method == "dense":
            dense[_key(r)].append(r)
        elif method.get("adaptive"):
            adaptive[_key(r)].append(r)
        elif isinstance(method.get("rank"), int):
            fixed[(*_key(r), r.method)].append(r)
    out = []
    for (dataset, model, method), group in fixed.items():
        if len({_get(r.config, "method", "rank") for r in group}) >= 2:
            group.sort(key=lambda r: _get(r.config, "method", "rank"))
            out.append((dataset, model, method, group, dense[(dataset, model)], adaptive[(dataset, model)]))
    return out


def _converted_params(r: Any) -> int:
    """Parameters of the run's low-rank layers (summary ``layer_params`` of the layers in ``ranks``)."""
    ranks = (r.summary or {}).get("ranks") or {}
    per = (r.summary or {}).get("layer_params") or {}
    return sum(v for k, v in per.items() if k in ranks)


def rank_sweep_section(runs: list[Any]) -> Section | None:
    """See the module docstring; None when no group has two ranks."""
    groups = sweep_groups(runs)
    if not groups:
        return None
    images, rows, notes = [], [], []
    for i, (dataset, model, method, group, dense, adaptive) in enumerate(groups):
        if dense:   # the compression issue's rank rule: the smallest k within 1 point of dense
            table = [{"k": _get(r.config, "method", "rank"), "test accuracy": r.summary["test_acc"],
                      "params": _params(r.summary) or 0} for r in group]
            choice = choose_rank(table, TOLERANCE, reference=dense[0].summary["test_acc"], accuracy="test accuracy")
            notes.append(f"{method} on {dataset}: k = {choice.row['k']} ({100 * choice.accuracy:.2f}% against "
                         f"dense {100 * choice.reference:.2f}%): {choice.rule}")
        ks = [_get(r.config, "method", "rank") for r in group]
        acc = [plots.Series(f"{method} ({model}, {dataset})", ks, [100 * r.summary["test_acc"] for r in group])]
        time = [plots.Series(f"{method} ({model}, {dataset})", ks, [r.summary.get("epoch_time") for r in group])]
        for d in dense:
            acc.append(plots.Series(f"{d.label} (dense)", [ks[0], ks[-1]], [100 * d.summary["test_acc"]] * 2,
                                    {"linestyle": "--"}))
            time.append(plots.Series(f"{d.label} (dense)", [ks[0], ks[-1]], [d.summary.get("epoch_time")] * 2,
                                     {"linestyle": "--"}))
        images.append(Image(f"accuracy_vs_k_{i}", plots.to_png(plots.xy_lines(
            acc, xlabel="rank k", ylabel="test accuracy (%)", title=f"Accuracy against k: {method} on {dataset}",
            log_x=True)), alt=f"test accuracy against k of the {method} runs on {dataset}, dense dashed"))
        images.append(Image(f"time_vs_k_{i}", plots.to_png(plots.xy_lines(
            time, xlabel="rank k", ylabel="training epoch time (s)", title=f"Epoch time against k: {method}",
            log_x=True)), alt=f"mean training epoch time against k of the {method} runs, dense dashed"))
        base_time = dense[0].summary.get("epoch_time") if dense else None
        for r in [*dense, *group, *adaptive]:
            s = r.summary
            ranks = s.get("ranks") or {}
            k = _get(r.config, "method", "rank")
            if r.method == "dense":
                kcell = "dense"
            elif _get(r.config, "method", "adaptive"):
                kcell = "adaptive: " + ", ".join(f"{name.rsplit('.', 1)[-1]} {v}" for name, v in ranks.items())
            else:
                kcell = str(k)
            t = s.get("epoch_time")
            ratio = f"{t / base_time:.2f}" if t and base_time else "–"
            rows.append([r.label, kcell, f"{100 * s['test_acc']:.2f}%", f"{t:.1f} s" if t else "–", ratio,
                         f"{_params(s):,}" if _params(s) is not None else "–",
                         f"{_converted_params(r):,}" if ranks else "–"])
    table = Table(["run", "k", "test accuracy", "epoch time", "time / dense", "parameters", "in low-rank layers"],
                  rows, numeric={2, 3, 4, 5, 6})
    return Section("Accuracy and time against k", table=table, images=images, notes=notes, paragraphs=[
        "Fixed-rank runs of one method at several ranks k, against the dense runs of the same data and model "
        "(dashed). Epoch time: mean wall time of a training epoch (evaluation excluded), so the ratio to dense "
        "is measured on the same machine; on a shared machine absolute times vary between runs."])
