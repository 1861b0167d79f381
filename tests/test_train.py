"""The trainer: records, checkpoints, resume equivalence, divergence, interrupts."""

from __future__ import annotations

import pytest
import torch

from lowrank.checkpoint import read_checkpoint
from lowrank.registry import method_config
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.errors import CheckpointError, TrainingDivergedError
from lowrank.store import Store
from lowrank.run import resume_run, train_run


def small_cfg(**kw) -> TrainConfig:
    cfg = TrainConfig(data=DataConfig(dataset="mnist", train_size=600, test_size=300),
                      optim=OptimConfig(optimizer="adam", lr=2e-3),
                      method=method_config("dense"),
                      layers=[784, 32, 10], epochs=3, batch_size=50, seed=1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def mnist_small():
    from lowrank.data import load_dataset
    return load_dataset(small_cfg().data, seed=1)


def test_fit_records_every_epoch(store, tmp_path, mnist_small):
    res = train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=mnist_small)
    assert len(res.history) == 3
    rows = store.epochs(res.run_id)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["test_acc"] == pytest.approx(res.history[-1]["test_acc"])
    assert store.run(res.run_id)["status"] == "finished"
    # learning happened: loss falls and accuracy is far above chance (10%)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert res.summary["test_acc"] > 0.6
    ckpt = read_checkpoint(res.run_dir / "checkpoint.pt")
    assert ckpt["loop"]["epoch"] == 3 and ckpt["config"]["layers"] == [784, 32, 10]
    assert (res.run_dir / "config.json").exists() and (res.run_dir / "summary.json").exists()


@pytest.mark.parametrize("at_step", [12, 17])  # 12 = end of epoch 1, 17 = mid-epoch 2
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_resume_reproduces_uninterrupted_run(store, tmp_path, mnist_small, stop_stepper, at_step, noise):
    cfg = small_cfg()
    cfg.data.noise = noise
    full = train_run(cfg, store=store, runs_dir=tmp_path / "runs", data=mnist_small)

    with stop_stepper(at_step):
        with pytest.raises(KeyboardInterrupt):
            train_run(small_cfg(data=cfg.data), store=store, runs_dir=tmp_path / "runs", data=mnist_small)
    run_id = full.run_id + 1
    assert store.run(run_id)["status"] == "interrupted"
    again = resume_run(run_id, store=store, data=mnist_small)
    assert store.run(run_id)["status"] == "finished"
    for (k, a), (_, b) in zip(full.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert [r["epoch"] for r in store.epochs(run_id)] == [0, 1, 2]
    assert again.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-9)
    with pytest.raises(CheckpointError, match=rf"run {run_id} has already finished \(3 of 3 epochs\)"):
        resume_run(run_id, store=store, data=mnist_small)
    assert store.run(run_id)["status"] == "finished"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(store, tmp_path, mnist_small):
    from lowrank.data import ArrayDataset, Splits

    x = mnist_small.train.x.clone()
    data = Splits(train=ArrayDataset(x, mnist_small.train.y), test=mnist_small.test, val=None,
                  name="mnist", num_classes=10, input_dim=784, sources=[], mean=0.0, std=1.0)

    def poison(epoch, row):
        if epoch == 0:
            x[:] = float("nan")  # the trainer batches from this very tensor
    with pytest.raises(TrainingDivergedError, match="epoch 2"):
        train_run(small_cfg(), store=store, runs_dir=tmp_path / "runs", data=data, on_epoch=poison)
    run = store.runs()[-1]
    assert run["status"] == "diverged"
    ckpt = read_checkpoint(run["run_dir"])
    assert ckpt["loop"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_corrupt_checkpoint_is_named(tmp_path):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(p)):
        read_checkpoint(p)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.pt")


def test_store_transaction_rolls_back(store):
    run_id = store.create_run(small_cfg().to_dict(), "x")
    with pytest.raises(RuntimeError):
        with store.transaction() as c:
            c.execute("INSERT INTO epochs (run_id, epoch, test_acc) VALUES (?, ?, ?)", (run_id, 0, 0.5))
            raise RuntimeError("boom")
    assert store.epochs(run_id) == []



def test_store_waits_for_a_database_another_process_is_creating(tmp_path):
    """A second `lowrank train` opening a new database while the first still creates it (rollback
    journal, write lock held): SQLite refuses the switch to WAL at once; the store waits instead."""
    import sqlite3
    import threading

    db = tmp_path / "shared.db"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE being_created (a)")
    threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
    s = Store(db)
    assert s.create_run(small_cfg().to_dict(), "x") == 1
    s.close()
    other.close()


def test_checkpoint_with_optimizer_state_of_another_rank_is_refused(store, tmp_path, mnist_small):
    from lowrank.checkpoint import write_checkpoint

    cfg = small_cfg(method=method_config("vanilla", rank=4), epochs=2)
    res = train_run(cfg, store=store, runs_dir=tmp_path / "runs", data=mnist_small)
    ckpt = read_checkpoint(res.run_dir / "checkpoint.pt")
    state = ckpt["stepper"]["optimizer"]["state"]
    first = min(state)
    state[first]["exp_avg"] = torch.zeros(3, 3)                # not the shape of its parameter
    write_checkpoint(res.run_dir / "checkpoint.pt", ckpt)
    store.set_status(res.run_id, "interrupted")
    with pytest.raises(CheckpointError, match=r"optimizer state 'exp_avg' of parameter \d+ is shaped \(3, 3\)"):
        resume_run(res.run_id, store=store, data=mnist_small)
