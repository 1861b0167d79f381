"""Property tests (hypothesis): whatever a config, a TOML file, a checkpoint or a results
database holds, only the project's own errors come out (exit code 2 at the CLI), never a
traceback. ``LOWRANK_PROPERTY_EXAMPLES`` scales the number of cases (the note quotes a
run with more)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowrank.cli import main
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.errors import LowRankError
from lowrank.experiment import config_paths, load_experiment
from lowrank.registry import method_config
from lowrank.store import Store
from lowrank.sweep_matrix import load_matrix

SCALE = float(os.environ.get("LOWRANK_PROPERTY_EXAMPLES", "1"))
TRIED: dict[str, int] = {}


def cases(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


def _only_own_errors(fn, *args) -> object:
    """Call ``fn``; a LowRankError is a fine answer, any other exception fails the test."""
    try:
        return fn(*args)
    except LowRankError:
        return None


SCALARS = st.one_of(st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=10), st.sampled_from([0, 1, -1, 0.5, "", "dlrt", "mnist", "../x", "/etc",
                                                           "a:b", "yes", 2**63]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=5)
PATHS = sorted(config_paths())


@st.composite
def config_dicts(draw) -> dict:
    """A TrainConfig dict: known keys (dotted paths) and a few unknown ones, any values."""
    d: dict = {"data": {}, "optim": {}, "method": {"method": draw(st.sampled_from(["dense", "vanilla", "svd",
                                                                                  "dlrt", "lora", "twofactor",
                                                                                  "nope", 3]))}}
    for key in draw(st.lists(st.sampled_from(PATHS + ["bogus", "data.bogus"]), max_size=5)):
        sec, _, name = key.rpartition(".")
        value = draw(VALUES)
        if sec:
            d.setdefault(sec, {})[name] = value
        else:
            d[name] = value
    return d


@cases(150)
@given(config_dicts())
def test_any_config_dict_is_accepted_or_refused_with_a_config_error(d):
    _count("config dicts")
    cfg = _only_own_errors(TrainConfig.from_dict, d)
    if cfg is not None:  # accepted: it round-trips to the same config
        assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@cases(60)
@given(st.sampled_from(["dense", "vanilla", "svd", "dlrt", "lora", "twofactor"]),
       st.dictionaries(st.sampled_from(["rank", "energy", "param_ratio", "tau", "adaptive", "min_rank", "max_rank",
                                        "integrator", "phi", "lora_alpha", "prune_energy", "target", "then_fixed",
                                        "init_decay", "truncation", "inner_fraction"]), VALUES, max_size=4))
def test_any_method_options_are_accepted_or_refused(name, options):
    _count("method options")
    _only_own_errors(lambda: method_config(name, **options))


def _toml_value(v):
    """TOML has no null and only string keys: drop what it cannot hold."""
    if isinstance(v, dict):
        return {str(k): _toml_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_toml_value(x) for x in v]
    return v


@cases(80)
@given(st.dictionaries(st.sampled_from(["name", "title", "description", "base", "runs", "baselines", "matrix",
                                        "regularization", "variants", "other"]),
                       st.one_of(VALUES, st.lists(config_dicts(), min_size=1, max_size=2), config_dicts()),
                       max_size=5),
       st.sampled_from(["experiment", "matrix"]))
def test_any_toml_file_is_read_or_refused_with_a_config_error(tmp_path, doc, kind):
    import tomli_w

    _count("TOML files")
    try:
        text = tomli_w.dumps(_toml_value(doc))
    except (TypeError, ValueError):  # not expressible in TOML (e.g. mixed-type arrays in old TOML): skip
        return
    path = tmp_path / "cfg" / "x.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    _only_own_errors(load_experiment if kind == "experiment" else load_matrix, path)


# -- checkpoints and databases of a real (tiny) run ----------------------------------------------------------

class _Trained(dict):
    """The fixture's files, shown briefly in hypothesis' report of a failing example."""

    def __repr__(self) -> str:
        return "<trained run>"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 1-epoch DLRT run (rows, run folder, checkpoint), its data and its files' bytes."""
    from lowrank.data import load_dataset
    from lowrank.run import train_run

    root = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(data=DataConfig(dataset="mnist", train_size=100, test_size=50),
                      optim=OptimConfig(optimizer="adam", lr=1e-3),
                      method=method_config("dlrt", rank=4, adaptive=True, tau=0.1), layers=[784, 12, 10],
                      epochs=1, batch_size=50, seed=0)
    data = load_dataset(cfg.data, seed=0)
    store = Store(root / "results.db")
    res = train_run(cfg, store=store, runs_dir=root / "runs", data=data)
    store.close()
    return _Trained({"root": root, "data": data, "run_dir": res.run_dir,
            "checkpoint": (res.run_dir / "checkpoint.pt").read_bytes(),
            "payload": torch.load(res.run_dir / "checkpoint.pt", weights_only=True),
            "db": (root / "results.db").read_bytes()})


