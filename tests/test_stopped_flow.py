"""Stopped-flow kinetics: generator -> reader round trip, the reader's errors, the split by experiment
folder, the curve_fit baseline, standardized targets, and the CLI end to end (train, compare, generate).

Every data set here is written by the project's own generator into tmp_path, kept small (2-4
experiments, 2-4 traces each, a few hundred rows per trace) so each test takes seconds.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from openpyxl import Workbook, load_workbook

from cli_checks import one_line_error
from lowrank.data import DataConfig, Prepared, build_splits, load_dataset
from lowrank.data.bka import parse_bka, read_bka
from lowrank.data.stopped_flow import amplitude_scaled, scan_stopped_flow, split_experiments, trace_features
from lowrank.errors import ConfigError, CorruptFileError
from lowrank.experiment import load_experiment
from lowrank.kinetics.curve_fit import fit_trace
from lowrank.kinetics.generate import GeneratorConfig, generate
from lowrank.target_scale import TargetScale

SMALL = dict(min_files=2, max_files=4, rows=400)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))


def _truth(root: Path) -> list[dict[str, str]]:
    with open(root / "truth.csv", newline="") as f:
        return list(csv.DictReader(f))


def _small(root: Path, experiments: int = 3, seed: int = 1, **kw) -> Path:
    generate(root, GeneratorConfig(experiments=experiments, seed=seed, **{**SMALL, **kw}))
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset=f"stopped-flow:{root}", **{"trace_pairs": 50, "normalize": False, **kw})


def _rewrite_xlsx(path: Path, edit) -> None:
    rows = [list(r) for r in load_workbook(path).worksheets[0].iter_rows(values_only=True)]
    rows = edit(rows)
    wb = Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    wb.save(path)


# -- generator -> reader ---------------------------------------------------------------------------------

def test_round_trip_gives_the_true_labels_and_the_traces(tmp_path):
    root = _small(tmp_path / "sf")
    truth = _truth(root)
    layout = scan_stopped_flow(root)
    read = {(e.name, t.path.name): (t.rate, t.x_start) for e in layout.experiments for t in e.traces}
    assert read == {(r["experiment"], r["filename"]): (float(r["k"]), float(r["x_start"])) for r in truth}
    s = load_dataset(_cfg(root, test_fraction=0.34))
    labels = np.sort(np.concatenate([s.train.y.numpy(), s.test.y.numpy()]))
    assert np.array_equal(labels, np.sort(np.array([float(r["k"]) for r in truth], dtype=np.float32)))
    assert s.task == "regression" and s.input_dim == 100 and s.sample_shape == (100,)
    # a sample is the trace's rows from X_start on, interleaved (t, v), zero-padded / truncated
    e = layout.experiments[0]
    tr = e.traces[0]
    b = read_bka(tr.path)
    keep = b.time_ms >= tr.x_start
    row = torch.from_numpy(trace_features(b.time_ms, b.volts, tr.x_start, 50))
    assert row[0] == pytest.approx(tr.x_start) and float(row[0]) == np.float32(b.time_ms[keep][0])
    assert np.array_equal(row[1:100:2].numpy(), b.volts[keep][:50].astype(np.float32))
    split = s.train if any(torch.equal(row, x) for x in s.train.x) else s.test
    assert any(torch.equal(row, x) for x in split.x)


def test_padding_truncation_and_down_sampling():
    t = np.arange(10) * 1.0
    v = 10 - t
    f = trace_features(t, v, 3.0, pairs=10)
    assert f[:14].tolist() == [3, 7, 4, 6, 5, 5, 6, 4, 7, 3, 8, 2, 9, 1] and not f[14:].any()
    assert trace_features(t, v, 3.0, pairs=2).tolist() == [3, 7, 4, 6]
    assert trace_features(t, v, 3.0, pairs=3, stride=3).tolist() == [3, 7, 6, 4, 9, 1]
    scaled = amplitude_scaled(np.array([5.0, 5.0, 3.0, 1.0, 1.0]), head=2, tail=2)
    assert scaled.tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError):
        trace_features(t, v, 11.0, pairs=2)


def test_split_is_by_experiment_folder(tmp_path):
    root = _small(tmp_path / "sf", experiments=4, seed=3)
    exp_of = {np.float32(float(r["k"])).item(): r["experiment"] for r in _truth(root)}
    seen_test = set()
    for seed in range(4):
        s = load_dataset(_cfg(root, test_fraction=0.25), seed=seed)
        train = {exp_of[v] for v in s.train.y.tolist()}
        test = {exp_of[v] for v in s.test.y.tolist()}
        assert len(test) == 1 and len(train) == 3 and not train & test
        seen_test |= test
    assert len(seen_test) > 1  # the seed picks the folders
    # train/ and test/ folders give the split
    (root / "train").mkdir()
    (root / "test").mkdir()
    for name in ("exp_01", "exp_02", "exp_03"):
        shutil.move(root / name, root / "train" / name)
    shutil.move(root / "exp_04", root / "test" / "exp_04")
    s = load_dataset(_cfg(root))
    assert {exp_of[v] for v in s.test.y.tolist()} == {"exp_04"}
    assert {exp_of[v] for v in s.train.y.tolist()} == {"exp_01", "exp_02", "exp_03"}
    assert split_experiments(scan_stopped_flow(root), 0.5, 0).tolist() == [False, False, False, True]


def test_val_fraction_and_classification_are_refused(tmp_path):
    root = _small(tmp_path / "sf")
    with pytest.raises(ConfigError, match="split by experiment folder"):
        load_dataset(_cfg(root, val_fraction=0.2))
    with pytest.raises(ConfigError, match="regression"):
        load_dataset(_cfg(root, task="classification"))


def test_a_second_load_comes_from_the_cache(tmp_path):
    root = _small(tmp_path / "sf")
    a = load_dataset(_cfg(root))
    for p in root.glob("exp_*/*.bka"):
        p.chmod(0)  # unreadable now: a second load must not decode them
    try:
        b = load_dataset(_cfg(root))
    finally:
        for p in root.glob("exp_*/*.bka"):
            p.chmod(0o644)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


# -- reader errors -------------------------------------------------------------------------------------------

def _bka_lines(root: Path) -> tuple[Path, list[str]]:
    p = sorted(root.glob("exp_01/*.bka"))[0]
    return p, p.read_text().splitlines()


def _break(root: Path, case: str) -> tuple[str, ...]:
    """Damage ``root`` as ``case`` says; return what the error must name."""
    folder = root / "exp_01"
    p, lines = _bka_lines(root)
    if case == "no_data_marker":
        lines[17] = "DATA FOLLOWS"
        p.write_text("\n".join(lines))
        return str(p), "line 18", "_DATA"
    if case == "non_numeric_row":
        lines[29] = "2.00\tn/a"
        p.write_text("\n".join(lines))
        return str(p), "line 30", "volts"
    if case == "too_few_rows":
        p.write_text("\n".join(lines[:10]))
        return str(p), "line 11", "18 metadata lines"
    if case == "one_data_row":
        p.write_text("\n".join(lines[:19]))
        return str(p), "line 19", "at least 2 rows"
    if case == "missing_column":
        _rewrite_xlsx(folder / "fit_parameters.xlsx", lambda rows: [r[:5] for r in rows])  # no Rate
        return str(folder / "fit_parameters.xlsx"), "Rate"
    if case == "missing_filename_column":
        _rewrite_xlsx(folder / "start_times.xlsx", lambda rows: [["File", "X_start"]] + rows[1:])
        return str(folder / "start_times.xlsx"), "Filename"
    if case == "file_missing_from_sheet":
        _rewrite_xlsx(folder / "start_times.xlsx", lambda rows: [r for r in rows if r[0] != p.name])
        return str(p), str(folder / "start_times.xlsx"), "not listed"
    if case == "non_numeric_start":
        _rewrite_xlsx(folder / "start_times.xlsx", lambda rows: rows[:2] + [[rows[2][0], "late"]] + rows[3:])
        return str(folder / "start_times.xlsx"), "line 3", "X_start"
    if case == "both_start_sheets":
        rows = [list(r) for r in load_workbook(folder / "start_times.xlsx").worksheets[0].iter_rows(values_only=True)]
        with open(folder / "start_times.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
        return "start_times.csv", "start_times.xlsx", str(folder), "keep one"
    raise AssertionError(case)


ERROR_CASES = ["no_data_marker", "non_numeric_row", "too_few_rows", "one_data_row", "missing_column",
               "missing_filename_column", "file_missing_from_sheet", "non_numeric_start", "both_start_sheets"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_reader_errors_name_the_file_and_line(tmp_path, case):
    root = _small(tmp_path / "sf", experiments=2)
    needles = _break(root, case)
    with pytest.raises(CorruptFileError) as e:
        load_dataset(_cfg(root, test_fraction=0.5))
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_reader_errors_through_the_cli(tmp_path, monkeypatch, capsys, case):
    """The CLI's own entry point (``lowrank.cli.main``, in this process: the subprocess tests below cover
    ``python -m lowrank``): exit 2 and one error line naming the file, before anything is written."""
    from lowrank.cli import main

    root = _small(tmp_path / "sf", experiments=2)
    needles = _break(root, case)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--dataset", "stopped-flow:sf", "--trace-pairs", "20", "--layers", "40,4,1", "--epochs",
                 "1", "--test-fraction", "0.5", "--db", "r.db", "--runs-dir", "runs", "--quiet"])
    err = capsys.readouterr().err
    one_line_error(type("Done", (), {"returncode": code, "stdout": "", "stderr": err}), *needles)
    assert not (tmp_path / "runs").exists()  # nothing written before the data loaded


def test_generate_refuses_a_non_empty_folder(tmp_path, lowrank_cli):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    p = lowrank_cli(["stopped-flow", "generate", "taken", "--experiments", "1"], tmp_path)
    one_line_error(p, "taken", "not empty", "--force")
    assert [f.name for f in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_bka_parser_messages():
    head = ["meta"] * 17 + ["_DATA"]
    with pytest.raises(CorruptFileError, match=r"x.bka: line 20: expected 2 values .* found 3"):
        parse_bka("\n".join(head + ["0\t1", "1\t2\t3"]), "x.bka")
    with pytest.raises(CorruptFileError, match=r"x.bka: line 19: time_ms is 'inf'"):
        parse_bka("\n".join(head + ["inf\t1", "1\t2"]), "x.bka")
    b = parse_bka("\n".join(head + ["0\t1.5", "0.1   2.5", ""]) + "\n\n", "x.bka")
    assert b.time_ms.tolist() == [0.0, 0.1] and b.volts.tolist() == [1.5, 2.5]


# -- generator ----------------------------------------------------------------------------------------------

def test_generator_layout_and_refusals(tmp_path):
    cfg = GeneratorConfig(experiments=2, min_files=15, max_files=16, rows=300, seed=5)
    traces = generate(tmp_path / "sf", cfg)
    root = tmp_path / "sf"
    for e in ("exp_01", "exp_02"):
        files = sorted(p.name for p in (root / e).iterdir())
        assert "start_times.xlsx" in files and "fit_parameters.xlsx" in files
        assert 15 <= sum(f.endswith(".bka") for f in files) <= 16
    lines = sorted((root / "exp_01").glob("*.bka"))[0].read_text().splitlines()
    assert len(lines) == 18 + 300 and "_DATA" in lines[17] and len(lines[18].split("\t")) == 2
    # k rises linearly with the concentration within an experiment (3% scatter)
    t1 = [t for t in traces if t.experiment == "exp_01"]
    conc, k = np.array([t.concentration for t in t1]), np.array([t.k for t in t1])
    assert np.corrcoef(conc, k)[0, 1] > 0.98
    assert all(0 < t.k <= cfg.k_max and cfg.start_min_ms <= t.x_start <= cfg.start_max_ms for t in traces)
    with pytest.raises(ConfigError, match="not empty"):
        generate(root, cfg)
    again = generate(root, cfg, overwrite=True)
    assert [t.k for t in again] == [t.k for t in traces]  # seeded
    with pytest.raises(ConfigError, match="min_files"):
        GeneratorConfig(min_files=5, max_files=4)
    generate(tmp_path / "csv", GeneratorConfig(experiments=2, start_sheet="csv", **SMALL))
    assert (tmp_path / "csv" / "exp_01" / "start_times.csv").is_file()
    assert len(load_dataset(_cfg(tmp_path / "csv", test_fraction=0.5)).train) >= 2


# -- curve_fit --------------------------------------------------------------------------------------------

def test_curve_fit_recovers_k_on_clean_traces(tmp_path):
    root = tmp_path / "sf"
    traces = generate(root, GeneratorConfig(experiments=2, min_files=4, max_files=4, rows=6000, noise=0.001,
                                            seed=7))
    errors = []
    for tr in traces:
        b = read_bka(root / tr.experiment / tr.filename)
        fit = fit_trace(b.time_ms, b.volts, tr.x_start)
        assert fit.converged
        errors.append(abs(fit.k - tr.k) / tr.k)
        assert fit.c == pytest.approx(tr.c, rel=0.05)
    assert max(errors) < 0.02, errors


# -- standardized targets ----------------------------------------------------------------------------------

def test_normalize_target_keeps_targets_and_maps_outputs(tmp_path):
    from lowrank.config import TrainConfig
    from lowrank.run import build_model

    root = _small(tmp_path / "sf")
    raw = load_dataset(_cfg(root, test_fraction=0.34))
    s = load_dataset(_cfg(root, test_fraction=0.34, normalize_target=True))
    assert torch.equal(raw.train.y, s.train.y)  # the targets stay in their units
    y = s.train.y.double()
    assert s.target_mean == pytest.approx(float(y.mean())) and s.target_std == pytest.approx(float(y.std(False)))
    cfg = TrainConfig(layers=[100, 8, 1], data=_cfg(root, normalize_target=True))
    model = build_model(cfg, s)
    assert isinstance(model[-1], TargetScale)
    x = s.test.x[:3]
    with torch.no_grad():
        inner = model[:-1](x)
        assert torch.allclose(model(x), inner * s.target_std + s.target_mean)
    assert "target_scale.mean" not in model.state_dict()  # checkpoints load into the plain model
    classes = Prepared(np.random.rand(20, 3), np.arange(20) % 2, None, None, name="two classes", num_classes=2)
    with pytest.raises(ConfigError, match="regression"):
        build_splits(classes, DataConfig(normalize_target=True))


# -- CLI end to end ----------------------------------------------------------------------------------------

def test_cli_train_on_a_generated_folder(tmp_path, lowrank_cli, monkeypatch, capsys):
    from lowrank.cli import main

    monkeypatch.chdir(tmp_path)  # `lowrank stopped-flow generate` in this process, then train in a subprocess
    assert main(["stopped-flow", "generate", "sf", "--experiments", "3", "--min-files", "3", "--max-files", "4",
                 "--rows", "400", "--seed", "2"]) == 0
    assert "wrote 3 experiments" in capsys.readouterr().out
    assert len(_truth(tmp_path / "sf")) == len(list(tmp_path.glob("sf/exp_*/*.bka"))) >= 9
    p = lowrank_cli(["train", "--dataset", "stopped-flow:sf", "--trace-pairs", "60", "--trace-stride", "2",
                     "--trace-scaling", "amplitude", "--normalize-target", "--layers", "120,16,8,1", "--loss", "mae",
                     "--method", "dlrt", "--rank", "3", "--epochs", "2", "--test-fraction", "0.34", "--db", "r.db",
                     "--json", "--quiet"], tmp_path)
    assert p.returncode == 0, p.stderr
    run_id = json.loads(p.stdout)["run_id"]
    summary = json.loads(sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()[0])
    assert summary["test_acc"] is None and summary["test_mae"] > 0 and np.isfinite(summary["test_rmse"])
    assert len(summary["scatter"]["true"]) == len(summary["scatter"]["predicted"]) >= 1
    assert summary["target_scale"]["std"] > 0


def test_cli_compare_with_the_curve_fit_baseline(tmp_path, lowrank_cli):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    generate(cfg_dir / "sf", GeneratorConfig(experiments=3, min_files=3, max_files=3, rows=6000, seed=4))
    (cfg_dir / "sf.toml").write_text("""
