"""``lowrank train --nproc N``: torchrun processes, one recording; errors stay one line."""

from __future__ import annotations

import json

import pytest

from cli_checks import one_line_error
from lowrank.store import Store

TRAIN = ["train", "--dataset", "fashion-mnist", "--train-size", "256", "--test-size", "128", "--layers", "784,16,10",
         "--method", "dlrt", "--integrator", "parallel", "--rank", "4", "--adaptive", "--tau", "0.3",
         "--epochs", "2", "--batch-size", "64", "--db", "r.db"]


@pytest.mark.slow
def test_two_processes_record_one_run(lowrank_cli, tmp_path) -> None:
    p = lowrank_cli([*TRAIN, "--nproc", "2", "--check-replicas", "1", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])              # process 0's output only
    assert len(p.stdout.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr and "torch.distributed" not in p.stderr
    store = Store(tmp_path / "r.db")
    runs = store.runs()
    assert [r["id"] for r in runs] == [out["run_id"]] and runs[0]["status"] == "finished"
    assert len(store.epochs(out["run_id"])) == 2
    assert sorted(x.name for x in (tmp_path / "runs").iterdir()) == [runs[0]["run_dir"].rsplit("/", 1)[1]]
    # A mistake found by process 0 after the launch is one line, exit 2 (here: resuming a finished run).
    one_line_error(lowrank_cli(["train", "--resume", str(out["run_id"]), "--nproc", "2", "--db", "r.db"], tmp_path),
                   "already finished")


def test_bad_process_counts_are_one_line_errors(lowrank_cli, tmp_path) -> None:
    one_line_error(lowrank_cli([*TRAIN, "--nproc", "0"], tmp_path), "--nproc")
    assert not (tmp_path / "r.db").exists()
