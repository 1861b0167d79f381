"""Post-training compression: truncation, rank rules, retraining, reload, ONNX export, the compress job and its CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

import lowrank
from lowrank.compress import (CompressConfig, choose_rank, energy_ranks, export_onnx, global_energy_ranks,
                              initializer_shapes, knee, run_compress, selected_layers, to_two_factor, truncate,
                              uniform_ranks)
from lowrank.compress.measure import measure_ort, measure_torch
from lowrank.cli import main as cli_main
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.errors import ConfigError, ExportError
from lowrank.methods.twofactor import TwoFactorConv2d, TwoFactorLinear
from lowrank.registry import method_config
from lowrank.run import delete_run, train_run

#: The ONNX tests need the ``onnx`` extra (scripts/install.sh installs it).
needs_onnx = pytest.mark.skipif(not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")),
                                reason="onnx / onnxruntime not installed (pip install -e .[onnx])")


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return lowrank.mlp([784, 48, 24, 10]).eval()


# ---------------------------------------------------------------------------- truncation

def test_full_rank_truncation_is_lossless_for_linear_and_conv():
    x = torch.randn(8, 784)
    for model in (_mlp(), lowrank.lenet5().eval()):
        names = selected_layers(model)
        full = uniform_ranks(model, names, 10_000)          # capped at each layer's min(n, m)
        small = truncate(model, full)
        assert all(isinstance(small.get_submodule(n), (TwoFactorLinear, TwoFactorConv2d)) for n in names)
        assert not isinstance(small.get_submodule(names[-1]), torch.nn.Linear)
        with torch.no_grad():
            torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_output_layer_stays_dense_unless_asked():
    model = _mlp()
    assert selected_layers(model) == ["fc0", "fc1"]
    assert selected_layers(model, include_output=True) == ["fc0", "fc1", "fc2"]
    assert uniform_ranks(model, ["fc0", "fc1"], 30) == {"fc0": 30, "fc1": 24}
    with pytest.raises(ConfigError, match="positive integer"):
        uniform_ranks(model, ["fc0"], 0)


def test_global_energy_pools_every_layers_singular_values():
    spectra = {"a": torch.tensor([10.0, 1.0]), "b": torch.tensor([3.0, 2.0, 0.1])}
    # squares 100, 9, 4, 1, 0.01 of 114.01: 100 + 9 hold 95.6%, + 4: 99.1%, + 1: 99.99%
    assert global_energy_ranks(spectra, 0.95) == {"a": 1, "b": 1}
    assert global_energy_ranks(spectra, 0.96) == {"a": 1, "b": 2}
    assert global_energy_ranks(spectra, 0.995) == {"a": 2, "b": 2}
    assert global_energy_ranks(spectra, 0.5) == {"a": 1, "b": 1}       # b keeps none of the top values: 1
    assert global_energy_ranks(spectra, 1.0) == {"a": 2, "b": 3}
    model = _mlp()
    per_layer = energy_ranks(model, ["fc0", "fc1"], 0.9, "layer")
    pooled = energy_ranks(model, ["fc0", "fc1"], 0.9, "global")
    for ranks in (per_layer, pooled):
        assert 1 <= ranks["fc0"] < 48 and 1 <= ranks["fc1"] < 24
    assert energy_ranks(model, ["fc0", "fc1"], 1.0, "global") == {"fc0": 48, "fc1": 24}


def test_to_two_factor_keeps_the_function_of_dlrt_layers():
    model = _mlp()
    dlrt = lowrank.convert(model, "dlrt", rank=8)
    x = torch.randn(5, 784)
    with torch.no_grad():
        want = dlrt(x)
        two = to_two_factor(dlrt)
        assert isinstance(two.fc0, TwoFactorLinear) and two.fc0.W1.shape == (48, 8) and two.fc0.W2.shape == (8, 784)
        torch.testing.assert_close(two(x), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- rank rules

TABLE = [
    {"label": "k=1", "k": 1, "params": 100, "acc_before": 0.30, "acc_after": 0.60, "torch_latency_b1": 1.0},
    {"label": "k=4", "k": 4, "params": 400, "acc_before": 0.70, "acc_after": 0.86, "torch_latency_b1": 1.2},
    {"label": "k=8", "k": 8, "params": 800, "acc_before": 0.80, "acc_after": 0.885, "torch_latency_b1": 1.5},
    {"label": "k=16", "k": 16, "params": 1600, "acc_before": 0.88, "acc_after": 0.89, "torch_latency_b1": 3.0},
]


def test_rank_rule_takes_the_smallest_k_within_tolerance():
    c = choose_rank(TABLE, 1.0, reference=0.892)
    assert c.row["k"] == 8 and c.within_tolerance and "smallest k" in c.rule
    assert choose_rank(TABLE, 5.0, reference=0.892).row["k"] == 4       # 0.86 is within 5 points
    assert choose_rank(TABLE, 0.0, reference=0.89).row["k"] == 16       # exactly equal counts
    # before retraining: judged by acc_before when asked
    assert choose_rank(TABLE, 1.0, reference=0.892, accuracy="acc_before").row["k"] == 16
    # the table order does not matter
    assert choose_rank(TABLE[::-1], 1.0, reference=0.892).row["k"] == 8


def test_rank_rule_with_no_k_within_tolerance_takes_the_most_accurate_and_says_so():
    c = choose_rank(TABLE, 0.5, reference=0.95)
    assert c.row["k"] == 16 and not c.within_tolerance
    assert "no k is within 0.5 points" in c.rule and "most accurate" in c.rule
    with pytest.raises(ConfigError, match="tolerance"):
        choose_rank(TABLE, -1, reference=0.9)
    with pytest.raises(ConfigError, match="empty"):
        choose_rank([], 1, reference=0.9)


def test_knee_of_accuracy_against_latency():
    # Pareto front in latency: 1.0/0.60, 1.2/0.86, 1.5/0.885, 3.0/0.89; scaled, k=4 is farthest above the chord
    assert TABLE[knee(TABLE)]["k"] == 4
    slower_but_worse = TABLE + [{"k": 32, "acc_after": 0.80, "torch_latency_b1": 5.0}]
    assert TABLE[knee(slower_but_worse)]["k"] == 4                      # off the front: ignored
    assert knee(TABLE[:2]) == 1                                         # < 3 front points: the most accurate
    assert knee([{"k": 1}]) is None


# ---------------------------------------------------------------------------- saving, reload, ONNX

def test_compressed_model_reloads_in_a_fresh_process_with_identical_outputs(tmp_path):
    model = truncate(_mlp(), {"fc0": 6, "fc1": 5})
    spec = {"model": "mlp", "model_args": {"layers": [784, 48, 24, 10]}, "sample_shape": [784], "num_outputs": 10}
    lowrank.save(model, tmp_path / "m", model_spec=spec)
    x = torch.randn(7, 784)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch, lowrank; m = lowrank.load(sys.argv[1]).eval(); x = torch.load(sys.argv[2]); "
            "print(type(m.fc0).__name__, m.fc0.rank); torch.save(m(x).detach(), sys.argv[3])")
    files = [str(tmp_path / f) for f in ("m", "x.pt", "y.pt")]
    p = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["TwoFactorLinear", "6"]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), model(x))


@needs_onnx
def test_onnx_export_is_factorized_and_matches_pytorch(tmp_path):
    model = truncate(lowrank.lenet5().eval(), {"conv0": 3, "conv1": 4, "fc0": 5})
    x = torch.randn(9, 784)
    out = export_onnx(model, tmp_path / "m.onnx", (784,), check_input=x)
    assert out.within_tolerance and out.max_abs_diff <= 1e-5
    shapes = initializer_shapes(out.path)
    sizes = [math.prod(s) for s in shapes.values()]
    # no dense weight of a compressed layer: fc0 is 500 x 800, conv1 50 x 20 x 5 x 5, conv0 20 x 1 x 5 x 5
    dense = ([500, 800], [800, 500], [50, 20, 5, 5], [50, 500], [20, 1, 5, 5], [20, 25])
    assert not [s for s in shapes.values() if s in dense] and max(sizes) == 10 * 500    # the largest: fc1 (dense)
    assert {(5, 800), (800, 5)} & {tuple(s) for s in shapes.values()} and [500, 5] in shapes.values()
    assert [3, 1, 5, 5] in shapes.values() and [4, 20, 5, 5] in shapes.values() and [50, 4, 1, 1] in shapes.values()
    assert sum(sizes) == lowrank.accounting.count(model, sample=x[:1]).inference.count
    # the batch dimension is dynamic; onnxruntime agrees on another batch size too
    torch_speed = measure_torch(model, (784,), batch=32, min_run_time=0.01)
    ort_speed = measure_ort(out.path, (784,), batch=32, min_run_time=0.01)
    assert torch_speed.latency_b1 > 0 and ort_speed.throughput > 0
    from lowrank.compress.onnx_export import check_onnx
    diff, scale = check_onnx(out.path, model, torch.randn(33, 784))
    assert diff <= 1e-5 and 0 < scale < 1       # a random LeNet's outputs are small: the check is absolute
    # above the tolerance (no difference passes a negative one) the file is refused and nothing is left
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_onnx(model, tmp_path / "refused.onnx", (784,), tolerance=-1.0)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx"]


# ---------------------------------------------------------------------------- the job

def _tiny_run(tmp_path, store):
    cfg = TrainConfig(data=DataConfig(dataset="mnist", train_size=600, test_size=200), optim=OptimConfig(lr=3e-3),
                      method=method_config("dense"), layers=[784, 32, 16, 10], epochs=2, batch_size=32)
    return train_run(cfg, store=store, runs_dir=tmp_path / "runs")


@pytest.fixture
def tiny(tmp_path, store):
    return _tiny_run(tmp_path, store)


@needs_onnx
def test_compress_job_records_measures_chooses_and_saves(tiny, store, tmp_path):
    cfg = CompressConfig(checkpoint=str(tiny.run_dir), out=str(tmp_path / "out"), ranks=[2, 8, 64], retrain_epochs=1,
                         tolerance=50.0, merge=True, batch=64, min_run_time=0.01)
    seen = []
    res = run_compress(cfg, store=store, on_point=seen.append)
    assert [r["label"] for r in seen] == ["dense", "k=2", "k=8", "k=64"]
    assert res.run_id == tiny.run_id and res.layers == ["fc0", "fc1"]
    assert res.points[1]["ranks"] == {"fc0": 8, "fc1": 8} and res.points[2]["ranks"] == {"fc0": 32, "fc1": 16}
    dense = res.dense
    assert dense["acc_before"] == pytest.approx(tiny.summary["test_acc"])
    for row in res.points:
        assert row["acc_after"] is not None and row["retrain_time"] > 0
        assert row["onnx_ok"] and row["onnx_max_diff"] <= 1e-5 * max(1.0, row["onnx_output_scale"])
        assert row["ort_throughput"] > 0
        assert row["bytes"] < dense["bytes"] or row["k"] == 64
    assert res.points[0]["params"] < res.points[1]["params"] < dense["params"]
    # the rule: smallest k within 50 points of dense
    assert res.choice.row["k"] == 2 and res.choice.within_tolerance
    jobs = store.compressions(tiny.run_id)
    assert len(jobs) == 1 and jobs[0]["status"] == "finished" and jobs[0]["chosen"]["label"] == "k=2"
    assert [p["label"] for p in jobs[0]["points"]] == ["dense", "k=2", "k=8", "k=64"]
    assert jobs[0]["points"][1]["ranks"] == {"fc0": 2, "fc1": 2}
    chosen = lowrank.load(res.chosen_dir).eval()
    merged = lowrank.load(res.merged_dir).eval()
    assert isinstance(chosen.fc0, TwoFactorLinear) and chosen.fc0.rank == 2 and isinstance(merged.fc0, torch.nn.Linear)
    x = torch.randn(4, 784)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), chosen(x), rtol=1e-4, atol=1e-5)
    summary = json.loads((tmp_path / "out" / "compress.json").read_text())
    assert summary["chosen"]["label"] == "k=2" and (tmp_path / "out" / "chosen.onnx").is_file()
    # the report draws it
    from lowrank.report import build_report, load_runs
    sections = {s.title: s for s in build_report(load_runs(store, [tiny.run_id]), title="t").sections}
    sec = sections["Accuracy against k (post-training SVD)"]
    assert [i.name for i in sec.images] == ["compression_k", "compression_latency", "compression_throughput"]
    assert [r[0] for r in sec.table.rows] == ["dense", "k=2", "k=8", "k=64"]
    # deleting the run deletes its compression rows
    delete_run(store, tiny.run_id)
    assert store.compressions() == []


def test_compress_by_global_energy_with_dlrt_retraining(tiny, store, tmp_path):
    cfg = CompressConfig(checkpoint=str(tiny.run_dir / "checkpoint.pt"), out=str(tmp_path / "out"), energies=[0.5, 0.9],
                         energy_scope="global", retrain_epochs=1, retrain_method="dlrt", onnx=False, batch=32,
                         min_run_time=0.01, train_size=200, test_size=100)
    res = run_compress(cfg, store=store)
    assert [p["label"] for p in res.points] == ["e=0.5", "e=0.9"]
    low, high = (p["ranks"] for p in res.points)
    assert all(low[n] <= high[n] for n in low) and sum(high.values()) > sum(low.values())
    assert all(p["acc_after"] is not None and p.get("ort_latency_b1") is None for p in res.points)
    assert isinstance(lowrank.load(res.chosen_dir).fc0, TwoFactorLinear)   # DLRT factors back in two-factor form


def test_compress_a_users_conv_model_output_layer_included(tmp_path, store):
    cfg = TrainConfig(data=DataConfig(dataset="mnist", train_size=300, test_size=100), method=method_config("dense"),
                      model="user_models:small_cnn", model_args={"channels": 4}, epochs=1, batch_size=32)
    run = train_run(cfg, store=store, runs_dir=tmp_path / "runs")
    job = CompressConfig(checkpoint=str(run.run_dir), out=str(tmp_path / "out"), ranks=[1, 3], include_output=True,
                         onnx=False, batch=16, min_run_time=0.01)
    res = run_compress(job, store=store)
    assert res.layers == ["conv0", "fc0"] and res.points[1]["ranks"] == {"conv0": 3, "fc0": 3}
    chosen = lowrank.load(res.chosen_dir, trust_factory=True)
    assert isinstance(chosen.conv0, TwoFactorConv2d) and isinstance(chosen.fc0, TwoFactorLinear)


def test_config_is_validated_before_anything_is_written(tiny, tmp_path, store):
    out = tmp_path / "never"
    for bad, match in (({"ranks": [0, 2]}, "positive integers"), ({"energies": [0.0]}, r"\(0, 1\]"),
                       ({"energies": [1.5]}, r"\(0, 1\]"), ({}, "exactly one"),
                       ({"ranks": [2], "energies": [0.9]}, "exactly one"),
                       ({"ranks": [2], "tolerance": -1}, "tolerance"),
                       ({"ranks": [2], "retrain_method": "sgd"}, "retrain-method")):
        with pytest.raises(ConfigError, match=match):
            CompressConfig(checkpoint=str(tiny.run_dir), out=str(out), **bad)
    with pytest.raises(ConfigError, match="matches no"):
        run_compress(CompressConfig(checkpoint=str(tiny.run_dir), out=str(out), ranks=[2], target="nope"), store=store)
    assert not out.exists() and store.compressions() == []


# ---------------------------------------------------------------------------- the commands

def _one_line(code: int, err: str, *needles: str) -> None:
    """An in-process CLI call's failure: exit 2, one ``lowrank: error:`` line holding every needle."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lowrank: error:"), (code, err)
    assert "Traceback" not in err and all(n in lines[0] for n in needles), lines[0]


