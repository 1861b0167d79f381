"""Data-parallel training (gloo, 2 processes) equals one process on the combined batch; the
replicas stay identical through rank changes; the sharding arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lowrank.config import TrainConfig
from lowrank.data import load_dataset
from lowrank.distributed import shard_bounds
from lowrank.run import fit_options, prepare
from lowrank.train import fit

sys.path.insert(0, str(Path(__file__).parent))
import ddp_child  # noqa: E402


def config(method: dict, **over) -> TrainConfig:
    d = {"data": {"dataset": "fashion-mnist", "train_size": 200, "test_size": 100},
         "optim": {"optimizer": "adam", "lr": 3e-3, "schedule": "constant"},
         "method": method, "layers": [784, 32, 16, 10], "batch_size": 50, "epochs": 2, "seed": 3}
    d.update(over)
    return TrainConfig.from_dict(d)


#: name -> config; every one trained by 2 processes in one spawn (process start-up is most of the time).
CONFIGS = {
    "parallel-adaptive": config({"method": "dlrt", "integrator": "parallel", "rank": 6, "adaptive": True,
                                 "tau": 0.4, "max_rank": 16}),
    "kls-adaptive": config({"method": "dlrt", "integrator": "kls", "rank": 6, "adaptive": True, "tau": 0.4,
                            "max_rank": 16}),
    "kls-fixed": config({"method": "dlrt", "integrator": "kls", "rank": 6}),
    # 200 samples in batches of 64: the last batch (8 rows) splits 4 + 4.
    "dense-adam-uneven": config({"method": "dense"}, batch_size=64),
}


def single(cfg: TrainConfig) -> tuple[dict, dict, list]:
    data = load_dataset(cfg.data, seed=cfg.seed)
    model, stepper, _ = prepare(cfg, data, None)
    history = fit(model, data, stepper, **fit_options(cfg))
    ranks = stepper.optimizer.ranks() if hasattr(stepper.optimizer, "ranks") else {}
    return model.state_dict(), ranks, history


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    cfgs = [c.to_dict() for c in CONFIGS.values()]
    mp.spawn(ddp_child.worker, args=(2, str(out / "rendezvous"), cfgs, str(out)), nprocs=2, join=True)
    res = {name: [torch.load(out / f"{i}-{r}.pt", weights_only=False) for r in range(2)]
           for i, name in enumerate(CONFIGS)}
    res["mismatch"] = [(out / f"mismatch-{r}.txt").read_text() for r in range(2)]
    return res


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_gloo_processes_equal_one_on_the_combined_batch(name, two_processes) -> None:
    cfg = CONFIGS[name]
    ref_state, ref_ranks, ref_hist = single(cfg)
    out = two_processes[name]
    steps = cfg.epochs * 4
    # The replicas are identical: every step's check passed, and the final models are equal bit for bit.
    assert out[0]["checks"] == out[1]["checks"] == steps
    assert out[0]["ranks"] == out[1]["ranks"]
    for k in out[0]["state"]:
        assert torch.equal(out[0]["state"][k], out[1]["state"][k]), k
    # ... and equal the single process on the whole batch (float tolerance: another summation order).
    assert out[0]["ranks"] == ref_ranks
    if cfg.method.method == "dlrt" and cfg.method.adaptive:
        assert any(r != 6 for r in ref_ranks.values()), ref_ranks     # the ranks did change on the way
    for k, v in ref_state.items():
        assert out[0]["state"][k].shape == v.shape, k
        torch.testing.assert_close(out[0]["state"][k], v, atol=2e-5, rtol=1e-4, msg=k)
    for a, b in zip(out[0]["history"], ref_hist, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.011)


def test_every_gradient_set_is_averaged(two_processes) -> None:
    # One average per step for dense Adam and the parallel step; fixed KLS: pass 1 and pass 2.
    assert two_processes["dense-adam-uneven"][0]["reduces"] == 8
    assert two_processes["parallel-adaptive"][0]["reduces"] == 8
    assert two_processes["kls-fixed"][0]["reduces"] == 16
    assert two_processes["kls-adaptive"][0]["reduces"] == 16    # captured gradients + the U~^T G V~ blocks


def test_a_replica_that_differs_is_found(two_processes) -> None:
    for message in two_processes["mismatch"]:
        assert "differ after a nudge: 1 values not identical" in message


@pytest.mark.parametrize("n,size", [(64, 2), (7, 3), (2, 3), (0, 2), (50, 4)])
def test_shards_cover_the_batch_once(n, size) -> None:
    bounds = [shard_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert [h - l for l, h in bounds] == [len(c) for c in torch.arange(n).tensor_split(size)]


@pytest.mark.slow
def test_checkpoints_do_not_depend_on_the_number_of_processes(tmp_path) -> None:
    """A run written by 2 processes resumes in 1, one written by 1 resumes in 2; both end as the
    uninterrupted single-process run (float tolerance), with the rows of every epoch."""
    from lowrank.run import resume_run, train_run
    from lowrank.store import Store

    cfg = config({"method": "dlrt", "integrator": "parallel", "rank": 6, "adaptive": True, "tau": 0.4,
                  "max_rank": 16}, epochs=3)
    db, runs = str(tmp_path / "r.db"), str(tmp_path / "runs")
    store = Store(db)
    ref = train_run(cfg, store=store, runs_dir=runs)                       # run 1: uninterrupted
    # Run 2: written by 1 process, stopped after epoch 1 (to be resumed by 2).
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, store=Store(db), runs_dir=runs, callbacks=[ddp_child.StopAfterEpoch(1)])
    # In 2 processes: run 3 started and stopped after epoch 1 (to be resumed by 1); run 2 resumed to the end.
    mp.spawn(ddp_child.run_worker, args=(2, str(tmp_path / "rv"), [(cfg.to_dict(), None, 1), (None, 2, None)],
                                         db, runs), nprocs=2)
    assert Store(db).run(3)["status"] == "interrupted"
    two_then_one = resume_run(3, store=Store(db))
    final = Store(db)
    assert [final.run(i)["status"] for i in (1, 2, 3)] == ["finished"] * 3
    from lowrank.checkpoint import load_model, read_checkpoint
    from lowrank.run import build_model

    one_then_two = load_model(build_model(cfg, load_dataset(cfg.data, seed=cfg.seed)),
                              read_checkpoint(final.run(2)["run_dir"]))
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(two_then_one.model.state_dict()[k], v, atol=2e-5, rtol=1e-4, msg=k)
        torch.testing.assert_close(one_then_two.state_dict()[k], v, atol=2e-5, rtol=1e-4, msg=k)
    assert len(final.epochs(2)) == len(final.epochs(3)) == 3
    for run in (2, 3):
        assert [e["test_acc"] for e in final.epochs(run)] == pytest.approx(
            [e["test_acc"] for e in final.epochs(1)], abs=0.011)
