"""Shared test setup.

Real data files live in ``$LOWRANK_DATA``, by default the ``shared/datasets``
folder beside the repository (CI clones the repo with ``shared/`` next to it).
The variable is set for the whole session so the library finds the data the
same way a user's run would. The decoded-array cache is pointed at a
temporary folder so no test ever writes to ``~/.cache``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# One math thread per test process (subprocesses inherit it): the models are tiny, and
# two OpenMP threads on a loaded 2-core machine spin against each other (measured 25x
# slower steps here). Speed figures live in benchmarks/, not in tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

DATASETS_DIR = Path(os.environ.get("LOWRANK_DATA")
                    or Path(__file__).resolve().parents[2] / "shared" / "datasets")
os.environ.setdefault("LOWRANK_DATA", str(DATASETS_DIR))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """Folder of the real datasets (``mnist/``, ``hoda/``, ``imdb/``)."""
    return DATASETS_DIR


@pytest.fixture(scope="session", autouse=True)
def _session_array_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``LOWRANK_CACHE`` at a session temporary folder (never ``~/.cache``)."""
    old = os.environ.get("LOWRANK_CACHE")
    os.environ["LOWRANK_CACHE"] = str(tmp_path_factory.mktemp("lowrank-cache"))
    yield
    if old is None:
        os.environ.pop("LOWRANK_CACHE", None)
    else:
        os.environ["LOWRANK_CACHE"] = old


@pytest.fixture(scope="session")
def lowrank_cli():
    """``run(args, cwd, env=None, pythonpath=(), timeout=300, background=False)``: ``python -m lowrank ARGS``.

    It runs in ``cwd`` with ``LOWRANK_DATA`` set to the real datasets, ``LOWRANK_CACHE``
    at ``cwd/cache``, ``LOWRANK_DB`` at ``cwd/default.db`` (tests pass their own ``--db``;
    nothing is ever written under the repository), one math thread, no ``$LOWRANK_PLUGINS``
    unless ``env`` gives it, and the ``pythonpath`` folders put in front of ``$PYTHONPATH``;
    ``env`` entries override the rest. Returns the ``subprocess.CompletedProcess`` (text
    mode); with ``background=True`` the started ``subprocess.Popen`` instead (read it with
    ``communicate()``), so independent commands can run side by side.
    """
    import subprocess
    import sys

    def run(args, cwd, env=None, pythonpath=(), timeout=300, background=False):
        e = {k: v for k, v in os.environ.items() if k != "LOWRANK_PLUGINS"}
        path = [str(p) for p in pythonpath] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else [])
        e.update({"LOWRANK_DATA": str(DATASETS_DIR), "LOWRANK_CACHE": str(Path(cwd) / "cache"),
                  "LOWRANK_DB": str(Path(cwd) / "default.db"), "OMP_NUM_THREADS": "1"})
        if path:
            e["PYTHONPATH"] = os.pathsep.join(path)
        e.update(env or {})
        cmd = [sys.executable, "-m", "lowrank", *map(str, args)]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=e)
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout)

    return run


@pytest.fixture
def stop_stepper(monkeypatch):
    """``with stop_stepper(at_step, exc=KeyboardInterrupt):`` every stepper the run code builds
    inside raises ``exc`` before its step ``at_step`` (KeyboardInterrupt: as Ctrl-C would)."""
    from lowrank import run as run_mod

    @contextlib.contextmanager
    def stop(at_step: int, exc: type[BaseException] = KeyboardInterrupt):
        real = run_mod.build_stepper

        def patched(model, cfg, total):
            stepper = real(model, cfg, total)
            step = stepper.step

            def stopping(*a, **k):
                if stepper.steps == at_step:
                    raise exc
                return step(*a, **k)
            stepper.step = stopping
            return stepper
        with monkeypatch.context() as m:
            m.setattr(run_mod, "build_stepper", patched)
            yield
    return stop


@pytest.fixture
def store(tmp_path):
    """A fresh results database in the test's folder."""
    from lowrank.store import Store

    s = Store(tmp_path / "db.sqlite")
    yield s
    s.close()
