"""Run a test matrix: one stored run per grid point, resumable, in parallel processes.

Resumption rules (per grid point, by its stable key; see :mod:`lowrank.matrix`):

- a run of the point that is ``finished`` or ``diverged`` counts as done: skipped;
- else the newest run of the point that has a run folder (``running``, ``interrupted``
  or ``failed``: left by a killed or broken sweep) is continued with
  :func:`lowrank.run.resume_run` from its last checkpoint, in the same database row;
- else a new run is started with :func:`lowrank.run.train_run`.

So a killed sweep, started again, never repeats a finished run and never loses one.
One sweep driver at a time per database and sweep name is enforced with a lock file
(``<db>.<name>.lock``), so a ``running`` row found at start is always a leftover.

Parallelism: up to ``workers`` processes (``spawn``), each with its own
:class:`~lowrank.store.Store` (SQLite in WAL mode) and dataset cache, each using
``cpu_count // workers`` torch threads. A worker receiving SIGTERM (or losing its
parent, on Linux) stops like Ctrl-C: the trainer checkpoints the run mid-epoch and
marks it ``interrupted``. With ``workers == 1`` runs execute in the calling process.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compare import DataCache
from .config import TrainConfig
from .errors import LowRankError, RunLockedError
from .sweep_matrix import GridPoint, Matrix
from .store import Store

__all__ = ["PointState", "SweepPlan", "plan_sweep", "run_sweep", "sweep_runs", "TERMINAL"]

#: Statuses after which a grid point is done.
TERMINAL = ("finished", "diverged")

OnResult = Callable[[dict[str, Any]], None]


@dataclass
class PointState:
    """What the database holds for one grid point."""

    point: GridPoint
    action: str
    """done, resume or start."""
    run_id: int | None
    reason: str | None = None


@dataclass
class SweepPlan:
    """Every grid point and what a run of the sweep will do with it."""

    matrix: Matrix
    states: list[PointState] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(s.action == action for s in self.states)


def sweep_runs(store: Store, name: str) -> dict[str, list[dict[str, Any]]]:
    """Runs of sweep ``name`` grouped by key, oldest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in store.runs(sweep=name):
        out.setdefault(r["sweep_key"], []).append(r)
    return out


def plan_sweep(matrix: Matrix, store: Store) -> SweepPlan:
    """Decide, from the database, which points are done, to resume or to start."""
    by_key = sweep_runs(store, matrix.name)
    plan = SweepPlan(matrix)
    for p in matrix.points:
        rows = by_key.get(p.key, [])
        done = [r for r in rows if r["status"] in TERMINAL]
        if done:
            plan.states.append(PointState(p, "done", done[-1]["id"]))
            continue
        live = [r for r in rows if r["run_dir"]]
        plan.states.append(PointState(p, "resume", live[-1]["id"]) if live else PointState(p, "start", None))
    return plan