@needs_onnx
def test_cli_compress_then_export(tiny, tmp_path, lowrank_cli, capsys):
    db = tiny.run_dir.parent.parent / "db.sqlite"
    p = lowrank_cli(["--db", db, "compress", tiny.run_dir, "--out", tmp_path / "c", "--ranks", "2,4",
                     "--batch", "64", "--min-run-time", "0.01", "--json"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["run_id"] == tiny.run_id and [r["label"] for r in res["points"]] == ["k=2", "k=4"]
    args = ["export", str(tmp_path / "c" / "chosen"), "--onnx", str(tmp_path / "m.onnx")]
    assert cli_main(args) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out and (tmp_path / "m.onnx").is_file()
    _one_line(cli_main(args), capsys.readouterr().err, "already exists")
    _one_line(cli_main(["export", str(tmp_path / "nowhere"), "--onnx", str(tmp_path / "n.onnx")]),
              capsys.readouterr().err, "no model at")


@pytest.mark.parametrize("args, needles", [
    (["--ranks", "1,x"], ["--ranks", "comma-separated integers"]),
    (["--ranks", "0,4"], ["--ranks must be positive integers", "0"]),
    (["--energies", "0.9,1.5"], ["--energies must lie in (0, 1]", "1.5"]),
    (["--energies", "0"], ["--energies must lie in (0, 1]"]),
    (["--ranks", "2", "--retrain-method", "sgd"], ["--retrain-method", "invalid choice"]),
    (["--ranks", "2"], ["no checkpoint at", "nowhere"]),
])
def test_cli_bad_input_is_one_line(args, needles, tmp_path, capsys):
    try:
        code = cli_main(["--db", str(tmp_path / "db"), "compress", str(tmp_path / "nowhere"), "--out",
                         str(tmp_path / "o"), *args])
    except SystemExit as e:          # argparse's own errors (one line by the CLI's parser)
        code = e.code
    _one_line(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "o").exists()


def test_cli_non_empty_output_is_one_line(tiny, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    code = cli_main(["--db", str(tmp_path / "db"), "compress", str(tiny.run_dir), "--out", str(full), "--ranks", "2"])
    _one_line(code, capsys.readouterr().err, "already exists and is not empty")
    assert (full / "x").read_text() == "keep me" and [f.name for f in full.iterdir()] == ["x"]