def _cli(capsys, *args) -> int:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lowrank: error:"), err
    return rc


def _damage(data: bytes, flips: list[tuple[int, int]], cut: int | None, skip: int = 0) -> bytearray:
    """``data`` with bytes set at ``flips`` (positions past ``skip``), then cut to ``cut`` bytes."""
    raw = bytearray(data)
    for pos, byte in flips:
        raw[pos % (len(raw) - skip) + skip] = byte
    return raw[:cut % len(raw)] if cut is not None else raw


def _resume(trained, work: Path, checkpoint: bytes, capsys) -> int:
    """Resume the run (marked interrupted) from ``checkpoint`` in a fresh copy of its folder and DB."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(trained["run_dir"], work / "run")
    (work / "run" / "checkpoint.pt").write_bytes(checkpoint)
    db = work / "results.db"
    db.write_bytes(trained["db"])
    store = Store(db)
    store.conn.execute("UPDATE runs SET status = 'interrupted', run_dir = ? WHERE id = 1", (str(work / "run"),))
    store.close()
    return _cli(capsys, "train", "--resume", 1, "--db", db, "--quiet")


@cases(25)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=6),
       st.one_of(st.none(), st.integers(0, 10**9)))
def test_a_damaged_checkpoint_file_is_refused_in_one_line(trained, tmp_path, capsys, flips, cut):
    _count("damaged checkpoint files")
    raw = _damage(trained["checkpoint"], flips, cut)
    path = tmp_path / "ck" / "checkpoint.pt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(bytes(raw))
    assert _cli(capsys, "inspect", path, "--json") in (0, 2)
    assert _resume(trained, tmp_path / "resume", bytes(raw), capsys) in (0, 2)


def _paths(obj, prefix=()):
    """Every key path in nested dicts and lists."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


TENSORS = st.builds(lambda shape: torch.zeros(shape), st.lists(st.integers(0, 5), max_size=3))
ABSURD = st.sampled_from([10**12, -1, 0, 2**62, [10**9, 10**9], "x", None, {}, []])


@cases(25)
@given(st.data())
def test_a_checkpoint_with_missing_keys_or_absurd_values_is_refused_in_one_line(trained, tmp_path, capsys, data):
    import copy

    _count("edited checkpoints")
    payload = copy.deepcopy(trained["payload"])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(payload))
        where = data.draw(st.sampled_from(paths))
        parent = payload
        for k in where[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(st.one_of(ABSURD, TENSORS, VALUES))
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = tmp_path / "ck" / "checkpoint.pt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(buf.getvalue())
    assert _cli(capsys, "inspect", path, "--json") in (0, 2)
    assert _resume(trained, tmp_path / "resume", buf.getvalue(), capsys) in (0, 2)


@cases(40)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8),
       st.one_of(st.none(), st.integers(0, 10**9)))
def test_a_damaged_results_database_is_refused_in_one_line(trained, tmp_path, capsys, flips, cut):
    _count("damaged databases")
    raw = _damage(trained["db"], flips, cut, skip=100)  # past the 100-byte header: pages and schema
    work = tmp_path / "db"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    db = work / "results.db"
    db.write_bytes(bytes(raw))
    for args in (["runs"], ["runs", "show", 1], ["runs", "--json"]):
        assert _cli(capsys, *args, "--db", db) in (0, 2)


@cases(6)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_report_from_a_damaged_database_is_refused_in_one_line(trained, tmp_path, capsys, flips):
    _count("reports from damaged databases")
    raw = _damage(trained["db"], flips, None, skip=100)
    db = tmp_path / "report.db"
    db.write_bytes(bytes(raw))
    assert _cli(capsys, "report", "--db", db, "--out", tmp_path / "report") in (0, 2)


def test_property_counts_are_reported(capsys):
    with capsys.disabled():
        print(f"\nproperty cases tried: {TRIED}")
