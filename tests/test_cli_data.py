"""The `lowrank` command on users' own data and models: real subprocesses, real MNIST rows.

Every dataset file here is made from 400 real MNIST training images (the first 40 of
each class in shared/datasets/mnist/mnist_5k.csv.gz, in a fixed shuffled order),
written to a temporary folder as .npz, CSV and a PNG image folder, or turned into a
regression table. Commands run through the ``lowrank_cli`` fixture (conftest.py):
``python -m lowrank`` with cwd in a temporary folder, its own cache and ``--db``.

Thresholds were measured on this 2-core CPU (seeds 0-3 where noted) and are set well
below the lowest value seen; the runs themselves use seed 0 and are deterministic.
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_checks import one_line_error

TESTS = Path(__file__).resolve().parent
PER_CLASS = 40
N = 10 * PER_CLASS
N_TEST_NPZ = 100           # the .npz carries its own split: 300 train, 100 test
N_TEST_SPLIT = 80          # CSV and image folder: test_fraction 0.2 of 400
# 2 epochs of batch 16 (lr 3e-3) on 300-320 images. Measured final test_acc, seeds 0-3:
# npz 0.61-0.67, csv 0.70-0.79, images 0.70-0.80 (chance: 0.1).
FIT = ["--layers", "784,32,10", "--epochs", "2", "--batch-size", "16", "--lr", "0.003", "--json"]
MIN_FILE_ACC = 0.5
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None



def ok_json(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return json.loads(p.stdout)


def finish(procs: dict[str, subprocess.Popen], timeout: float = 300) -> dict[str, subprocess.CompletedProcess]:
    """Wait for background commands; their results by key."""
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=timeout)
        out[key] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def db_rows(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        con.close()


def inspect_rows(stdout: str) -> dict[str, list[str]]:
    """``lowrank inspect``'s text table: layer name -> its whitespace-separated cells."""
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["layer", "type"], stdout
    return {cells[0]: cells for cells in (line.split() for line in lines[1:])}


# --------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def mnist_rows(datasets_dir) -> tuple[np.ndarray, np.ndarray]:
    """400 real MNIST training images, uint8 (400, 784), and labels, int64 (400,), in a fixed shuffled order."""
    path = datasets_dir / "mnist" / "mnist_5k.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found (set LOWRANK_DATA)")
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    rows = [lines[c * 500 + i] for c in range(10) for i in range(PER_CLASS)]  # 500 per class, in class order
    table = np.array([r.split(b",") for r in rows]).astype(np.int64)
    x, y = table[:, :784].astype(np.uint8), table[:, 784]
    assert np.array_equal(np.bincount(y), [PER_CLASS] * 10)
    order = np.random.default_rng(0).permutation(N)
    return x[order], y[order]


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    k = N - N_TEST_NPZ
    np.savez(path, x_train=x[:k].reshape(-1, 28, 28), y_train=y[:k], x_test=x[k:].reshape(-1, 28, 28), y_test=y[k:])
    return path


def write_csv(path: Path, header: list[str], rows) -> Path:
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(map(str, r)) + "\n")
    return path


def write_pngs(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    from PIL import Image

    for i, (img, lab) in enumerate(zip(x, y)):
        d = root / str(int(lab))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.reshape(28, 28), mode="L").save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def file_runs(mnist_rows, tmp_path_factory, lowrank_cli):
    """The same 400 images as .npz, CSV (header, `label` column) and PNG folder, each trained by
    ``lowrank train --dataset PATH`` (side by side, into one database)."""
    x, y = mnist_rows
    root = tmp_path_factory.mktemp("file-runs")
    paths = {
        "npz": write_npz(root / "digits.npz", x, y),
        "csv": write_csv(root / "digits.csv", [f"pixel{i}" for i in range(784)] + ["label"],
                         (list(img) + [int(lab)] for img, lab in zip(x.tolist(), y))),
        "images": write_pngs(root / "digit-images", x, y),
    }
    db = root / "runs.db"
    # the CSV run also writes TensorBoard logs (when tensorboard is installed): test_tensorboard_* read them
    tb = ["--tensorboard", "tb"] if HAVE_TENSORBOARD else []
    procs = {fmt: lowrank_cli(["train", "--db", db, "--dataset", path, *FIT, *(tb if fmt == "csv" else [])],
                              root, background=True)
             for fmt, path in paths.items()}
    return {"root": root, "db": db, "paths": paths, "results": finish(procs), "y_test_npz": y[N - N_TEST_NPZ:]}


