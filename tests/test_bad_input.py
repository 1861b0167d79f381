"""The cases of the reliability issue that were tracebacks or silently accepted: each is now
one ``lowrank: error:`` line and exit code 2 (or, for ``compare``, exit 1 with the report
written), and nothing is written before the config is validated."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import pytest

from lowrank.cli import main

TINY = ["--dataset", "mnist", "--train-size", "100", "--test-size", "50", "--layers", "784,8,10", "--epochs", "1",
        "--quiet"]


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(capsys, *args, needle: str) -> str:
    rc, _, err = _cli(capsys, *args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lowrank: error:"), (rc, err)
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [["runs"], ["runs", "show", "1"], ["report"], ["train", *TINY]])
def test_a_file_that_is_not_a_database(tmp_path, capsys, args):
    db = tmp_path / "bad.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x07" * 3000)
    _one_line(capsys, *args, "--db", db, needle=f"results database {db} is damaged or is not a lowrank database")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--seed", "-1"], "seed must be an integer in 0..4294967295"),
    (["--method", "dlrt", "--adaptive", "--tau", "1.5"], "tau 1.5 is relative to ||S||_F, so it must be below 1"),
    (["--method", "dlrt", "--adaptive", "--tau", "inf"], "tau must be a finite number >= 0"),
    (["--data-dir", "/nonexistent/data"], "data_dir '/nonexistent/data' is not a folder"),
])
def test_bad_flags_write_nothing(tmp_path, capsys, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)
    _one_line(capsys, "train", *TINY, *flags, "--db", tmp_path / "r.db", needle=needle)
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "r.db").exists() or not sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT COUNT(*) FROM runs").fetchone()[0]


def test_a_runs_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runsfile").write_text("")
    _one_line(capsys, "train", *TINY, "--db", tmp_path / "r.db", "--runs-dir", tmp_path / "runsfile",
              needle="is a file; pass a folder to --runs-dir")


@pytest.mark.parametrize("toml, needle", [
    ('name = "x"\n[base]\nepochs = "2"\n[[runs]]\nlabel = "d"\n', "epochs must be an integer, got '2'"),
    ('name = "x"\n[[runs]]\nlabel = "d"\nmethod = { method = "dlrt", adaptive = "yes" }\n',
     "adaptive must be true or false, got 'yes'"),
    ('name = "/tmp/elsewhere"\n[[runs]]\nlabel = "d"\n', "must be a plain name"),
    ('name = "x"\n[base.data]\ndataset = "../outside.csv"\n[[runs]]\nlabel = "d"\n',
     "data.dataset = '../outside.csv' in [base]"),
    ('name = "x"\n[[runs]]\nlabel = "d"\nmethod = { method = "lora", base_checkpoint = "/etc/passwd" }\n',
     "leads out of the folder"),
])
def test_bad_experiment_files(tmp_path, capsys, toml, needle):
    path = tmp_path / "cfg" / "x.toml"
    path.parent.mkdir()
    path.write_text(toml)
    _one_line(capsys, "compare", "--config", path, "--db", tmp_path / "r.db", needle=needle)
    assert not (tmp_path / "r.db").exists()


def test_sweep_values_that_print_alike_are_two_points(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[base]\nlayers = [784, 8, 10]\n[base.data]\ndataset = "mnist"\n'
                    '[matrix]\nmethod = ["dense"]\nlr = [0.1000001, 0.1000002]\n')
    rc, out, _ = _cli(capsys, "sweep", path, "--dry-run", "--db", tmp_path / "r.db")
    assert rc == 0 and "lr=0.1000001" in out and "lr=0.1000002" in out and "2 grid points" in out


def test_compare_whose_runs_diverge_exits_1_and_names_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.toml"
    path.write_text('name = "allfail"\n[base]\nepochs = 1\nlayers = [784, 8, 10]\n[base.data]\ndataset = "mnist"\n'
                    'train_size = 100\ntest_size = 50\n[base.optim]\noptimizer = "sgd"\nlr = 1e30\n'
                    '[[runs]]\nlabel = "d"\n')
    rc, _, err = _cli(capsys, "compare", "--config", path, "--db", tmp_path / "r.db", "--quiet")
    assert rc == 1 and "1 of 1 runs did not finish: d (diverged)" in err
    assert (tmp_path / "report" / "allfail" / "report.html").exists()


def test_a_run_named_like_mathtext_is_drawn_as_typed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "r.db"
    assert _cli(capsys, "train", *TINY, "--name", r"$\foo$", "--db", db)[0] == 0
    rc, _, err = _cli(capsys, "report", "--db", db, "--out", tmp_path / "rep")
    assert rc == 0, err
    assert r"$\foo$" in (tmp_path / "rep" / "report.html").read_text()


def test_a_gzip_bomb_is_refused_before_it_fills_the_memory(tmp_path, capsys):
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"0," * (40 << 20)))  # 80 MB of text in ~80 kB
    _one_line(capsys, "train", "--dataset", bomb, "--epochs", "1", "--db", tmp_path / "r.db", "--quiet",
              needle="a decompression bomb?")
    assert not (tmp_path / "r.db").exists() or not sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT COUNT(*) FROM runs").fetchone()[0]


def test_a_checkpoint_of_another_shape_is_one_line(tmp_path, capsys):
    import torch

    ck = tmp_path / "k.pt"
    torch.save({"model": {"fc0.weight": torch.zeros(1)}}, ck)
    line = _one_line(capsys, "train", *TINY, "--method", "lora", "--base-checkpoint", ck, "--db", tmp_path / "r.db",
                     needle="does not fit the model: Missing key(s)")
    assert 'Unexpected key(s) in state_dict: "model"' in line
