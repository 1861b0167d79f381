"""Experiment files and `compare`: config errors name the key, runs are stored and tagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank import compare
from lowrank.errors import ConfigError
from lowrank.experiment import apply_overrides, load_experiment
from lowrank.sweep_matrix import load_matrix
from lowrank.store import Store

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
[base]
layers = [784, 16, 10]
epochs = 1
batch_size = 50
[base.data]
dataset = "mnist"
train_size = 300
test_size = 200
[[runs]]
label = "dense"
[[runs]]
label = "vanilla r4"
method = { method = "vanilla", rank = 4 }
[[runs]]
label = "impossible rank"
method = { method = "vanilla", rank = 1000 }
[[runs]]
label = "svd"
method = { method = "svd", rank = 4 }
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["compare-default", "thesis-mnist", "ill-conditioned"])
def test_shipped_experiments_load(name):
    exp = load_experiment(ROOT / "configs" / f"{name}.toml")
    assert exp.runs and len({r.label for r in exp.runs}) == len(exp.runs)
    if name == "compare-default":
        methods = {(r.config.method.method, getattr(r.config.method, "integrator", None),
                    getattr(r.config.method, "adaptive", None)) for r in exp.runs}
        assert {m for m, _, _ in methods} == {"dense", "vanilla", "twofactor", "svd", "dlrt"}
        assert ("dlrt", "kls", False) in methods and ("dlrt", "kls", True) in methods
        assert any(m == "dlrt" and i == "parallel" for m, i, _ in methods)
        assert all(r.config.layers == [784, 256, 128, 10] for r in exp.runs)
    if name == "ill-conditioned":
        assert sorted({r.config.method.init_decay for r in exp.runs}) == [1.0, 2.0, 10.0]
    if name == "thesis-mnist":
        assert all(r.config.data.dataset == "mnist" and r.config.batch_size == 64 for r in exp.runs)


def test_shipped_sweep_has_enough_points():
    m = load_matrix(ROOT / "configs" / "sweep-small.toml")
    assert len(m.points) >= 24
    assert all(p.config.data.train_size <= 2000 and p.config.epochs <= 2 for p in m.points)


@pytest.mark.parametrize("text, needle", [
    ('colour = "red"\n[[runs]]\nlabel = "a"', "'colour'"),
    ('[base]\nepochz = 3\n[[runs]]\nlabel = "a"', "'epochz'"),
    ('[base.optim]\nlearning_rate = 0.1\n[[runs]]\nlabel = "a"', "'learning_rate'"),
    ('[[runs]]\nlabel = "a"\nmethod = { method = "vanilla", rnak = 3 }', "'rnak'"),
    ('[[runs]]\nlabel = "a"\noptim = 3', "'optim'"),
    ('[[runs]]\nlabel = "a"\n[[runs]]\nlabel = "a"', "twice"),
    ('[[runs]]\nlabel = "a"\nmethod = { method = "magic" }', "'magic'"),
    ("name = \"x\"", "no runs"),
    ("[[runs]\n", "not valid TOML"),
])
def test_config_errors_name_key_and_file(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_experiment(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_matrix_errors_name_key(tmp_path):
    base = '[matrix]\nmethod = ["dense"]\n'
    for text, needle in [(base + "colour = [1]\n", "'colour'"), (base + "[regularization]\nl3 = 1\n", "'l3'"),
                         ('[matrix]\nmethod = ["nope"]\n', "'nope'"), (base + "[base]\nbad = 1\n", "'bad'"),
                         ('[matrix]\nregularization = ["l7"]\n', "'l7'"), ('[matrix]\nlr = 0.1\n', "'lr'")]:
        p = write(tmp_path, text, "m.toml")
        with pytest.raises(ConfigError) as e:
            load_matrix(p)
        assert needle in str(e.value) and str(p) in str(e.value), text


def test_overrides_accept_dotted_and_sectioned_keys():
    from lowrank.config import TrainConfig

    d = apply_overrides(TrainConfig().to_dict(), {"optim.lr": 0.5, "method": {"rank": 3}, "epochs": 2}, "here")
    assert d["optim"]["lr"] == 0.5 and d["method"]["rank"] == 3 and d["epochs"] == 2


def test_run_experiment_stores_tagged_runs_and_reports_failures(tmp_path):
    exp = load_experiment(write(tmp_path, TINY))
    store = Store(tmp_path / "db.sqlite")
    outcomes = compare.run_experiment(exp, store=store, runs_dir=tmp_path / "runs")
    assert [o.status for o in outcomes] == ["finished", "finished", "failed", "finished"]
    # The impossible rank is refused before anything is written: no row, no folder.
    assert "RankError" in outcomes[2].error and outcomes[2].run_id is None
    rows = store.runs(sweep="compare:tiny")
    assert [(r["sweep_key"], r["status"]) for r in rows] == [
        ("dense", "finished"), ("vanilla r4", "finished"), ("svd", "finished")]
    assert len(list((tmp_path / "runs").iterdir())) == 3
    assert len(store.epochs(rows[0]["id"])) == 1 and rows[0]["config"]["name"] == "dense"
    notes = compare.outcome_notes(outcomes)
    assert len(notes) == 1 and notes[0].startswith("impossible rank: failed")
    store.close()


def test_cli_compare_writes_report(tmp_path, capsys):
    from lowrank.cli import main

    text = TINY.split('[[runs]]\nlabel = "impossible rank"')[0]
    p = write(tmp_path, text)
    code = main(["--db", str(tmp_path / "db.sqlite"), "compare", "--config", str(p), "--out", str(tmp_path / "out"),
                 "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "wall time" in out and "vanilla r4" in out and "lowrank report 1 2" in out
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "report.md").exists()
