"""Run administration: the run lock, `lowrank runs rm` / `prune`, listings of runs in every
state, and what a divergence says about the checkpoint it leaves."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowrank.checkpoint import read_checkpoint
from lowrank.cli import main
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.errors import TrainingDivergedError
from lowrank.errors import RunLockedError
from lowrank.recorder import RunLock, lock_holder
from lowrank.registry import method_config
from lowrank.run import resume_run, train_run
from lowrank.train import ForcedInterrupt

SMALL = dict(train_size=300, test_size=100)  # 6 steps of 50 per epoch


def small_cfg(**kw) -> TrainConfig:
    cfg = TrainConfig(data=DataConfig(dataset="mnist", **SMALL), optim=OptimConfig(optimizer="adam", lr=2e-3),
                      method=method_config("dense"), layers=[784, 16, 10], epochs=2, batch_size=50, seed=1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def data():
    from lowrank.data import load_dataset
    return load_dataset(small_cfg().data, seed=1)


def _interrupted_run(store, tmp_path, data, stop_stepper, at_step: int = 8) -> dict:
    with stop_stepper(at_step):
        with pytest.raises(KeyboardInterrupt):
            train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=data)
    run = store.runs()[-1]
    assert run["status"] == "interrupted"
    return run


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _rows(db: Path, run_id: int) -> dict[str, int]:
    with sqlite3.connect(db) as c:
        return {"runs": c.execute("SELECT COUNT(*) FROM runs WHERE id = ?", (run_id,)).fetchone()[0],
                **{t: c.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id = ?", (run_id,)).fetchone()[0]
                   for t in ("epochs", "ranks")}}


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# -- the run lock ---------------------------------------------------------------------------------------

SLOW_MODEL = """
import time
from pathlib import Path
from torch import nn, is_grad_enabled

FLAG = Path(__file__).with_name("hold")


class Held(nn.Module):
    '''784 -> 16 -> 10; while the file `hold` exists, training steps after the first epoch wait.'''

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
        self.steps = 0

    def forward(self, x):
        if self.training and is_grad_enabled():
            self.steps += 1
            while self.steps > 4 and FLAG.exists():
                time.sleep(0.05)
        return self.net(x)


def held_mlp():
    return Held()
