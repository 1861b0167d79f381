"""lowrank.saving: save a (low-rank) model to a folder, load it back, nothing pickled."""

from __future__ import annotations

import json
import os
import struct as _struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lowrank
from lowrank.errors import CheckpointError, ConfigError
from lowrank.models import build_model
from lowrank.saving import FORMAT, load, save

LAYERS = [20, 16, 12, 3]
SPEC = {"model": "mlp", "model_args": {"layers": LAYERS}, "sample_shape": [20], "num_outputs": 3}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def dense(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"layers": LAYERS}, sample_shape=[20], num_outputs=3)


def x_batch() -> torch.Tensor:
    return torch.randn(7, 20, generator=torch.Generator().manual_seed(123))


def out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(x_batch())


def ranks(model: nn.Module) -> dict[str, int]:
    return {n: m.rank for n, m in model.named_modules() if lowrank.is_lowrank(m)}


def lora_model(merged: bool) -> nn.Module:
    m = lowrank.convert(dense(), "lora", rank=2)
    with torch.no_grad():
        for layer in m.modules():
            if isinstance(layer, lowrank.LoRALinear):
                layer.B.normal_()  # a non-zero update, so merged and unmerged differ from the base
                if merged:
                    layer.merge()
    return m


def svd_pruned() -> nn.Module:
    m = lowrank.convert(dense(), "svd", rank=6)
    with torch.no_grad():
        m.fc0.s.copy_(torch.tensor([5.0, 3.0, 1.0, 0.1, 0.01, 0.001]))
    assert m.fc0.prune(0.95) < 6
    return m


def dlrt_rank_changed() -> nn.Module:
    m = lowrank.convert(dense(), "dlrt", rank=4)
    layer = m.fc0
    layer.set_factors(layer.U.data[:, :2], layer.S.data[:2, :2], layer.V.data[:, :2])
    return m


MODELS = {
    "dense": dense,
    "vanilla": lambda: lowrank.convert(dense(), "vanilla", rank=3),
    "twofactor": lambda: lowrank.convert(dense(), "twofactor", rank=3),
    "svd": lambda: lowrank.convert(dense(), "svd", rank=5),
    "svd-pruned": svd_pruned,
    "lora-merged": lambda: lora_model(True),
    "lora-unmerged": lambda: lora_model(False),
    "dlrt-rank-changed": dlrt_rank_changed,
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_round_trip_into_fresh_dense_model(kind, tmp_path):
    model = MODELS[kind]()
    folder = save(model, tmp_path / "saved")
    fresh = dense(seed=99)  # other weights: everything must come from the file
    assert not torch.equal(out(fresh), out(model))
    loaded = load(folder, fresh)
    assert loaded is fresh
    assert ranks(loaded) == ranks(model)
    assert {n: type(m).__name__ for n, m in loaded.named_modules()} == \
        {n: type(m).__name__ for n, m in model.named_modules()}
    assert torch.equal(out(loaded), out(model))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b), k


def test_rank_changes_are_recorded(tmp_path):
    save(dlrt_rank_changed(), tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "lowrank.json").read_text())
    assert meta["structure"]["fc0"]["spec"]["rank"] == 2
    assert meta["structure"]["fc1"]["spec"]["rank"] == 4
    assert meta["layers"][0] == {"name": "fc0", "method": "dlrt", "class": "DLRTLinear", "rank": 2,
                                 "in_features": 20, "out_features": 16, "params": 2 * 36 + 4 + 16}