name = "sf-tiny"
title = "tiny stopped-flow"
baselines = ["curve-fit"]
[base]
layers = [100, 8, 1]
loss = "mae"
epochs = 2
[base.data]
dataset = "stopped-flow:sf"
trace_pairs = 50
trace_stride = 10
normalize_target = true
test_fraction = 0.34
[[runs]]
label = "dense"
[[runs]]
label = "vanilla r2"
method = { method = "vanilla", rank = 2 }
""")
    (cfg_dir / "escape.toml").write_text('[base.data]\ndataset = "stopped-flow:../elsewhere"\n[[runs]]\nlabel = "x"\n')
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ConfigError, match=r"data.dataset = 'stopped-flow:../elsewhere' in \[base\] of .*escape.toml leads out"):
        load_experiment(cfg_dir / "escape.toml")
    exp = load_experiment(cfg_dir / "sf.toml")
    assert exp.baselines == ["curve-fit"]
    assert {r.config.data.dataset for r in exp.runs} == {f"stopped-flow:{(cfg_dir / 'sf').resolve()}"}
    other = load_experiment(cfg_dir / "sf.toml", dataset="stopped-flow:elsewhere")  # --dataset: as given
    assert {r.config.data.dataset for r in other.runs} == {"stopped-flow:elsewhere"}
    p = lowrank_cli(["compare", "--config", cfg_dir / "sf.toml", "--db", "r.db", "--quiet", "--out", "rep"], work)
    assert p.returncode == 0, p.stderr
    assert "test MAE" in p.stdout and "curve_fit" in p.stdout
    html = (work / "rep" / "report.html").read_text()
    assert "Predicted against true" in html and "curve_fit" in html and "test R^2" in html
    assert "MAE against parameters" in html
    con = sqlite3.connect(work / "r.db")
    rows = con.execute("SELECT method, status, summary FROM runs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["dense", "vanilla", "curve-fit"] and {r[1] for r in rows} == {"finished"}
    cf = json.loads(rows[2][2])
    assert cf["traces"] == 3 and cf["test_mae"] < 0.05 * np.mean(cf["scatter"]["true"])
    dense = json.loads(rows[0][2])  # the networks are scored on the same test traces
    assert sorted(dense["scatter"]["true"]) == pytest.approx(sorted(cf["scatter"]["true"]))
