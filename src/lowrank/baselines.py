"""Baselines of a comparison that are not trained networks (``baselines = [...]`` in an experiment file).

A baseline takes the experiment's base data config and seed and returns a
:class:`BaselineResult`: test metrics on the same test split the networks see,
in the keys of a run summary (``test_mae``, ``test_rmse``, ``test_r2``,
``train_time``, ``scatter`` ...). :func:`lowrank.compare.run_experiment` stores
each as a finished run row whose method is the baseline's name, so the report
draws it next to the networks. Built in: ``curve-fit``
(:mod:`lowrank.kinetics.baseline`, for ``stopped-flow:PATH`` data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .data.config import DataConfig
from .errors import ConfigError

__all__ = ["BaselineResult", "BaselineFn", "BASELINES", "register_baseline", "get_baseline", "check_baseline",
           "check_baseline_name"]


@dataclass
class BaselineResult:
    """What a baseline measured."""

    summary: dict[str, Any]
    """Run-summary keys: test metrics, ``train_time`` (its whole fitting time, seconds), notes."""
    label: str
    """Shown in tables and legends."""
    notes: list[str] = field(default_factory=list)


BaselineFn = Callable[[DataConfig, int], BaselineResult]


def _curve_fit(data: DataConfig, seed: int) -> BaselineResult:
    from .kinetics.baseline import curve_fit_baseline

    return curve_fit_baseline(data, seed)


def _curve_fit_check(data: DataConfig) -> None:
    from .data.stopped_flow import PREFIX, is_stopped_flow

    if not is_stopped_flow(data.dataset):
        raise ConfigError(f"baseline 'curve-fit' fits stopped-flow traces; the dataset is {data.dataset!r}, "
                          f"expected {PREFIX}PATH")


BASELINES: dict[str, tuple[BaselineFn, Callable[[DataConfig], None]]] = {
    "curve-fit": (_curve_fit, _curve_fit_check),
}
"""name -> (run, check that it applies to a data config)."""


def register_baseline(name: str, fn: BaselineFn, check: Callable[[DataConfig], None] = lambda d: None) -> None:
    """Add a baseline (replacing one of the same name)."""
    BASELINES[name] = (fn, check)


def get_baseline(name: str) -> BaselineFn:
    check_baseline_name(name)
    return BASELINES[name][0]


def check_baseline_name(name: str) -> None:
    if name not in BASELINES:
        raise ConfigError(f"baseline {name!r} is not one of {', '.join(sorted(BASELINES))}")


def check_baseline(name: str, data: DataConfig) -> None:
    """ConfigError when ``name`` is unknown or does not apply to ``data``."""
    check_baseline_name(name)
    BASELINES[name][1](data)