def test_lora_merged_flag_round_trips(tmp_path):
    save(lora_model(True), tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert state["fc0.lora_merged"].dtype == torch.bool and state["fc0.lora_merged"].shape == ()
    loaded = load(tmp_path / "m", dense(5))
    assert loaded.fc0.merged and loaded.fc1.merged


def test_folder_holds_only_json_and_safetensors(tmp_path):
    folder = save(lowrank.convert(dense(), "vanilla", rank=3), tmp_path / "v", model_spec=SPEC)
    assert sorted(os.listdir(folder)) == ["lowrank.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no temporary folder left behind
    meta = json.loads((folder / "lowrank.json").read_text())
    assert meta["format"] == FORMAT == "lowrank-model-1"
    assert meta["model_spec"] == SPEC
    data = (folder / "model.safetensors").read_bytes()
    # safetensors: 8-byte header length, a JSON header, then raw tensor bytes that end the file.
    (n,) = _struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    assert header["__metadata__"]["lowrank_format"] == FORMAT
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert 8 + n + end == len(data)
    assert not data.startswith(b"PK") and b"\x80\x02" not in data[:2]  # not a torch.save zip / pickle


def test_path_given_as_a_file_means_its_folder(tmp_path):
    model = lowrank.convert(dense(), "vanilla", rank=3)
    save(model, tmp_path / "v")
    for name in ("model.safetensors", "lowrank.json"):
        assert torch.equal(out(load(tmp_path / "v" / name, dense(1))), out(model))


def test_rebuild_from_model_spec_mlp(tmp_path):
    model = dlrt_rank_changed()
    save(model, tmp_path / "d", model_spec=SPEC)
    loaded = load(tmp_path / "d")
    assert ranks(loaded) == {"fc0": 2, "fc1": 4}
    assert loaded.training  # as build_model gives it
    assert torch.equal(out(loaded), out(model))


def test_rebuild_keeps_float64(tmp_path):
    model = lowrank.convert(dense().double(), "svd", rank=4)
    save(model, tmp_path / "d", model_spec=SPEC)
    loaded = load(tmp_path / "d")
    assert loaded.fc0.U.dtype == torch.float64
    with torch.no_grad():
        assert torch.equal(loaded(x_batch().double()), model(x_batch().double()))


def _run_python(code: str, pythonpath: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOWRANK_PLUGINS")}
    env.update({"PYTHONPATH": os.pathsep.join([*pythonpath, SRC]), "OMP_NUM_THREADS": "1",
                "LOWRANK_DATA": os.environ.get("LOWRANK_DATA", "")})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_fresh_process_rebuilds_a_user_factory_model(tmp_path):
    """A model from a ``module:factory`` on PYTHONPATH, saved here, reloaded in a new process that
    knows neither the ranks nor the model: it imports the factory from model_spec."""
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "lr_save_factory.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny(hidden=10, outputs=3):
            return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, outputs))
    """))
    sys.path.insert(0, str(pkg))
    try:
        spec = {"model": "lr_save_factory:tiny", "model_args": {"hidden": 9}, "sample_shape": [6],
                "num_outputs": 3}
        torch.manual_seed(0)
        model = build_model(spec["model"], spec["model_args"], sample_shape=[6], num_outputs=3)
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop("lr_save_factory", None)
    model = lowrank.convert(model, "svd", rank=4, rank_overrides={"2": 3})
    x = torch.randn(5, 6)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    save(model, tmp_path / "saved", model_spec=spec)
    # The file names code to run: without trust_factory=True it is refused (nothing imported).
    with pytest.raises(CheckpointError) as e:
        load(tmp_path / "saved")
    assert "trust_factory=True" in _err(e) and "lr_save_factory:tiny" in _err(e)
    assert "lr_save_factory" not in sys.modules
    proc = _run_python("""
        import torch
        from safetensors.torch import load_file, save_file
        from lowrank.saving import load
        m = load("saved/lowrank.json", trust_factory=True).eval()
        with torch.no_grad():  # clone: load_file's tensors are not 64-byte aligned, and MKL rounds by alignment
            y = m(load_file("x.safetensors")["x"].clone())
        save_file({"y": y}, "y.safetensors")
        print({n: type(l).__name__ + str(getattr(l, "rank", "")) for n, l in m.named_children()})
    """, [str(pkg)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "'0': 'SVDLinear4'" in proc.stdout and "'2': 'SVDLinear3'" in proc.stdout
    with torch.no_grad():
        assert torch.equal(load_file(str(tmp_path / "y.safetensors"))["y"], model(x))
    # Without the factory on PYTHONPATH the reload is a one-line CheckpointError naming the fix.
    proc = _run_python("""
        from lowrank.saving import load
        from lowrank.errors import CheckpointError
        try:
            load("saved", trust_factory=True)
        except CheckpointError as e:
            print("ERR", e)
    """, [], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERR") and "PYTHONPATH" in proc.stdout and "lowrank.json" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1


def test_fresh_process_reload_with_dense_model(tmp_path):
    """The peft way in a new process: build the dense model, load; the ranks come from the file."""
    model = dlrt_rank_changed()
    save(model, tmp_path / "saved")
    save_file({"y": out(model)}, str(tmp_path / "y.safetensors"))
    proc = _run_python(f"""
        import torch
        from safetensors.torch import load_file
        from lowrank.models import build_model
        from lowrank.saving import load
        base = build_model("mlp", {{"layers": {LAYERS}}}, sample_shape=[20], num_outputs=3)
        m = load("saved", base)
        x = torch.randn(7, 20, generator=torch.Generator().manual_seed(123))
        with torch.no_grad():
            print(torch.equal(m(x), load_file("y.safetensors")["y"]), m.fc0.rank, m.fc1.rank)
    """, [], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "2", "4"]


def test_tied_and_non_contiguous_tensors(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.register_buffer("t", torch.randn(3, 5).t())  # non-contiguous
            self.register_buffer("part", self.t[1:3])          # a view into another tensor

        def forward(self, x):
            return self.b(self.a(x)) + self.t.sum() + self.part.sum()

    torch.manual_seed(0)
    model = Tied()
    save(model, tmp_path / "tied")
    meta = json.loads((tmp_path / "tied" / "lowrank.json").read_text())
    assert meta["aliases"] == {"b.weight": "a.weight"}
    assert "b.weight" not in load_file(str(tmp_path / "tied" / "model.safetensors"))
    torch.manual_seed(1)
    fresh = load(tmp_path / "tied", Tied())
    assert fresh.b.weight is fresh.a.weight
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_training_flags_and_rng_kept(tmp_path):
    save(lowrank.convert(dense(), "vanilla", rank=3), tmp_path / "v")
    torch.manual_seed(7)
    base = dense(3).eval()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    loaded = load(tmp_path / "v", base)
    assert torch.equal(torch.rand(3), expected)  # restoring layers did not consume the caller's RNG
    assert not loaded.training and not loaded.fc0.training and not loaded.fc1.training


def test_map_location(tmp_path):
    save(lowrank.convert(dense(), "vanilla", rank=3), tmp_path / "v", model_spec=SPEC)
    loaded = load(tmp_path / "v", map_location="cpu")
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    with pytest.raises(ConfigError, match="not a device"):
        load(tmp_path / "v", map_location="nowhere")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_map_location_cuda(tmp_path):
    model = lowrank.convert(dense(), "dlrt", rank=4)
    save(model, tmp_path / "d", model_spec=SPEC)
    for loaded in (load(tmp_path / "d", map_location="cuda"), load(tmp_path / "d", dense(2), map_location="cuda")):
        assert {p.device.type for p in loaded.parameters()} == {"cuda"}
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k].cpu(), v), k
    save(loaded, tmp_path / "back")  # from the GPU
    assert torch.equal(out(load(tmp_path / "back", dense(4))), out(model))


# ---------------------------------------------------------------------------- atomic writes

def test_existing_save_is_replaced(tmp_path):
    save(lowrank.convert(dense(), "vanilla", rank=3), tmp_path / "v")
    second = lowrank.convert(dense(1), "vanilla", rank=2)
    save(second, tmp_path / "v")
    assert ranks(load(tmp_path / "v", dense())) == {"fc0": 2, "fc1": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_folder_with_other_files_is_not_replaced(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="notes.txt"):
        save(dense(), tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run")) == ["notes.txt"]


def test_failed_write_keeps_the_old_save(tmp_path, monkeypatch):
    first = lowrank.convert(dense(), "vanilla", rank=3)
    save(first, tmp_path / "v")
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save(lowrank.convert(dense(1), "vanilla", rank=2), tmp_path / "v")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # temporary folder removed
    assert torch.equal(out(load(tmp_path / "v", dense(2))), out(first))


# ---------------------------------------------------------------------------- errors

@pytest.fixture()
def saved(tmp_path) -> Path:
    return save(lowrank.convert(dense(), "svd", rank=4), tmp_path / "s")


def _err(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def _edit_json(folder: Path, fn) -> None:
    meta = json.loads((folder / "lowrank.json").read_text())
    fn(meta)
    (folder / "lowrank.json").write_text(json.dumps(meta))


def test_damaged_json(saved):
    (saved / "lowrank.json").write_text('{"format": "lowrank-model-1", "structure": {')
    with pytest.raises(CheckpointError) as e:
        load(saved, dense())
    assert "lowrank.json" in _err(e) and "damaged" in _err(e) and "save the model again" in _err(e)


def test_damaged_safetensors(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError) as e:
        load(saved, dense())
    assert "model.safetensors" in _err(e) and "damaged" in _err(e)
    (saved / "model.safetensors").write_bytes(b"\xff" * 40)
    with pytest.raises(CheckpointError, match="model.safetensors is damaged"):
        load(saved, dense())


@pytest.mark.parametrize("name", ["model.safetensors", "lowrank.json"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError) as e:
        load(saved, dense())
    assert f"{name} is missing" in _err(e)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load(tmp_path / "nothing", dense())
    assert "does not exist" in _err(e) and "nothing" in _err(e)


def test_unknown_format_tag(saved):
    _edit_json(saved, lambda m: m.update(format="lowrank-model-99"))
    with pytest.raises(CheckpointError) as e:
        load(saved, dense())
    assert "lowrank-model-99" in _err(e) and "lowrank.json" in _err(e)


def test_unregistered_layer_class(saved):
    _edit_json(saved, lambda m: m["structure"]["fc0"].update(cls="NoSuchLinear"))
    base = dense()
    with pytest.raises(CheckpointError) as e:
        load(saved, base)
    assert "NoSuchLinear" in _err(e) and "LOWRANK_PLUGINS" in _err(e) and "lowrank.json" in _err(e)
    assert isinstance(base.fc0, nn.Linear) and isinstance(base.fc1, nn.Linear)  # untouched


def test_structure_names_a_missing_module(saved):
    _edit_json(saved, lambda m: m.update(structure={"fc9": m["structure"]["fc0"]}))
    with pytest.raises(CheckpointError) as e:
        load(saved, dense())
    assert "'fc9'" in _err(e) and "lacks" in _err(e) and "fc0" in _err(e)


def test_no_model_and_no_spec(saved):
    with pytest.raises(CheckpointError) as e:
        load(saved)
    assert "pass the dense model" in _err(e)


def test_model_of_another_shape(saved):
    torch.manual_seed(0)
    other = build_model("mlp", {"layers": [20, 16, 8, 3]}, sample_shape=[20], num_outputs=3)
    with pytest.raises(CheckpointError) as e:
        load(saved, other)
    msg = _err(e)
    # fc1's record (12 outputs) disagrees with the model's fc1 (8): refused before anything is built.
    assert "structure record of 'fc1' has out_features=12, the model's module has 8" in msg


def test_model_of_another_dtype(saved):
    with pytest.raises(CheckpointError) as e:
        load(saved, dense().double())
    assert "torch.float32 in the file but torch.float64" in _err(e)


def test_bad_model_spec_rejected_at_save(tmp_path):
    with pytest.raises(ConfigError, match="num_outputs"):
        save(dense(), tmp_path / "x", model_spec={**SPEC, "num_outputs": 0})
    with pytest.raises(ConfigError, match="unknown keys 'layers'"):
        save(dense(), tmp_path / "x", model_spec={**SPEC, "layers": LAYERS})
    assert not (tmp_path / "x").exists()


def test_non_tensor_state_rejected(tmp_path):
    class Extra(nn.Linear):
        def get_extra_state(self):
            return {"step": 3}

        def set_extra_state(self, state):
            pass

    with pytest.raises(CheckpointError, match="not a tensor"):
        save(Extra(3, 3), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_a_single_low_rank_layer(tmp_path):
    layer = lowrank.convert(dense(), "vanilla", rank=3).fc0
    save(layer, tmp_path / "one")
    torch.manual_seed(4)
    loaded = load(tmp_path / "one", nn.Linear(20, 16))
    assert isinstance(loaded, lowrank.VanillaLinear) and loaded.rank == 3
    x = x_batch()
    with torch.no_grad():
        assert torch.equal(loaded(x), layer(x))


def test_save_target_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError) as e:
        save(dense(), tmp_path / "f")
    assert "not a folder" in _err(e)
    assert (tmp_path / "f").read_text() == "x"


class _AttentionConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        a, _ = self.att(x, x, x)
        return self.out(self.fc(a)) + self.conv(x.unsqueeze(1)).mean()


@pytest.mark.parametrize("method", ["svd", "dlrt"])
def test_attention_and_conv_round_trip(method, tmp_path):
    """Nested records (an attention module, then its projections) and convolutions."""
    pytest.importorskip("lowrank.attention")
    torch.manual_seed(0)
    model = lowrank.convert(_AttentionConv(), method, rank=2).eval()
    save(model, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "lowrank.json").read_text())
    assert "att" in meta["structure"] and "att.q_proj" in meta["structure"]
    torch.manual_seed(1)
    loaded = load(tmp_path / "a", _AttentionConv().eval())
    assert {n: type(m).__name__ for n, m in loaded.named_modules()} == \
        {n: type(m).__name__ for n, m in model.named_modules()}
    assert not any(m.training for m in loaded.modules())
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
