"""Transfer of a pretrained dense model (Hoda) to another dataset (Fashion-MNIST): LoRA rows, full
fine-tuning, scratch; model selection and augmentation of the pretraining; the rank rule; the CLI."""

from __future__ import annotations

import math
import os
import subprocess

import numpy as np
import pytest
import torch

from cli_checks import one_line_error
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.data import Augmentation, augment_images
from lowrank.errors import CheckpointError, ConfigError
from lowrank.finetune import FinetuneConfig, plan_finetune, run_finetune
from lowrank.lora_rank import choose_lora_rank
from lowrank.registry import method_config
from lowrank.report import build_report, parse_query, select_runs
from lowrank.run import build_model, train_run
from lowrank.store import Store
from lowrank.train_memory import training_memory

LAYERS = [784, 32, 16, 10]


def shared_cache() -> dict[str, str]:
    """The session's decoded-array cache, so a CLI subprocess does not decode the datasets again."""
    return {"LOWRANK_CACHE": os.environ["LOWRANK_CACHE"]}

SMALL = {"train_size": 300, "test_size": 200}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small MLP pretrained on 300 Hoda samples for 2 epochs, with a validation split, model
    selection and augmentation: (its run folder, its result)."""
    d = tmp_path_factory.mktemp("pretrain")
    store = Store(d / "db.sqlite")
    cfg = TrainConfig(data=DataConfig(dataset="hoda", val_fraction=0.2, augment_shift=2, augment_rotate=10, **SMALL),
                      layers=list(LAYERS), epochs=2, select_best=True)
    res = train_run(cfg, store=store, runs_dir=d / "runs")
    store.close()
    return res.run_dir, res


class _closing:
    def __init__(self, tmp_path):
        self.store = Store(tmp_path / "db.sqlite")

    def __enter__(self) -> Store:
        return self.store

    def __exit__(self, *exc) -> None:
        self.store.close()


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_pretraining_keeps_the_best_validation_epoch(pretrained):
    run_dir, res = pretrained
    vals = [h["val_acc"] for h in res.history]
    best = max(range(len(vals)), key=lambda i: (vals[i], -i))
    assert res.summary["selected_epoch"] == best
    assert res.summary["test_acc"] == pytest.approx(res.history[best]["test_acc"])  # the selected weights, not the last
    saved, best_file = _weights(run_dir), torch.load(run_dir / "best.pt", weights_only=True)
    assert best_file["epoch"] == best
    assert all(torch.equal(saved[k], best_file["model"][k]) for k in saved)
    assert res.config.to_dict()["data"]["augment_shift"] == 2


def test_select_best_needs_a_validation_split():
    with pytest.raises(ConfigError, match="val-fraction"):
        TrainConfig(data=DataConfig(dataset="hoda"), select_best=True)


def test_augmentation_moves_images_by_at_most_the_shift_and_is_seeded():
    img = torch.zeros(64, 1, 28, 28)
    img[:, 0, 12:16, 12:16] = 1.0                                   # a 4x4 square centred at (13.5, 13.5)
    x = img.reshape(64, -1)
    out = augment_images(x, (1, 28, 28), 3.0, 0.0, torch.Generator().manual_seed(0))
    again = augment_images(x, (1, 28, 28), 3.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    im = out.reshape(64, 28, 28)
    grid = torch.arange(28.0)
    mass = im.sum((1, 2))
    cy, cx = (im.sum(2) * grid).sum(1) / mass, (im.sum(1) * grid).sum(1) / mass
    assert torch.allclose(mass, torch.full_like(mass, 16.0), atol=1e-3)   # a shift keeps the ink
    assert ((cx - 13.5).abs() <= 3.0 + 1e-4).all() and ((cy - 13.5).abs() <= 3.0 + 1e-4).all()
    assert (cx - 13.5).abs().max() > 1.0                               # and it does move them
    assert augment_images(x, (1, 28, 28), 0.0, 0.0, torch.Generator()) is x
    with pytest.raises(ConfigError, match="augment_rotate"):
        DataConfig(augment_rotate=200)
    with pytest.raises(ConfigError, match="need image data"):
        Augmentation(shift=1).check((10,), "table.csv")


def test_lora_finetune_freezes_the_base_and_trains_adapters_and_new_head(pretrained, tmp_path):
    run_dir, _ = pretrained
    plan = plan_finetune(FinetuneConfig(checkpoint=str(run_dir), method="lora,full,scratch", ranks=[2], epochs=1,
                                        **SMALL))
    lora_cfg, full_cfg, scratch_cfg = (r.config for r in plan.rows)
    model = build_model(lora_cfg, plan.data)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {"fc0.A", "fc0.B", "fc1.A", "fc1.B", "fc2.weight", "fc2.bias"}
    with _closing(tmp_path) as store:
        result = run_finetune(plan, store=store, runs_dir=tmp_path / "runs")
        assert {r["sweep"] for r in store.runs()} == {plan.group}
    lora, full, scratch = result.rows
    # by hand: fc0 2 * (784 + 32), fc1 2 * (32 + 16), new head 16 * 10 + 10
    assert lora.trainable == 2 * (784 + 32) + 2 * (32 + 16) + 16 * 10 + 10
    assert full.trainable == scratch.trainable == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    base, tuned = _weights(run_dir), _weights(next((tmp_path / "runs").glob(f"{lora.run_id:04d}-*")))
    for layer in ("fc0", "fc1"):
        assert torch.equal(tuned[f"{layer}.base.weight"], base[f"{layer}.weight"])   # bit-identical
        assert torch.equal(tuned[f"{layer}.base.bias"], base[f"{layer}.bias"])
        assert tuned[f"{layer}.B"].abs().sum() > 0                                    # the adapter trained
    fresh = build_model(lora_cfg, plan.data).state_dict()
    assert not torch.equal(tuned["fc2.weight"], fresh["fc2.weight"])                  # the head trained ...
    assert not torch.equal(fresh["fc2.weight"], base["fc2.weight"])                   # ... from a new init
    full_w = build_model(full_cfg, plan.data).state_dict()
    assert torch.equal(full_w["fc0.weight"], base["fc0.weight"]) and not torch.equal(full_w["fc2.weight"],
                                                                                     base["fc2.weight"])
    assert not torch.equal(build_model(scratch_cfg, plan.data).state_dict()["fc0.weight"], base["fc0.weight"])
    # exact training memory: fp32 weights (base + adapters + head), gradients of the trainable ones, Adam's two moments
    assert lora.memory["weights"] == 4 * (full.trainable + 2 * (784 + 32) + 2 * (32 + 16))
    assert lora.memory["gradients"] == 4 * lora.trainable and full.memory["gradients"] == 4 * full.trainable
    assert 2 * lora.memory["gradients"] <= lora.memory["optimizer_state"] < 2 * lora.memory["gradients"] + 1000
    assert result.choice is not None and result.choice.rank == 2


def test_training_memory_counts_weights_gradients_and_saved_activations():
    model = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(100, 20)[:5], torch.tensor([0, 1, 2, 0, 1])   # a view into a bigger batch
    ce = torch.nn.functional.cross_entropy
    trained = training_memory(model, x, y, ce)
    model[0].weight.requires_grad_(False)
    mem = training_memory(model, x, y, ce, optimizer_state_bytes=123)
    assert mem.weights == 4 * (20 * 8 + 8 + 8 * 3 + 3)
    assert mem.gradients == 4 * (8 + 8 * 3 + 3)
    assert mem.optimizer_state == 123 and mem.batch_size == 5
    # the 5 x 20 input is saved only while the first layer's weight trains (its gradient needs it)
    assert trained.activations - mem.activations == 4 * 5 * 20
    # ReLU output (kept once, read by both its backward and the last layer's) + log-softmax output + targets
    assert mem.activations >= 4 * 5 * 8 + 4 * 5 * 3 + 8 * 5
    assert mem.total == mem.weights + mem.gradients + mem.optimizer_state + mem.activations


def test_rank_rule_picks_what_it_says_on_a_hand_made_table():
    acc = {1: 0.80, 2: 0.86, 4: 0.895, 8: 0.90, 16: 0.899}
    c = choose_lora_rank(acc, full=0.90, tolerance=1.0)              # within 1 point of 90%: 4 is the smallest
    assert (c.rank, c.reference_name) == (4, "full fine-tuning")
    assert choose_lora_rank(acc, full=0.90, tolerance=0.0).rank == 8
    far = choose_lora_rank(acc, full=0.95, tolerance=1.0)             # none within 1 point of full: best rank's
    assert (far.rank, far.reference_name) == (4, "best LoRA rank (r=8)") and "no rank comes within" in far.reason
    assert choose_lora_rank(acc, tolerance=5.0).rank == 2             # no full row: 86% is within 5 of 90%
    with pytest.raises(ConfigError):
        choose_lora_rank({})


def test_plan_refuses_bad_input_before_writing(pretrained, tmp_path):
    run_dir, _ = pretrained
    with pytest.raises(ConfigError, match="ranks must be positive"):
        FinetuneConfig(checkpoint=str(run_dir), ranks=[0, 2])
    with pytest.raises(ConfigError, match="not one of lora, full, scratch"):
        FinetuneConfig(checkpoint=str(run_dir), method="lora,partial")
    with pytest.raises(CheckpointError, match="does not exist"):
        plan_finetune(FinetuneConfig(checkpoint=str(tmp_path / "nope")))
    np.savez(tmp_path / "small.npz", x=np.random.default_rng(0).random((40, 10)).astype(np.float32),
             y=np.arange(40) % 2)
    with pytest.raises(ConfigError, match="784 values"):
        plan_finetune(FinetuneConfig(checkpoint=str(run_dir), dataset=str(tmp_path / "small.npz")))
    with pytest.raises(ConfigError, match="new_head"):
        method_config("lora", new_head=True)


def test_cli_finetune_writes_runs_and_the_report_draws_the_rank_curves(pretrained, tmp_path, lowrank_cli):
    run_dir, _ = pretrained
    db = tmp_path / "ft.db"
    p = lowrank_cli(["finetune", run_dir, "--method", "lora,full,scratch", "--ranks", "1,2", "--epochs", "1",
                     "--train-size", "300", "--test-size", "200", "--db", db, "--runs-dir", tmp_path / "runs",
                     "--out", tmp_path / "rep"], tmp_path, env=shared_cache())
    assert p.returncode == 0, p.stderr
    assert "chosen rank:" in p.stdout and "pretrained model's own test accuracy" in p.stdout
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "LoRA rank curves" in html and "lora_rank_0" in (tmp_path / "rep" / "report.md").read_text()
    store = Store(db)
    runs = store.runs()
    group = runs[0]["sweep"]
    assert [r["sweep_key"] for r in runs] == ["lora-r1", "lora-r2", "full", "scratch"]
    assert all(r["sweep"] == group and r["summary"]["finetune"]["source_checkpoint"].startswith(str(run_dir))
               for r in runs)
    assert math.isfinite(runs[0]["summary"]["finetune"]["train_time"])
    doc = build_report(select_runs(store, query=parse_query(f"sweep={group}")), title="t")   # `lowrank report`'s
    store.close()
    section = next(s for s in doc.sections if s.title == "LoRA rank curves")
    assert [row[0] for row in section.table.rows] == ["lora r1", "lora r2", "full fine-tuning", "scratch"]
    assert any("chosen rank" in n for n in section.notes) and section.images


def test_cli_finetune_bad_input_is_one_line(pretrained, tmp_path, capsys):
    from lowrank.cli import main

    run_dir, _ = pretrained
    store = Store(tmp_path / "db.sqlite")
    lowrank_run = train_run(TrainConfig(data=DataConfig(dataset="hoda", **SMALL), layers=[784, 16, 10], epochs=1,
                                        method=method_config("vanilla", rank=4)), store=store, runs_dir=tmp_path / "lr")
    store.close()
    np.savez(tmp_path / "small.npz", x=np.random.default_rng(0).random((40, 10)).astype(np.float32),
             y=np.arange(40) % 2)
    db = ["--db", str(tmp_path / "x.db"), "--runs-dir", str(tmp_path / "runs")]
    cases = [([run_dir, "--ranks", "1,0"], ("ranks must be positive",)),
             ([run_dir, "--ranks", "1,x"], ("comma-separated integers",)),
             ([tmp_path / "missing"], ("does not exist",)),
             ([lowrank_run.run_dir], ("'vanilla' model", "--method dense")),
             ([run_dir, "--dataset", tmp_path / "small.npz"], ("784 values", "(10)"))]
    for args, needles in cases:
        try:
            code = main(["finetune", *map(str, args), *db])
        except SystemExit as e:     # argparse's own errors (same one-line form, exit 2)
            code = e.code
        out, err = capsys.readouterr()
        one_line_error(subprocess.CompletedProcess(args, code, out, err), *needles)
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "x.db").exists() or not Store(tmp_path / "x.db").runs()


def test_model_selection_survives_an_interrupted_and_resumed_run(tmp_path):
    from lowrank.run import resume_run

    store = Store(tmp_path / "db.sqlite")
    cfg = TrainConfig(data=DataConfig(dataset="hoda", val_fraction=0.2, **SMALL), layers=[784, 16, 10], epochs=4,
                      select_best=True, optim=OptimConfig(lr=0.1, schedule="constant"))  # a noisy val curve

    def stop_after_three(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, store=store, runs_dir=tmp_path / "runs", on_epoch=stop_after_three)
    (run,) = store.runs()
    assert run["status"] == "interrupted"
    res = resume_run(run["id"], store=store)
    vals = [h["val_acc"] for h in res.history]
    assert len(vals) == 4
    assert res.summary["selected_epoch"] == max(range(4), key=lambda i: (vals[i], -i))
    assert res.summary["selected_epoch"] < 3     # here the best epoch came before the stop: restored from best.pt
    assert res.summary["test_acc"] == pytest.approx(res.history[res.summary["selected_epoch"]]["test_acc"])
    store.close()
