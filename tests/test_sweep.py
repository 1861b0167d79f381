"""Test matrices: grid expansion, stable keys, kill-and-resume without repeats, parallel workers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowrank.sweep_matrix import load_matrix
from lowrank.store import Store
from lowrank.sweep import plan_sweep, run_sweep, sweep_runs
from lowrank.sweep_report import write_sweep_report

MATRIX = """
name = "tiny"
[base]
layers = [784, 8, 10]
[base.data]
dataset = "mnist"
test_size = 200
[matrix]
method = ["dense", "vanilla"]
optimizer = ["sgd", "adam"]
rank = [2, 4]
epochs = [2]
batch_size = [50]
lr = [0.01]
train_size = [300]
regularization = ["none", "l1+l2"]
"""  # dense ignores rank: 2 x 2 x 2 dense points merge into 4; 8 vanilla points: 12 in all


def write(tmp_path: Path, text: str = MATRIX) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


def test_grid_keys_are_stable_and_dense_rank_merged(tmp_path):
    m = load_matrix(write(tmp_path))
    assert len(m.points) == 12 and len(m.skipped) == 4
    keys = {p.key for p in m.points}
    assert "batch_size=50, epochs=2, lr=0.01, method=dense, optimizer=sgd, rank=-, regularization=none, " \
           "train_size=300" in keys
    reordered = MATRIX.replace('method = ["dense", "vanilla"]\noptimizer = ["sgd", "adam"]',
                               'optimizer = ["adam", "sgd"]\nmethod = ["vanilla", "dense"]')
    assert {p.key for p in load_matrix(write(tmp_path, reordered)).points} == keys
    p = next(p for p in m.points if p.values["regularization"] == "l1+l2")
    assert p.config.optim.l1 == 1e-5 and p.config.optim.l2 == 1e-4
    v = next(p for p in m.points if p.values["method"] == "vanilla")
    assert v.config.method.rank in (2, 4) and v.config.data.train_size == 300


def test_widths_and_variants(tmp_path):
    text = """
[base]
layers = [784, 5, 10]
[matrix]
widths = [[32], [64, 32]]
method = ["fast"]
[variants.fast]
method = { method = "dlrt", integrator = "parallel", adaptive = true }
"""
    m = load_matrix(write(tmp_path, text))
    assert [p.config.layers for p in m.points] == [[784, 32, 10], [784, 64, 32, 10]]
    assert all(p.config.method.integrator == "parallel" and p.config.method.adaptive for p in m.points)


def _check_complete(store: Store, m) -> dict[str, list[dict]]:
    by_key = sweep_runs(store, m.name)
    assert set(by_key) == {p.key for p in m.points}
    for key, rows in by_key.items():
        live = [r for r in rows if r["run_dir"]]
        assert len(live) == 1, f"{key}: repeated runs {[r['id'] for r in live]}"
        assert live[0]["status"] == "finished"
        assert [e["epoch"] for e in store.epochs(live[0]["id"])] == [0, 1]
    return by_key


def test_interrupted_sweep_resumes_without_repeats(tmp_path, monkeypatch):
    """Deterministic interrupt mid-epoch of the 5th run (as Ctrl-C would), then resume in-process."""
    m = load_matrix(write(tmp_path))
    db = tmp_path / "db.sqlite"
    from lowrank import run as run_mod

    real = run_mod.build_stepper
    calls = {"n": 0}

    def interrupting(model, cfg, total):
        stepper = real(model, cfg, total)
        calls["n"] += 1
        if calls["n"] == 5:
            step = stepper.step

            def step_or_stop(*a, **k):
                if stepper.steps == 9:  # mid-epoch 2 (6 steps per epoch)
                    raise KeyboardInterrupt
                return step(*a, **k)
            stepper.step = step_or_stop
        return stepper

    monkeypatch.setattr(run_mod, "build_stepper", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(m, db_path=db, runs_dir=tmp_path / "runs", workers=1)
    store = Store(db)
    plan = plan_sweep(m, store)
    assert (plan.count("done"), plan.count("resume"), plan.count("start")) == (4, 1, 7)
    interrupted = next(s.run_id for s in plan.states if s.action == "resume")
    assert store.run(interrupted)["status"] == "interrupted"
    monkeypatch.setattr(run_mod, "build_stepper", real)
    results = []
    run_sweep(m, db_path=db, runs_dir=tmp_path / "runs", workers=1, on_result=results.append)
    assert len(results) == 8 and sum(r["resumed"] for r in results) == 1
    assert next(r for r in results if r["resumed"])["run_id"] == interrupted
    by_key = _check_complete(store, m)
    assert len(store.runs(sweep="tiny")) == 12 == sum(len(v) for v in by_key.values())
    again = []
    run_sweep(m, db_path=db, runs_dir=tmp_path / "runs", workers=1, on_result=again.append)
    assert again == [] and len(store.runs(sweep="tiny")) == 12  # nothing repeated
    files = write_sweep_report(m, store, tmp_path / "report")
    html = files.html.read_text()
    assert html.count("data:image/png;base64,") >= 6  # C(4 varying axes, 2) heatmaps
    assert "Every grid point" in html and "mean test accuracy" in html
    store.close()


def _finished(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM runs WHERE status = 'finished'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_sweep_process_resumes_in_parallel(tmp_path):
    """SIGKILL a real `lowrank sweep` process halfway; the rerun (2 workers) completes every point once."""
    path = write(tmp_path)
    db = tmp_path / "db.sqlite"
    env = {**os.environ, "LOWRANK_DB": str(db)}
    cmd = [sys.executable, "-m", "lowrank", "sweep", str(path), "--runs-dir", str(tmp_path / "runs"),
           "--out", str(tmp_path / "rep")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while _finished(db) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished(db)
    assert 4 <= before < 12, f"not killed halfway: {before} finished"
    p = subprocess.run([*cmd, "--workers", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"12 grid points: {before} done" in p.stdout
    store = Store(db)
    _check_complete(store, load_matrix(path))
    store.close()
    assert (tmp_path / "rep" / "report.html").exists()