def _lock(db_path: Path, name: str):
    """An exclusive, non-blocking lock on ``<db>.<name>.lock`` (held while the returned file is open)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    f = open(db_path.with_name(f"{db_path.name}.{safe}.lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise LowRankError(f"sweep {name!r} is already running on {db_path} (another `lowrank sweep` holds "
                           f"the lock); wait for it or stop it first") from None
    return f


def run_sweep(matrix: Matrix, *, db_path: str | Path, runs_dir: str | Path = "runs", workers: int = 1,
              on_result: OnResult | None = None) -> SweepPlan:
    """Run every grid point that is not done yet; returns the plan it followed.

    ``on_result`` is called in this process with one dict per point run: ``key``,
    ``run_id``, ``status``, ``test_acc``, ``error``, ``seconds``, ``resumed``.
    ``KeyboardInterrupt`` stops the workers (each checkpoints its run) and propagates.
    """
    db_path = Path(db_path)
    lock = _lock(db_path, matrix.name)
    try:
        store = Store(db_path)
        _abandon_leftovers(store, matrix.name)
        plan = plan_sweep(matrix, store)
        tasks = [_task(s, matrix.name, str(runs_dir)) for s in plan.states if s.action in ("resume", "start")]
        if not tasks:
            return plan
        if workers <= 1 or len(tasks) == 1:
            data = DataCache()
            for t in tasks:
                res = _execute(store, data, t)
                if on_result is not None:
                    on_result(res)
        else:
            _run_parallel(tasks, str(db_path), min(workers, len(tasks)), on_result)
        store.close()
        return plan
    finally:
        lock.close()


def _abandon_leftovers(store: Store, name: str) -> None:
    """Rows a killed sweep left before they got a run folder hold nothing: mark them abandoned."""
    for rows in sweep_runs(store, name).values():
        for r in rows:
            if not r["run_dir"] and r["status"] == "running":
                store.set_status(r["id"], "abandoned")


def _task(state: PointState, sweep: str, runs_dir: str) -> dict[str, Any]:
    return {"key": state.point.key, "config": state.point.config.to_dict(), "resume_id": state.run_id,
            "sweep": sweep, "runs_dir": runs_dir}


def _execute(store: Store, data: DataCache, task: dict[str, Any]) -> dict[str, Any]:
    """Run (or continue) one grid point; errors other than interrupts become a 'failed' result."""
    from .run import resume_run, train_run

    t0 = time.perf_counter()
    cfg = TrainConfig.from_dict(task["config"])
    run_id = task["resume_id"]
    out = {"key": task["key"], "run_id": run_id, "resumed": run_id is not None, "error": None, "test_acc": None}
    try:
        if run_id is not None:
            res = resume_run(run_id, store=store, data=data.get(cfg))
        else:
            res = train_run(cfg, store=store, runs_dir=task["runs_dir"], data=data.get(cfg),
                            sweep=task["sweep"], sweep_key=task["key"])
        out.update(run_id=res.run_id, status="finished", test_acc=res.summary.get("test_acc"))
    except KeyboardInterrupt:
        raise
    except RunLockedError as e:  # another process trains this point: leave it to that process
        out.update(status="held", error=str(e).splitlines()[0])
    except Exception as e:
        rows = [r for r in store.runs(sweep=task["sweep"]) if r["sweep_key"] == task["key"]]
        row = rows[-1] if rows else None
        if row is not None and row["status"] == "running":  # failed before the trainer's own handler
            store.set_status(row["id"], "failed")
        out.update(run_id=row["id"] if row else run_id,
                   status=store.run(row["id"])["status"] if row else "failed",
                   error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    out["seconds"] = time.perf_counter() - t0
    return out


# -- worker processes ---------------------------------------------------------------------------------

def _run_parallel(tasks: list[dict[str, Any]], db_path: str, workers: int, on_result: OnResult | None) -> None:
    ctx = mp.get_context("spawn")
    task_q: Any = ctx.Queue()
    result_q: Any = ctx.Queue()
    for t in tasks:
        task_q.put(t)
    for _ in range(workers):
        task_q.put(None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker, args=(db_path, threads, task_q, result_q), name=f"lowrank-sweep-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()
    received = 0
    try:
        while received < len(tasks):
            try:
                res = result_q.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break  # every worker died: what they held stays resumable
                continue
            received += 1
            if on_result is not None:
                on_result(res)
        for p in procs:
            p.join()
    except BaseException:
        _stop(procs)
        raise


def _stop(procs: list[Any]) -> None:
    """SIGTERM every worker (each checkpoints its run), then wait; SIGKILL stragglers after 60 s."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 60
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (so no orphan keeps a run busy)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker(db_path: str, threads: int, task_q: Any, result_q: Any) -> None:
    import torch

    signal.signal(signal.SIGTERM, _on_sigterm)
    _die_with_parent()
    torch.set_num_threads(threads)
    store = Store(db_path)
    data = DataCache()
    try:
        while (task := task_q.get()) is not None:
            result_q.put(_execute(store, data, task))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
