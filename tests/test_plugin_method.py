"""A method added from outside lowrank: one folder (tests/plugins/frozen_dense) and its register call.

``frozen`` freezes every parameter but those of the last ``--train-last`` Linear layers.
The CLI finds it only through ``$LOWRANK_PLUGINS`` (with ``tests/plugins`` on
``PYTHONPATH``); nothing in src/ names it. The CLI commands run side by side in one
module fixture, each test checks one of them.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_checks import one_line_error

PLUGINS = Path(__file__).resolve().parent / "plugins"
PLUGIN_ENV = {"LOWRANK_PLUGINS": "frozen_dense"}
TRAIN = ["train", "--method", "frozen", "--train-last", "1", "--dataset", "mnist", "--train-size", "300",
         "--test-size", "200", "--layers", "784,32,10", "--epochs", "2", "--json"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, lowrank_cli):
    cwd = tmp_path_factory.mktemp("plugin")
    db = cwd / "plugin.db"
    commands = {
        "train": dict(args=[*TRAIN, "--db", db], env=PLUGIN_ENV, pythonpath=[PLUGINS]),
        "help": dict(args=["train", "--help"], env=PLUGIN_ENV, pythonpath=[PLUGINS]),
        # the plugin folder is importable, but nobody asked for it: the method does not exist
        "no-env": dict(args=["train", "--method", "frozen", "--dataset", "mnist", "--db", cwd / "no-env.db"],
                       pythonpath=[PLUGINS]),
        "bad-plugin": dict(args=["train", "--help"], env={"LOWRANK_PLUGINS": "no_such_plugin_module"}),
    }
    procs = {k: lowrank_cli(c["args"], cwd, env=c.get("env"), pythonpath=c.get("pythonpath", ()), background=True)
             for k, c in commands.items()}
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[key] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return {"cwd": cwd, "db": db, **out}



def test_cli_trains_the_plugin_method_and_freezes_all_but_the_last_linear(cli_runs):
    p = cli_runs["train"]
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert out["config"]["method"] == {"method": "frozen", "train_last": 1}
    assert len(out["history"]) == 2 and 0.0 <= out["final"]["test_acc"] <= 1.0
    run_dir = cli_runs["cwd"] / out["run_dir"]
    assert run_dir.name == f"{out['run_id']:04d}-frozen-mnist"
    assert json.loads((run_dir / "config.json").read_text())["method"] == {"method": "frozen", "train_last": 1}
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["structure"] == {}  # dense layers: nothing to rebuild
    trained = ckpt["model"]
    import lowrank

    torch.manual_seed(0)  # the run's seed: the model every run of this config starts from
    fresh = lowrank.mlp([784, 32, 10]).state_dict()
    assert set(trained) == set(fresh) == {"fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"}
    assert torch.equal(trained["fc0.weight"], fresh["fc0.weight"])  # frozen: bit for bit the initial weights
    assert torch.equal(trained["fc0.bias"], fresh["fc0.bias"])
    assert (trained["fc1.weight"] - fresh["fc1.weight"]).abs().max() > 1e-4  # trained
    assert (trained["fc1.bias"] - fresh["fc1.bias"]).abs().max() > 1e-4
    # only fc1's two tensors ever reached the optimizer
    (group,) = ckpt["stepper"]["optimizer"]["param_groups"]
    assert len(group["params"]) == 2
    import sqlite3

    con = sqlite3.connect(cli_runs["db"])
    try:
        (row,) = con.execute("SELECT method, status FROM runs WHERE id = ?", (out["run_id"],)).fetchall()
    finally:
        con.close()
    assert row == ("frozen", "finished")


def test_cli_help_lists_the_plugin_flag_and_method(cli_runs):
    p = cli_runs["help"]
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())  # argparse wraps lines
    assert "--train-last TRAIN_LAST" in text
    assert "frozen: number of final Linear layers left trainable" in text  # the field's docstring
    assert "(default: 1)" in text.split("--train-last TRAIN_LAST", 2)[2]
    assert "--method {dense,vanilla,twofactor,svd,lora,dlrt,frozen}" in text
    assert "frozen: dense, all but the last --train-last Linear layers frozen" in text  # Method.summary


def test_without_the_plugin_variable_the_method_does_not_exist(cli_runs):
    one_line_error(cli_runs["no-env"], "--method", "invalid choice", "'frozen'")
    assert not (cli_runs["cwd"] / "no-env.db").exists()


def test_unimportable_plugin_is_a_one_line_error(cli_runs):
    one_line_error(cli_runs["bad-plugin"], "LOWRANK_PLUGINS", "no_such_plugin_module")


# --------------------------------------------------------------------------- in process

@pytest.fixture
def fresh_registry(monkeypatch):
    """The method table as it is now, restored afterwards; frozen_dense importable and imported afresh."""
    from lowrank import registry

    registry.method_names()  # built-ins loaded before the copy
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.syspath_prepend(str(PLUGINS))
    sys.modules.pop("frozen_dense", None)
    yield registry
    sys.modules.pop("frozen_dense", None)


def test_importing_the_plugin_registers_it(fresh_registry):
    import lowrank
    from lowrank.config import TrainConfig
    from lowrank.errors import ConfigError
    from lowrank.run import apply_method, build_stepper

    with pytest.raises(ConfigError, match="'frozen' is not one of"):
        lowrank.get_method("frozen")
    plugin = importlib.import_module("frozen_dense")
    m = lowrank.get_method("frozen")
    assert m is plugin.METHOD and m.name == "frozen" and m.config is plugin.FrozenConfig and m.layers == ()
    assert plugin.FrozenConfig.method == "frozen"  # register_method names the config class
    assert lowrank.method_names()[-1] == "frozen"
    assert plugin.FrozenConfig.options() == ["train_last"]
    assert fresh_registry.method_config("frozen", train_last=2).to_dict() == {"method": "frozen", "train_last": 2}
    with pytest.raises(ConfigError, match="'rank' is not an option of method 'frozen'"):
        fresh_registry.method_config("frozen", rank=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="train_last must be a positive integer"):
            plugin.FrozenConfig(train_last=bad)
    # a config naming it round-trips, and prepare / make_stepper do what the CLI run relied on
    cfg = TrainConfig.from_dict({"method": {"method": "frozen", "train_last": 2}, "layers": [6, 5, 4, 3]})
    assert isinstance(cfg.method, plugin.FrozenConfig) and cfg.method.train_last == 2
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    model = apply_method(lowrank.mlp([6, 5, 4, 3]), cfg)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        "fc0.weight": False, "fc0.bias": False, "fc1.weight": True, "fc1.bias": True,
        "fc2.weight": True, "fc2.bias": True}
    stepper = build_stepper(model, cfg, total_steps=10)
    assert [p for g in stepper.optimizer.param_groups for p in g["params"]] == [
        model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias]
    with pytest.raises(ConfigError, match="train_last is 5 but the model has only 3 Linear layers"):
        apply_method(lowrank.mlp([6, 5, 4, 3]), TrainConfig.from_dict({"method": {"method": "frozen",
                                                                                "train_last": 5}}))


def test_a_failed_plugin_import_is_reported_again(fresh_registry, monkeypatch):
    from lowrank.errors import ConfigError

    monkeypatch.setattr(fresh_registry, "_loaded", False)
    monkeypatch.setenv("LOWRANK_PLUGINS", "no_such_plugin_module,frozen_dense")
    with pytest.raises(ConfigError, match="no_such_plugin_module"):
        fresh_registry.method_names()
    with pytest.raises(ConfigError, match="no_such_plugin_module"):
        fresh_registry.get_method("frozen")
