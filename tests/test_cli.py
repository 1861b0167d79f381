"""The `lowrank` command: real subprocesses, real data, exit codes and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(args, tmp_path, env=None):
    e = {**os.environ, "LOWRANK_DB": str(tmp_path / "db.sqlite"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lowrank", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=e, timeout=300)


def test_train_json_and_runs(tmp_path):
    p = run(["train", "--dataset", "mnist", "--train-size", "500", "--test-size", "200",
             "--layers", "784,16,10", "--epochs", "2", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["run_id"] == 1 and len(out["history"]) == 2
    assert 0.3 < out["final"]["test_acc"] <= 1.0
    assert out["config"]["layers"] == [784, 16, 10]
    p = run(["runs", "show", "1", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert shown["status"] == "finished" and len(shown["epochs"]) == 2
    p = run(["runs"], tmp_path)
    assert "finished" in p.stdout and "mnist" in p.stdout
    # A finished run has nothing to resume, and resuming never silently drops a changed flag.
    p = run(["train", "--resume", "1"], tmp_path)
    assert p.returncode == 2 and "already finished (2 of 2 epochs)" in p.stderr and "Traceback" not in p.stderr
    p = run(["train", "--resume", "1", "--epochs", "5", "--lr", "0.1"], tmp_path)
    assert p.returncode == 2 and "--epochs, --lr cannot change it" in p.stderr


@pytest.mark.parametrize("args, needle", [
    (["train", "--optimizer", "rmsprop"], "invalid choice"),
    (["train", "--layers", "784,a,10"], "comma-separated"),
    (["train", "--epochs", "zero"], "invalid int"),
    (["train", "--method", "vanilla", "--rank", "5", "--energy", "0.9"], "only one of rank, energy, param_ratio"),
    (["train", "--rank", "5"], "--rank is an option of method vanilla"),
    (["train", "--method", "vanilla", "--tau", "0.1"], "--tau is an option of method dlrt, not of 'vanilla'"),
    (["train", "--lr", "-1"], "lr must be a positive number"),
    (["train", "--lr", "nan"], "lr must be a positive number"),
    (["train", "--dataset", "nope"], "nope"),
    (["train", "--dataset", "mnist", "--layers", "100,10"], "784"),
    (["runs", "show", "99"], "no run 99"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    p = run(args, tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowrank: error:"), p.stderr
    assert needle in lines[0]


def test_missing_dataset_lists_places_searched(tmp_path):
    p = run(["train", "--dataset", "hoda"], tmp_path,
            env={"LOWRANK_DATA": str(tmp_path / "nowhere"), "LOWRANK_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 2
    assert str(tmp_path / "nowhere") in p.stderr and "cache" in p.stderr
    assert "Traceback" not in p.stderr


def test_datasets_lists_found_places(tmp_path):
    p = run(["datasets", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    names = {d["name"]: d for d in json.loads(p.stdout)}
    assert {"fashion-mnist", "mnist", "hoda"} <= set(names)
    assert names["mnist"]["found"]
