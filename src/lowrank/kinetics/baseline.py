"""The curve_fit baseline of a comparison: fit every test trace, score the fitted ``k`` against ``Rate``.

The test traces are those of the test experiment folders of the data config's
split (:func:`lowrank.data.stopped_flow.split_experiments`, same seed and
``test_fraction``), so the baseline and the networks are scored on the same
traces. Each is fitted at full resolution (no down-sampling, no padding) by
:func:`~lowrank.kinetics.curve_fit.fit_trace`. Reported: MAE, RMSE and R^2 of
the fitted rates, the total fitting time (``train_time``: there is no training;
this is the whole cost of the method on the test set) and the time per trace.
It has no trained parameters: each trace gets its own 4 fitted numbers.
"""

from __future__ import annotations

import math

import numpy as np

from ..baselines import BaselineResult
from ..data.bka import read_bka
from ..data.config import DataConfig
from ..data.stopped_flow import scan_stopped_flow, split_experiments, stopped_flow_root
from ..recorder import SCATTER_POINTS
from .curve_fit import fit_trace

__all__ = ["curve_fit_baseline", "regression_metrics"]


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """MAE, RMSE and R^2 (None for constant targets) of predictions ``p`` for targets ``y`` (both (N,))."""
    err = np.asarray(p, np.float64) - np.asarray(y, np.float64)
    ss_tot = float(((y - np.mean(y)) ** 2).sum())
    sse = float((err ** 2).sum())
    return {"mae": float(np.abs(err).mean()), "rmse": math.sqrt(sse / len(err)),
            "r2": 1.0 - sse / ss_tot if ss_tot > 0 else None}


def curve_fit_baseline(data: DataConfig, seed: int) -> BaselineResult:
    """Fit the test traces of ``data`` (a ``stopped-flow:PATH`` config) split with ``seed``."""
    layout = scan_stopped_flow(stopped_flow_root(data))
    test = split_experiments(layout, data.test_fraction, seed)
    traces = [t for e, is_test in zip(layout.experiments, test) if is_test for t in e.traces]
    if data.test_size is not None:
        traces = traces[:data.test_size]
    y, p, seconds, failed = [], [], 0.0, 0
    for tr in traces:
        b = read_bka(tr.path)
        fit = fit_trace(b.time_ms, b.volts, tr.x_start)
        y.append(tr.rate)
        p.append(fit.k)
        seconds += fit.seconds
        failed += not fit.converged
    ya, pa = np.array(y), np.array(p)
    m = regression_metrics(ya, pa)
    n = min(len(traces), SCATTER_POINTS)
    summary = {
        "test_loss": m["mae"], "test_acc": None, "test_mae": m["mae"], "test_rmse": m["rmse"], "test_r2": m["r2"],
        "epochs": 0, "train_time": seconds, "epoch_time": None, "peak_mem": None,
        "accounting": {}, "baseline": "curve-fit", "traces": len(traces), "failed_fits": failed,
        "seconds_per_trace": seconds / max(1, len(traces)),
        "test_experiments": [e.name for e, t in zip(layout.experiments, test) if t],
        "scatter": {"true": ya[:n].tolist(), "predicted": pa[:n].tolist()},
    }
    notes = [f"curve_fit: {len(traces)} test traces fitted in {seconds:.1f} s "
             f"({1000 * seconds / max(1, len(traces)):.0f} ms each), {failed} did not converge; it trains "
             f"nothing (4 fitted numbers per trace), so its 'total time' is its fitting time on the test set."]
    return BaselineResult(summary, "curve_fit", notes)
