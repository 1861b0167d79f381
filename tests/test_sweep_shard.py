"""Sweeps across machines: ``--shard I/N`` shares of the grid, ``lowrank merge`` of their databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cli_checks import one_line_error
from lowrank.errors import ConfigError, StoreError
from lowrank.store_merge import merge_databases
from lowrank.store import Store
from lowrank.sweep import plan_sweep, run_sweep
from lowrank.sweep_matrix import load_matrix
from lowrank.sweep_report import write_sweep_report
from lowrank.sweep_shard import Shard, parse_shard, shard_matrix

MATRIX = """
name = "tiny"
[base]
layers = [784, 16, 10]
[base.data]
dataset = "mnist"
test_size = 100
[matrix]
method = {methods}
rank = [4]
lr = {lrs}
epochs = [1]
train_size = [120]
"""


def write_matrix(path: Path, methods=("dense", "vanilla", "dlrt"), lrs=(0.002, 0.02)) -> Path:
    path.write_text(MATRIX.format(methods=list(methods), lrs=list(lrs)).replace("'", '"'))
    return path


def test_shards_are_disjoint_cover_the_grid_and_ignore_list_order(tmp_path) -> None:
    m = load_matrix(write_matrix(tmp_path / "a.toml"))
    shuffled = load_matrix(write_matrix(tmp_path / "b.toml", methods=("dlrt", "dense", "vanilla"), lrs=(0.02, 0.002)))
    for n in (1, 2, 3, 4, 7):
        shares = [{p.key for p in shard_matrix(m, Shard(i, n)).points} for i in range(1, n + 1)]
        assert sorted(k for s in shares for k in s) == sorted(p.key for p in m.points)      # each point once
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert shares == [{p.key for p in shard_matrix(shuffled, Shard(i, n)).points} for i in range(1, n + 1)]


@pytest.mark.parametrize("text", ["3/2", "0/3", "a/b", "1", "1/0", "-1/3", ""])
def test_bad_shards_are_refused(text) -> None:
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(text)


def test_bad_shard_is_a_one_line_cli_error(lowrank_cli, tmp_path) -> None:
    write_matrix(tmp_path / "m.toml")
    one_line_error(lowrank_cli(["sweep", "m.toml", "--shard", "3/2", "--db", "x.db"], tmp_path), "shard 3/2")
    assert not (tmp_path / "x.db").exists()


def test_three_shards_merged_hold_every_grid_point_once(lowrank_cli, tmp_path) -> None:
    matrix = load_matrix(write_matrix(tmp_path / "m.toml"))
    for i in (1, 2, 3):          # as three machines would, each into its own database
        plan = run_sweep(shard_matrix(matrix, Shard(i, 3)), db_path=tmp_path / f"s{i}.db",
                         runs_dir=tmp_path / f"runs{i}")
        assert plan.count("start") == 2
    r = lowrank_cli(["merge", "all.db", "s1.db", "s2.db", "s3.db"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 runs, 0 duplicates" in r.stdout
    store = Store(tmp_path / "all.db")
    runs = store.runs()
    keys = [row["sweep_key"] for row in runs]
    assert sorted(keys) == sorted(p.key for p in matrix.points)        # every grid point, once
    assert all(row["status"] == "finished" and Path(row["run_dir"]).is_dir() for row in runs)
    assert all(len(store.epochs(row["id"])) == 1 and store.epochs(row["id"])[0]["test_acc"] is not None
               for row in runs)
    # The sweep report reads the merged database: nothing left to train.
    plan = plan_sweep(matrix, store)
    assert plan.count("done") == 6
    files = write_sweep_report(matrix, store, tmp_path / "rall")
    assert Path(files.html).is_file() and "dlrt" in Path(files.markdown).read_text()
    # Merging a database with its own shards again keeps every point once.
    again = merge_databases(tmp_path / "again.db", [tmp_path / "all.db", tmp_path / "s2.db", tmp_path / "s1.db"])
    assert (again.runs, again.duplicates) == (6, 4)
    # A damaged input: one line, nothing written.
    (tmp_path / "bad.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 300)
    one_line_error(lowrank_cli(["merge", "out.db", "s1.db", "bad.db"], tmp_path), "bad.db", "nothing was written")
    assert not (tmp_path / "out.db").exists()
    assert not list(tmp_path.glob(".out.db*"))
    with pytest.raises(StoreError, match="exists"):
        merge_databases(tmp_path / "all.db", [tmp_path / "s1.db"])


def test_a_grid_point_in_two_databases_keeps_the_finished_run(tmp_path) -> None:
    cfg = {"method": {"method": "dense"}, "data": {"dataset": "mnist"}}
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    ia = a.create_run(cfg, "/nowhere/a", sweep="s", sweep_key="k=1")
    a.set_status(ia, "interrupted")
    ib = b.create_run(cfg, "/nowhere/b", sweep="s", sweep_key="k=1")
    b.set_status(ib, "finished", {"test_acc": 0.5})
    b.log_epoch(ib, 0, {"train_loss": 1.0, "test_acc": 0.5}, {}, None)
    plain = [b.create_run(cfg, "/nowhere/c") for _ in range(2)]                 # two runs of one config
    a.close(), b.close()
    r = merge_databases(tmp_path / "m.db", [tmp_path / "a.db", tmp_path / "b.db"])
    assert (r.runs, r.duplicates, r.missing_folders) == (3, 1, 3)
    m = Store(tmp_path / "m.db")
    point = [row for row in m.runs() if row["sweep_key"] == "k=1"]
    assert len(point) == 1 and point[0]["status"] == "finished" and point[0]["run_dir"] == "/nowhere/b"
    assert len(m.epochs(point[0]["id"])) == 1
    assert len(plain) == 2 and sum(row["sweep"] is None for row in m.runs()) == 2


def test_a_foreign_database_is_refused(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "other.db")
    conn.execute("CREATE TABLE runs (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a lowrank results database"):
        merge_databases(tmp_path / "m.db", [tmp_path / "other.db"])
    assert not (tmp_path / "m.db").exists()


def test_the_database_merge_module_does_not_shadow_lowrank_merge() -> None:
    import lowrank
    import lowrank.cli  # noqa: F401  (imports the database merge for `lowrank merge`)
    import lowrank.store_merge  # noqa: F401

    assert lowrank.merge is lowrank.convert.__globals__["merge"]   # still the inverse of convert