@pytest.mark.parametrize("fmt", ["npz", "csv", "images"])
def test_train_on_a_dataset_file(file_runs, fmt):
    out = ok_json(file_runs["results"][fmt])
    path, root = file_runs["paths"][fmt], file_runs["root"]
    final, history = out["final"], out["history"]
    assert len(history) == 2 and [h["epoch"] for h in history] == [0, 1]
    assert final["test_acc"] > MIN_FILE_ACC, final
    assert final["test_acc"] == history[-1]["test_acc"]
    assert final.get("test_mae") is None and final.get("test_r2") is None  # classification: no regression metrics
    assert out["config"]["data"]["dataset"] == str(path)
    # the database row names the path as its dataset and points at the run folder
    (row,) = [r for r in db_rows(file_runs["db"]) if r["id"] == out["run_id"]]
    assert row["dataset"] == str(path) and row["status"] == "finished" and row["method"] == "dense"
    run_dir = Path(row["run_dir"])
    assert run_dir == (root / out["run_dir"]).resolve()
    assert run_dir.is_dir() and run_dir.name == f"{out['run_id']:04d}-dense-{path.name}"
    assert all((run_dir / f).is_file() for f in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"))
    # the test split is the file's own (npz) or test_fraction of the rows: the confusion matrix counts it
    summary = json.loads((run_dir / "summary.json").read_text())
    confusion = np.array(summary["confusion"])
    assert confusion.shape == (10, 10)
    assert confusion.sum() == (N_TEST_NPZ if fmt == "npz" else N_TEST_SPLIT)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(final["test_acc"], abs=1e-9)
    if fmt == "npz":
        assert confusion.sum(1).tolist() == np.bincount(file_runs["y_test_npz"], minlength=10).tolist()
    assert summary["test_acc"] == pytest.approx(final["test_acc"], abs=1e-12)


def test_runs_lists_with_db_before_or_after_the_subcommand(file_runs, lowrank_cli):
    db, root = file_runs["db"], file_runs["root"]
    res = finish({"after": lowrank_cli(["runs", "--db", db], root, background=True),
                  "before": lowrank_cli(["--db", db, "runs"], root, background=True),
                  "default": lowrank_cli(["runs"], root, background=True)})
    for p in res.values():
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert res["after"].stdout == res["before"].stdout
    listed = db_rows(db)
    ids = sorted(json.loads(p.stdout)["run_id"] for p in file_runs["results"].values())
    assert [r["id"] for r in listed] == ids == [1, 2, 3]
    assert {r["dataset"] for r in listed} == {str(p) for p in file_runs["paths"].values()}
    assert all(r["status"] == "finished" for r in listed)
    lines = res["after"].stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["id", "status", "method", "dataset"] and len(lines) == 4
    for r in listed:
        (line,) = [ln for ln in lines[1:] if ln.split()[0] == str(r["id"])]
        assert line.split()[1:5] == ["finished", "dense", r["dataset"], "2"]
        assert line.split()[5] == f"{json.loads(r['summary'])['test_acc']:.4f}"
    # without --db, $LOWRANK_DB (the fixture's default.db) is read: none of these runs is there
    assert res["default"].stdout.strip().splitlines() == lines[:1]


# --------------------------------------------------------------------------- regression

# 5 epochs of batch 16 on 320 rows, target = the standardised mean pixel intensity (the
# seed also draws the 80 test rows). Measured test R^2, seeds 0-4: 0.79, 0.91, 0.84, 0.46,
# 0.62 (a constant prediction scores <= 0).
MIN_R2 = 0.3


@pytest.fixture(scope="module")
def regression_runs(mnist_rows, tmp_path_factory, lowrank_cli):
    """A CSV whose `target` column is the standardised mean pixel intensity of each row, trained with
    ``--loss mse``, ``--loss auto`` (into ``reg.db``) and ``--loss cross_entropy`` (``ce.db``, ``runs-ce/``)."""
    x, _ = mnist_rows
    cwd = tmp_path_factory.mktemp("regression")
    intensity = x.astype(np.float64).mean(1) / 255.0
    target = (intensity - intensity.mean()) / intensity.std()  # a real value computed from the features
    # the target is the FIRST column: --label-column finds it by name
    path = write_csv(cwd / "reg.csv", ["target"] + [f"p{i}" for i in range(784)],
                     ([f"{t:.6f}"] + img for t, img in zip(target, x.tolist())))
    common = ["train", "--dataset", path, "--label-column", "target", "--layers", "784,16,1", "--epochs", "5",
              "--batch-size", "16", "--json"]
    procs = {
        "mse": lowrank_cli([*common, "--db", cwd / "reg.db", "--loss", "mse"], cwd, background=True),
        "auto": lowrank_cli([*common, "--db", cwd / "reg.db", "--loss", "auto"], cwd, background=True),
        "ce": lowrank_cli([*common, "--db", cwd / "ce.db", "--runs-dir", "runs-ce", "--loss", "cross_entropy"],
                          cwd, background=True),
    }
    return {"cwd": cwd, "path": path, "results": finish(procs)}


def test_regression_csv_reports_mae_rmse_r2(regression_runs):
    from lowrank.data import DataConfig, load_dataset

    res, cwd, path = regression_runs["results"], regression_runs["cwd"], regression_runs["path"]
    mse = ok_json(res["mse"])
    f = mse["final"]
    assert {"test_mae", "test_rmse", "test_r2"} <= set(f), f
    assert f["test_acc"] is None
    assert f["test_r2"] > MIN_R2, f
    assert 0 < f["test_mae"] <= f["test_rmse"]
    assert f["test_rmse"] ** 2 == pytest.approx(f["test_loss"], rel=1e-4)  # test loss is the test MSE
    # R^2 = 1 - MSE / Var(y) over the test split (targets are not normalised)
    test_y = load_dataset(DataConfig(dataset=str(path), label_column="target"), seed=0).test.y.double()
    assert len(test_y) == N_TEST_SPLIT
    assert f["test_r2"] == pytest.approx(1 - f["test_rmse"] ** 2 / test_y.var(correction=0).item(), abs=1e-4)
    assert all(h["test_r2"] is not None and h["test_acc"] is None for h in mse["history"])
    assert mse["config"]["layers"] == [784, 16, 1] and mse["config"]["loss"] == "mse"
    (row,) = [r for r in db_rows(cwd / "reg.db") if r["id"] == mse["run_id"]]
    assert row["dataset"] == str(path) and row["status"] == "finished"
    assert json.loads(row["summary"])["test_r2"] == pytest.approx(f["test_r2"], abs=1e-12)
    # auto picks mse for real targets: the same seeded run, the same numbers
    auto = ok_json(res["auto"])
    assert auto["config"]["loss"] == "auto"
    for key in ("test_loss", "test_mae", "test_rmse", "test_r2", "train_loss"):
        assert auto["final"][key] == pytest.approx(f[key], rel=1e-9, abs=1e-12), key
    # a classification loss on real targets: one line, exit 2
    one_line_error(res["ce"], "cross_entropy", "real values", "--loss mse")


def test_rejected_loss_leaves_no_run_behind(regression_runs):
    cwd = regression_runs["cwd"]
    assert regression_runs["results"]["ce"].returncode == 2
    assert not (cwd / "runs-ce").exists()
    assert not (cwd / "ce.db").exists() or db_rows(cwd / "ce.db") == []


# --------------------------------------------------------------------------- models

# small_cnn (4 channels), 2 epochs of batch 16, lr 0.01, on 300 MNIST images; measured
# test_acc on 200 test images, seeds 0-2: 0.61, 0.755, 0.745.
MIN_CNN_ACC = 0.35


def test_user_model_and_lenet5_train_and_inspect(tmp_path, lowrank_cli):
    db = tmp_path / "models.db"
    small = ["--dataset", "mnist", "--train-size", "300", "--test-size", "200", "--json", "--db", db]
    procs = {
        "cnn": lowrank_cli(["train", *small, "--model", "user_models:small_cnn", "--model-args", '{"channels": 4}',
                            "--epochs", "2", "--batch-size", "16", "--lr", "0.01"],
                           tmp_path, pythonpath=[TESTS], background=True),
        "lenet": lowrank_cli(["train", *small, "--model", "lenet5", "--method", "vanilla", "--rank", "8",
                              "--epochs", "1"], tmp_path, background=True),
    }
    res = finish(procs)
    cnn, lenet = ok_json(res["cnn"]), ok_json(res["lenet"])
    assert cnn["config"]["model"] == "user_models:small_cnn" and cnn["config"]["model_args"] == {"channels": 4}
    assert cnn["final"]["test_acc"] > MIN_CNN_ACC, cnn["final"]
    assert len(lenet["history"]) == 1 and lenet["config"]["method"]["rank"] == 8
    assert 0.0 <= lenet["final"]["test_acc"] <= 1.0
    ranks = json.loads((tmp_path / lenet["run_dir"] / "summary.json").read_text())["ranks"]
    assert ranks["fc0"] == 8 and "fc1" not in ranks  # (conv layers: not checked)

    procs = {
        "cnn": lowrank_cli(["inspect", cnn["run_dir"]], tmp_path, pythonpath=[TESTS], background=True),
        "lenet": lowrank_cli(["inspect", tmp_path / lenet["run_dir"]], tmp_path, background=True),
    }
    res = finish(procs)
    for key in ("cnn", "lenet"):
        assert res[key].returncode == 0 and "Traceback" not in res[key].stderr, res[key].stderr
    # small_cnn: its one Linear is the output layer, kept dense (conv layers are not converted yet, and
    # whether inspect lists them is not checked here)
    rows = inspect_rows(res["cnn"].stdout)
    assert [n for n, cells in rows.items() if cells[1] in ("Linear", "VanillaLinear")] == ["fc0"]
    assert rows["fc0"][1:3] == ["Linear", "10x196"] and rows["fc0"][-2:] == ["(kept", "dense)"]
    assert rows["fc0"][4] == str(4 * 7 * 7 * 10 + 10)
    # lenet5 + vanilla rank 8: fc0 (800 -> 500) is VanillaLinear, the output layer fc1 stays Linear
    rows = inspect_rows(res["lenet"].stdout)
    assert [n for n, cells in rows.items() if cells[1] in ("Linear", "VanillaLinear")] == ["fc0", "fc1"]
    assert rows["fc0"][1:6] == ["VanillaLinear", "500x800", "8", str(800 * 500 + 500),
                                str(8 * (800 + 500) + 8 * 8 + 500)]
    assert "(kept" not in rows["fc0"]
    assert rows["fc1"][1:4] == ["Linear", "10x500", "-"] and rows["fc1"][-2:] == ["(kept", "dense)"]


# --------------------------------------------------------------------------- TensorBoard

@pytest.fixture(scope="module")
def tensorboard_run(file_runs):
    """The CSV run of ``file_runs``, which also wrote ``--tensorboard tb``: (JSON output, cwd)."""
    if not HAVE_TENSORBOARD:
        pytest.skip("tensorboard is not installed")
    return ok_json(file_runs["results"]["csv"]), file_runs["root"]


def scalars(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return acc


def test_tensorboard_logs_every_epoch(tensorboard_run):
    out, cwd = tensorboard_run
    assert [d.name for d in (cwd / "tb").iterdir()] == [f"{out['run_id']:04d}-dense"]
    log_dir = cwd / "tb" / f"{out['run_id']:04d}-dense"
    assert glob.glob(str(log_dir / "events.out.tfevents.*"))
    acc = scalars(log_dir)
    assert {"test_acc", "test_loss", "train_loss", "lr"} <= set(acc.Tags()["scalars"])
    for tag in ("test_acc", "test_loss", "train_loss"):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        for e, h in zip(events, out["history"]):
            assert e.value == pytest.approx(h[tag], abs=1e-6), tag
    lr = [e.value for e in acc.Scalars("lr")]
    assert len(lr) == 2 and 0 < lr[1] < lr[0] <= 3e-3  # cosine schedule decays from --lr


# --------------------------------------------------------------------------- old checkpoints

def test_inspect_old_checkpoint_is_a_one_line_error(tmp_path, lowrank_cli):
    payload = {"format": "lowrank-checkpoint-1", "config": {"method": "vanilla", "rank": 8, "layers": [4, 3, 2]},
               "model": {"fc0.weight": torch.zeros(3, 4)}, "structure": {}}
    torch.save(payload, tmp_path / "old.pt")
    one_line_error(lowrank_cli(["inspect", "old.pt"], tmp_path), "older lowrank", "lowrank-checkpoint-1", "old.pt")
