"""Train every run of an experiment file into one results database.

:func:`run_experiment` trains the runs of an :class:`~lowrank.experiment.Experiment`
one after the other with :func:`lowrank.train.fit` and the shared
:class:`~lowrank.store.Store`; each run is tagged ``sweep = "compare:<name>"``,
``sweep_key = <label>``. Datasets are loaded once per distinct data config. A run
whose method is not available (its module missing or not importable) is skipped, and
a run that fails is recorded as failed; both are reported and the others go on.
The report itself is written by :mod:`lowrank.report` from the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .data import Splits, load_dataset
from .errors import ConfigError
from .experiment import Experiment, RunSpec
from .store import Store

__all__ = ["RunOutcome", "DataCache", "run_experiment", "run_baseline", "default_config_path",
           "experiment_tag", "outcome_notes"]

OnStart = Callable[[int, RunSpec], None]
OnEpoch = Callable[[RunSpec, int, dict[str, Any]], None]
OnDone = Callable[["RunOutcome"], None]


@dataclass
class RunOutcome:
    """What became of one run of an experiment."""

    label: str
    method: str
    run_id: int | None
    status: str
    """finished, diverged or failed."""
    error: str | None
    wall_time: float
    """Seconds spent in ``fit`` (training, evaluation, checkpoints)."""


class DataCache:
    """Loads each distinct (data config, seed) once per process."""

    def __init__(self) -> None:
        self._cache: dict[str, Splits] = {}

    def get(self, cfg: TrainConfig) -> Splits:
        key = json.dumps([cfg.data.__dict__, cfg.seed], sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = load_dataset(cfg.data, seed=cfg.seed)
        return self._cache[key]


def default_config_path(name: str = "compare-default.toml") -> Path:
    """``configs/<name>`` of the current folder, else of the source checkout."""
    candidates = [Path.cwd() / "configs" / name, Path(__file__).resolve().parents[2] / "configs" / name]
    for p in candidates:
        if p.exists():
            return p
    raise ConfigError(f"no {name} in {' or '.join(str(c.parent) for c in candidates)}; pass --config FILE")


def experiment_tag(exp: Experiment) -> str:
    """The ``sweep`` column value of an experiment's runs."""
    return f"compare:{exp.name}"


def run_experiment(exp: Experiment, *, store: Store, runs_dir: str | Path = "runs",
                   data: DataCache | None = None, on_start: OnStart | None = None,
                   on_epoch: OnEpoch | None = None, on_done: OnDone | None = None) -> list[RunOutcome]:
    """Train every run of ``exp``; returns one outcome per run, in file order.

    ``KeyboardInterrupt`` propagates (the interrupted run keeps its checkpoint and can be
    continued with ``lowrank train --resume``); any other error of one run is recorded.
    """
    from .run import train_run

    data = data or DataCache()
    tag = experiment_tag(exp)
    outcomes = []
    for i, spec in enumerate(exp.runs):
        if on_start is not None:
            on_start(i, spec)
        method = spec.config.method.method
        t0 = time.perf_counter()
        before = _last_id(store)
        epoch_cb = (lambda e, row, s=spec: on_epoch(s, e, row)) if on_epoch else None
        try:
            res = train_run(spec.config, store=store, runs_dir=runs_dir, data=data.get(spec.config),
                            on_epoch=epoch_cb, sweep=tag, sweep_key=spec.label)
            outcome = RunOutcome(spec.label, method, res.run_id, "finished", None, time.perf_counter() - t0)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken method must not stop the comparison
            run_id = _mark_failed(store, tag, spec.label, before)
            status = store.run(run_id)["status"] if run_id else "failed"
            msg = str(e).splitlines()[0] if str(e) else ""
            outcome = RunOutcome(spec.label, method, run_id, status, f"{type(e).__name__}: {msg}",
                                 time.perf_counter() - t0)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    for name in exp.baselines:
        outcome = run_baseline(exp, name, store=store)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes


def run_baseline(exp: Experiment, name: str, *, store: Store) -> RunOutcome:
    """Run baseline ``name`` (:mod:`lowrank.baselines`) on ``exp``'s base data config and seed; store it as a
    finished run (method = the baseline's name, no run folder) tagged like the experiment's runs."""
    from .baselines import get_baseline

    cfg = TrainConfig.from_dict(exp.base)
    t0 = time.perf_counter()
    try:
        res = get_baseline(name)(cfg.data, cfg.seed)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # like a failed run: recorded, the comparison goes on
        msg = str(e).splitlines()[0] if str(e) else ""
        return RunOutcome(name, name, None, "failed", f"{type(e).__name__}: {msg}", time.perf_counter() - t0)
    config = cfg.to_dict()
    config["method"] = {"method": name}
    config["name"] = res.label
    tag = experiment_tag(exp)
    run_id = store.create_run(config, "", name=res.label, sweep=tag, sweep_key=res.label)
    store.set_status(run_id, "finished", {**res.summary, "notes": res.notes})
    return RunOutcome(res.label, name, run_id, "finished", None, time.perf_counter() - t0)


def outcome_notes(outcomes: list[RunOutcome]) -> list[str]:
    """One line per run that did not finish (for the report)."""
    return [f"{o.label}: {o.status}" + (f" — {o.error}" if o.error else "")
            for o in outcomes if o.status != "finished"]


def _last_id(store: Store) -> int:
    runs = store.runs()
    return runs[-1]["id"] if runs else 0


def _mark_failed(store: Store, tag: str, label: str, after_id: int) -> int | None:
    """The run ``fit`` created for ``label`` (if any); left 'running' by an early error, it is marked failed."""
    rows = [r for r in store.runs(sweep=tag) if r["sweep_key"] == label and r["id"] > after_id]
    if not rows:
        return None
    row = rows[-1]
    if row["status"] == "running":
        store.set_status(row["id"], "failed")
    return int(row["id"])