"""


def test_second_process_cannot_train_a_running_run_until_the_first_dies(tmp_path, lowrank_cli):
    (tmp_path / "heldmodel.py").write_text(SLOW_MODEL)
    (tmp_path / "hold").write_text("")
    db = tmp_path / "db.sqlite"
    first = lowrank_cli(["train", "--dataset", "mnist", "--train-size", "200", "--test-size", "100",
                         "--model", "heldmodel:held_mlp", "--epochs", "3", "--batch-size", "50", "--quiet",
                         "--db", db], tmp_path, background=True)
    try:
        deadline = time.time() + 240
        run = None
        while time.time() < deadline and first.poll() is None:
            if db.exists():
                with sqlite3.connect(db) as c:
                    c.row_factory = sqlite3.Row
                    row = c.execute("SELECT id, status, run_dir, (SELECT COUNT(*) FROM epochs) AS n FROM runs"
                                    ).fetchone()
                if row is not None and row["status"] == "running" and row["n"] >= 1 and row["run_dir"] \
                        and lock_holder(row["run_dir"]) == first.pid:
                    run = dict(row)
                    break
            time.sleep(0.2)
        assert run is not None, f"the first training never got going: {first.communicate(timeout=30)}"
        run_dir = Path(run["run_dir"])
        assert (run_dir / ".lock").read_text().strip() == str(first.pid)

        second = lowrank_cli(["train", "--resume", "1", "--db", db], tmp_path)
        assert first.poll() is None  # the refusal came while the first still trained
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lowrank: error: run 1 is being trained by process "
                                                       f"{first.pid}"), second.stderr
        # neither rm nor prune touches it while it trains
        rm = lowrank_cli(["runs", "rm", "1", "--db", db], tmp_path)
        assert rm.returncode == 1 and "skipped run 1 (running, dense on mnist" in rm.stdout, rm.stderr
        assert f"process {first.pid} is training it" in rm.stdout
        prune = lowrank_cli(["runs", "prune", "--status", "running", "--db", db], tmp_path)
        assert prune.returncode == 0 and "skipped run 1" in prune.stdout and "deleted 0 runs" in prune.stdout
        assert _rows(db, 1)["runs"] == 1 and (run_dir / "checkpoint.pt").is_file()
        assert first.poll() is None
    finally:
        first.kill()  # SIGKILL: no handler runs, the row stays 'running'
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL

    listing = lowrank_cli(["runs", "--db", db], tmp_path)
    assert "run 1: marked running, but no process is training it" in listing.stdout, listing.stdout
    (tmp_path / "hold").unlink()
    third = lowrank_cli(["train", "--resume", "1", "--db", db, "--json"], tmp_path)
    assert third.returncode == 0, third.stderr
    out = json.loads(third.stdout)
    assert out["run_id"] == 1 and [h["epoch"] for h in out["history"]] == [0, 1, 2]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT status FROM runs WHERE id = 1").fetchone()[0] == "finished"
        assert [r[0] for r in c.execute("SELECT epoch FROM epochs WHERE run_id = 1 ORDER BY epoch")] == [0, 1, 2]
    assert lock_holder(run_dir) is None


def test_a_lock_file_left_by_a_dead_process_is_taken_over(store, tmp_path, data, stop_stepper):
    run = _interrupted_run(store, tmp_path, data, stop_stepper)
    lock = Path(run["run_dir"]) / ".lock"
    dead = _dead_pid()
    lock.write_text(f"{dead}\n")  # the file of a killed trainer: its flock went with it
    assert lock_holder(run["run_dir"]) is None
    seen = []
    res = resume_run(run["id"], store=store, data=data,
                     on_epoch=lambda e, row: seen.append(lock_holder(run["run_dir"])))
    assert seen == [os.getpid()]  # held by this process while it trained (one epoch was left)
    assert store.run(run["id"])["status"] == "finished" and len(res.history) == 2
    assert lock.read_text().strip() == str(os.getpid())
    assert lock_holder(run["run_dir"]) is None  # released at the end


def test_resume_of_a_locked_run_is_refused_before_anything_is_written(store, tmp_path, data, stop_stepper):
    run = _interrupted_run(store, tmp_path, data, stop_stepper)
    ckpt = Path(run["run_dir"]) / "checkpoint.pt"
    before = (ckpt.stat().st_mtime_ns, store.epochs(run["id"]), (Path(run["run_dir"]) / "metrics.jsonl").read_text())
    holder = RunLock.acquire(run["run_dir"], run["id"])  # another open file: conflicts like another process
    try:
        with pytest.raises(RunLockedError, match=rf"^run {run['id']} is being trained by process {os.getpid()} "):
            resume_run(run["id"], store=store, data=data)
        assert store.run(run["id"])["status"] == "interrupted"
        assert (ckpt.stat().st_mtime_ns, store.epochs(run["id"]),
                (Path(run["run_dir"]) / "metrics.jsonl").read_text()) == before
    finally:
        holder.release()
    resume_run(run["id"], store=store, data=data)
    assert store.run(run["id"])["status"] == "finished"


def test_new_run_holds_its_lock_while_it_trains(store, tmp_path, data):
    seen = []
    res = train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=data,
                    on_epoch=lambda e, row: seen.append(lock_holder(store.run(1)["run_dir"])))
    assert seen == [os.getpid(), os.getpid()]
    assert lock_holder(res.run_dir) is None
    assert (res.run_dir / ".lock").read_text().strip() == str(os.getpid())


def test_second_interrupt_leaves_the_run_interrupted_not_running(store, tmp_path, data, stop_stepper):
    with stop_stepper(8, ForcedInterrupt):  # stopped at once in epoch 2: no checkpoint of its own
        with pytest.raises(ForcedInterrupt):
            train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=data)
    run = store.run(1)
    assert run["status"] == "interrupted"
    assert lock_holder(run["run_dir"]) is None
    assert read_checkpoint(run["run_dir"])["loop"]["epoch"] == 1
    resume_run(1, store=store, data=data)
    assert store.run(1)["status"] == "finished"


def test_new_run_never_reuses_a_folder_another_database_left(store, tmp_path, data):
    old = tmp_path / "runs" / "0001-dense-mnist"
    old.mkdir(parents=True)
    (old / "checkpoint.pt").write_bytes(b"another database's run")
    res = train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=data)
    assert res.run_id == 1 and res.run_dir.name == "0001-dense-mnist-2"
    assert (old / "checkpoint.pt").read_bytes() == b"another database's run"
    assert Path(store.run(1)["run_dir"]) == res.run_dir.resolve()


# -- divergence messages -------------------------------------------------------------------------------------

def _poisonable(data):
    from lowrank.data import ArrayDataset, Splits

    x = data.train.x.clone()
    return x, Splits(train=ArrayDataset(x, data.train.y), test=data.test, val=None, name="mnist", num_classes=10,
                     input_dim=784, sources=[], mean=0.0, std=1.0)


def test_divergence_after_an_epoch_names_the_checkpoint_kept(store, tmp_path, data):
    x, poisoned = _poisonable(data)

    def poison(epoch, row):
        x[:] = float("nan")  # the trainer batches from this very tensor
    with pytest.raises(TrainingDivergedError) as info:
        train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=poisoned, on_epoch=poison)
    run = store.run(1)
    msg = str(info.value)
    assert msg.startswith("loss became nan at epoch 2, batch 1")
    assert msg.endswith(f"; the checkpoint of epoch 1 is kept in {run['run_dir']}")
    assert run["status"] == "diverged" and read_checkpoint(run["run_dir"])["loop"]["epoch"] == 1
    assert lock_holder(run["run_dir"]) is None


def test_an_epoch_with_an_infinite_test_loss_is_not_a_good_checkpoint(store, tmp_path, data):
    from lowrank.data import ArrayDataset, Splits

    test_x = data.test.x.clone()
    poisoned = Splits(train=data.train, test=ArrayDataset(test_x, data.test.y), val=None, name="mnist",
                      num_classes=10, input_dim=784, sources=[], mean=0.0, std=1.0)

    def poison(epoch, row):
        test_x[:] = float("inf")  # training stays finite; the next epoch's test loss does not
    with pytest.raises(TrainingDivergedError) as info:
        train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=poisoned, on_epoch=poison)
    run = store.run(1)
    assert str(info.value).startswith("test loss became nan at the end of epoch 2")
    assert str(info.value).endswith(f"; the checkpoint of epoch 1 is kept in {run['run_dir']}")
    assert run["status"] == "diverged" and read_checkpoint(run["run_dir"])["loop"]["epoch"] == 1
    assert [r["epoch"] for r in store.epochs(1)] == [0]


def test_divergence_in_the_first_epoch_says_no_checkpoint_was_written(store, tmp_path, data):
    x, poisoned = _poisonable(data)
    x[:] = float("nan")
    with pytest.raises(TrainingDivergedError) as info:
        train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=poisoned)
    msg = str(info.value)
    assert "at epoch 1, batch 1" in msg
    assert msg.endswith("; no checkpoint was written (it diverged in the first epoch)")
    run = store.run(1)
    assert run["status"] == "diverged" and not (Path(run["run_dir"]) / "checkpoint.pt").exists()


def test_divergence_after_a_resume_names_the_checkpoint_it_resumed_from(store, tmp_path, data, stop_stepper):
    run = _interrupted_run(store, tmp_path, data, stop_stepper, at_step=3)  # mid-epoch 1, 3 batches done
    x, poisoned = _poisonable(data)
    x[:] = float("nan")
    with pytest.raises(TrainingDivergedError) as info:
        resume_run(run["id"], store=store, data=poisoned)
    assert str(info.value).endswith(f"; the checkpoint at epoch 1, batch 3 (where it was interrupted) is kept in "
                                    f"{run['run_dir']}")


# -- fake runs for rm / prune / listings ------------------------------------------------------------------------

def _fake_run(store, runs_dir: Path, status: str, *, epochs: int = 0, summary=None, folder: bool = True,
              regression: bool = False, extra_files=(), name=None) -> int:
    """A run row in ``status`` with ``epochs`` epoch rows (each with two rank rows) and a folder of run files."""
    cfg = small_cfg(name=name)
    if regression:
        cfg.data.dataset = "targets.csv"
    d = cfg.to_dict()
    run_id = store.create_run(d, "", name=name)
    if folder:
        run_dir = runs_dir / f"{run_id:04d}-dense-{'targets.csv' if regression else 'mnist'}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(d))
        (run_dir / "metrics.jsonl").write_text("")
        if epochs:
            (run_dir / "checkpoint.pt").write_bytes(b"weights")
        for f in extra_files:
            (run_dir / f).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / f).write_text("mine")
        store.set_run_dir(run_id, str(run_dir.resolve()))
    for e in range(epochs):
        if regression:
            metrics = {"train_loss": 0.5, "train_acc": None, "test_loss": 0.4, "test_acc": None, "epoch_time": 0.1,
                       "test_mae": 0.31, "test_rmse": 0.4, "test_r2": 0.7}
        else:
            metrics = {"train_loss": 1.0 / (e + 1), "train_acc": 0.5, "test_loss": 1.1, "test_acc": 0.6,
                       "epoch_time": 0.1}
        store.log_epoch(run_id, e, metrics, {k: v for k, v in metrics.items() if k.startswith("test_")
                                             and k not in ("test_loss", "test_acc")},
                        {"0": {"rank": 8}, "2": {"rank": 5}})
    store.set_status(run_id, status, summary)
    return run_id


CLASSIFICATION_SUMMARY = {"test_loss": 0.9, "test_acc": 0.7531, "epochs": 2, "epoch_time": 0.1,
                          "hidden_weights": {"ratio": 1.0}}
REGRESSION_SUMMARY = {"test_loss": 0.2, "test_acc": None, "test_mae": 0.3125, "test_rmse": 0.41, "test_r2": None,
                      "epochs": 2, "epoch_time": 0.1}


def test_rm_deletes_rows_in_every_table_and_only_lowrank_folders(store, tmp_path, capsys):
    runs = tmp_path / "runs"
    plain = _fake_run(store, runs, "finished", epochs=2, summary=CLASSIFICATION_SUMMARY)
    other = _fake_run(store, runs, "failed", epochs=1)
    notes = _fake_run(store, runs, "interrupted", epochs=1, extra_files=["notes.txt"])
    sub = _fake_run(store, runs, "diverged", epochs=1, extra_files=["plots/a.png"])
    no_folder = _fake_run(store, runs, "failed", folder=False)
    gone = _fake_run(store, runs, "failed", epochs=1)
    no_config = _fake_run(store, runs, "failed", epochs=1)
    gone_dir, no_config_dir = Path(store.run(gone)["run_dir"]), Path(store.run(no_config)["run_dir"])
    for f in gone_dir.iterdir():
        f.unlink()
    gone_dir.rmdir()
    (no_config_dir / "config.json").unlink()
    assert _rows(store.path, plain) == {"runs": 1, "epochs": 2, "ranks": 4}
    dirs = {rid: Path(store.run(rid)["run_dir"]) for rid in (plain, other, notes, sub)}

    rc, out, err = _cli(capsys, "runs", "rm", plain, notes, sub, no_folder, gone, no_config, "--db", store.path)
    assert rc == 0, err
    for rid in (plain, notes, sub, no_folder, gone, no_config):
        assert _rows(store.path, rid) == {"runs": 0, "epochs": 0, "ranks": 0}, rid
    assert _rows(store.path, other) == {"runs": 1, "epochs": 1, "ranks": 2}
    assert not dirs[plain].exists() and dirs[other].is_dir()
    # kept exactly as it was: no lock file left behind by the deletion
    assert sorted(p.name for p in dirs[notes].iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl",
                                                             "notes.txt"]
    assert (dirs[sub] / "plots" / "a.png").read_text() == "mine"
    assert no_config_dir.is_dir()
    lines = out.splitlines()
    assert lines[0] == (f"deleted run {plain} (finished, dense on mnist, 2 epochs); folder {dirs[plain]} removed")
    assert (f"deleted run {notes} (interrupted, dense on mnist, 1 epochs); folder {dirs[notes]} kept: it holds "
            f"files lowrank did not write (notes.txt)") in lines
    assert f"folder {dirs[sub]} kept: it holds files lowrank did not write (plots/)" in out
    assert f"deleted run {no_folder} (failed, dense on mnist, 0 epochs); it had no run folder" in lines
    assert f"its folder {gone_dir} was already gone" in out
    assert f"folder {no_config_dir} kept: it has no config.json" in out
    assert lines[-1] == "deleted 6 runs"


def test_rm_of_an_unknown_id_is_one_line_and_deletes_nothing(store, tmp_path, capsys):
    known = _fake_run(store, tmp_path / "runs", "failed", epochs=1)
    rc, out, err = _cli(capsys, "runs", "rm", known, 99, "--db", store.path)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [f"lowrank: error: no run 99 in {store.path}; nothing was deleted "
                                        f"(`lowrank runs` lists the runs)"]
    assert _rows(store.path, known)["runs"] == 1 and Path(store.run(known)["run_dir"]).is_dir()
    rc, out, err = _cli(capsys, "runs", "rm", "--db", store.path)
    assert rc == 2 and "needs the ids" in err


def test_rm_dry_run_lists_and_deletes_nothing(store, tmp_path, capsys):
    rid = _fake_run(store, tmp_path / "runs", "finished", epochs=2, summary=CLASSIFICATION_SUMMARY)
    run_dir = Path(store.run(rid)["run_dir"])
    before = sorted(p.name for p in run_dir.iterdir())
    rc, out, err = _cli(capsys, "runs", "rm", rid, "--dry-run", "--db", store.path)
    assert rc == 0, err
    assert out.splitlines() == [f"would delete run {rid} (finished, dense on mnist, 2 epochs); folder {run_dir} "
                                f"would be removed", "would delete 1 run"]
    assert _rows(store.path, rid) == {"runs": 1, "epochs": 2, "ranks": 4}
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_rm_skips_a_run_a_live_process_holds(store, tmp_path, capsys):
    held = _fake_run(store, tmp_path / "runs", "running", epochs=1)
    free = _fake_run(store, tmp_path / "runs", "failed", epochs=1)
    lock = RunLock.acquire(store.run(held)["run_dir"], held)
    try:
        rc, out, err = _cli(capsys, "runs", "rm", held, free, "--db", store.path)
    finally:
        lock.release()
    assert rc == 1, err
    assert f"skipped run {held} (running, dense on mnist, 1 epochs): process {os.getpid()} is training it" in out
    assert out.splitlines()[-1] == "deleted 1 run, skipped 1 held by a live process"
    assert _rows(store.path, held) == {"runs": 1, "epochs": 1, "ranks": 2}
    assert (Path(store.run(held)["run_dir"]) / "checkpoint.pt").exists()
    assert _rows(store.path, free)["runs"] == 0


def test_prune_deletes_one_status_and_never_a_held_run(store, tmp_path, capsys):
    runs = tmp_path / "runs"
    ids = {s: _fake_run(store, runs, s, epochs=1) for s in ("failed", "diverged", "interrupted")}
    failed2 = _fake_run(store, runs, "failed")
    dead = _fake_run(store, runs, "running", epochs=1)
    live = _fake_run(store, runs, "running", epochs=1)
    done = _fake_run(store, runs, "finished", epochs=2, summary=CLASSIFICATION_SUMMARY)
    db = store.path

    rc, out, err = _cli(capsys, "runs", "prune", "--status", "failed", "--db", db)
    assert rc == 0, err
    assert out.splitlines()[-1] == "deleted 2 runs"
    assert _rows(db, ids["failed"])["runs"] == _rows(db, failed2)["runs"] == 0
    assert all(_rows(db, r)["runs"] == 1 for r in (ids["diverged"], ids["interrupted"], dead, live, done))

    rc, out, err = _cli(capsys, "runs", "prune", "--status", "interrupted", "--dry-run", "--db", db)
    assert rc == 0 and f"would delete run {ids['interrupted']} (interrupted" in out
    assert _rows(db, ids["interrupted"]) == {"runs": 1, "epochs": 1, "ranks": 2}

    lock = RunLock.acquire(store.run(live)["run_dir"], live)
    try:
        rc, out, err = _cli(capsys, "runs", "prune", "--status", "running", "--db", db)
    finally:
        lock.release()
    assert rc == 0, err
    assert f"deleted run {dead} (running" in out
    assert f"skipped run {live} (running, dense on mnist, 1 epochs): process {os.getpid()} is training it" in out
    assert _rows(db, dead)["runs"] == 0 and _rows(db, live)["runs"] == 1

    rc, out, err = _cli(capsys, "runs", "prune", "--status", "finished", "--db", db)
    assert rc == 2 and out == "" and "add --yes" in err and len(err.strip().splitlines()) == 1
    assert _rows(db, done)["runs"] == 1
    rc, out, err = _cli(capsys, "runs", "prune", "--status", "finished", "--dry-run", "--db", db)
    assert rc == 0 and f"would delete run {done} (finished" in out and _rows(db, done)["runs"] == 1
    rc, out, err = _cli(capsys, "runs", "prune", "--status", "finished", "--yes", "--db", db)
    assert rc == 0 and _rows(db, done)["runs"] == 0

    rc, out, err = _cli(capsys, "runs", "prune", "--status", "failed", "--db", db)
    assert rc == 0 and out.strip() == f"no failed runs in {db}; nothing to delete"
    rc, out, err = _cli(capsys, "runs", "prune", "--db", db)
    assert rc == 2 and "needs --status" in err
    with pytest.raises(SystemExit) as info:  # argparse: a status that is not one
        main(["runs", "prune", "--status", "failed' OR 1=1 --", "--db", str(db)])
    assert info.value.code == 2
    assert _rows(db, ids["diverged"])["runs"] == 1


# -- listings of every state -------------------------------------------------------------------------------------

def test_listings_cope_with_every_status(store, tmp_path, capsys):
    runs = tmp_path / "runs"
    r = {
        "running-live": _fake_run(store, runs, "running", epochs=1),
        "running-dead": _fake_run(store, runs, "running", epochs=2),
        "running-no-folder": _fake_run(store, runs, "running", folder=False),
        "interrupted": _fake_run(store, runs, "interrupted", epochs=1, name="half"),
        "failed-empty": _fake_run(store, runs, "failed"),
        "diverged": _fake_run(store, runs, "diverged", epochs=1),
        "finished": _fake_run(store, runs, "finished", epochs=2, summary=CLASSIFICATION_SUMMARY),
        "regression": _fake_run(store, runs, "finished", epochs=2, summary=REGRESSION_SUMMARY, regression=True),
        "abandoned": _fake_run(store, runs, "abandoned", folder=False),
        "failed-folder-gone": _fake_run(store, runs, "failed", epochs=1),
    }
    gone = Path(store.run(r["failed-folder-gone"])["run_dir"])
    for f in gone.iterdir():
        f.unlink()
    gone.rmdir()
    db = store.path
    lock = RunLock.acquire(store.run(r["running-live"])["run_dir"], r["running-live"])
    try:
        rc, out, err = _cli(capsys, "runs", "--db", db)
        assert rc == 0, err
        lines = out.splitlines()
        rows = {int(ln.split()[0]): ln.split() for ln in lines[1:] if ln.split()[0].isdigit()}
        assert set(rows) == set(r.values())
        for key, rid in r.items():
            assert rows[rid][1] == ("finished" if key == "regression" else key.split("-")[0]), key
        assert rows[r["finished"]][4:6] == ["2", "0.7531"]
        assert rows[r["regression"]][3:6] == ["targets.csv", "2", "MAE=0.3125"]
        assert rows[r["failed-empty"]][4:6] == ["0", "-"]
        assert rows[r["interrupted"]][-1] == "half"
        # only the running runs no process holds are called out
        assert lines[-1].startswith(f"(runs {r['running-dead']}, {r['running-no-folder']}: marked running, but no "
                                    f"process is training them")

        rc, out, err = _cli(capsys, "runs", "--json", "--db", db)
        assert rc == 0 and [x["id"] for x in json.loads(out)] == sorted(r.values())

        shown = {}
        for key, rid in r.items():
            rc, out, err = _cli(capsys, "runs", "show", rid, "--db", db)
            assert rc == 0, (key, err)
            shown[key] = out
            rc, js, err = _cli(capsys, "runs", "show", rid, "--json", "--db", db)
            assert rc == 0 and json.loads(js)["id"] == rid
    finally:
        lock.release()
    assert "[running] dense on mnist" in shown["running-live"]
    assert f"being trained now by process {os.getpid()}" in shown["running-live"]
    assert f"no process is training it (killed?); `lowrank train --resume {r['running-dead']}`" in shown["running-dead"]
    assert "-> (no run folder)" in shown["running-no-folder"] and "-> (no run folder)" in shown["abandoned"]
    assert f"-> {gone} (folder missing)" in shown["failed-folder-gone"]
    assert f"run {r['interrupted']} 'half' [interrupted]" in shown["interrupted"]
    assert "no final results: the run is interrupted after 1 epochs" in shown["interrupted"]
    assert "no final results: the run is failed before its first epoch ended" in shown["failed-empty"]
    assert "0 of 2 epochs recorded" in shown["failed-empty"]
    assert "no final results: the run is diverged after 1 epochs" in shown["diverged"]
    assert "epoch 1: train loss 1.0000 test acc 0.6000 (0.10 s) ranks 8,5" in shown["finished"]
    assert "final test acc 0.7531, test loss 0.9000" in shown["finished"]
    assert "epoch 2: train loss 0.5000 test MAE 0.31 test loss 0.4000 (0.10 s) ranks 8,5" in shown["regression"]
    assert "final test MAE 0.3125, RMSE 0.41, R^2 -, test loss 0.2000" in shown["regression"]
    assert "test acc" not in shown["regression"]
    assert all("None" not in text for text in shown.values())
