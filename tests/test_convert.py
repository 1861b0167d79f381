"""Conversion by name pattern, merge back to dense, plan, and structure round trips."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from lowrank import convert, merge, mlp, plan
from lowrank.errors import CheckpointError
from lowrank.convert import restore_structure, select, structure
from lowrank.registry import layer_class
from lowrank.errors import ConfigError, RankError
from lowrank import LoRALinear, LowRankLayer, VanillaLinear, SVDLinear, TwoFactorLinear

METHODS = ["vanilla", "twofactor", "svd", "lora"]


class Block(nn.Module):
    """A transformer-like block: q/k/v/out projections in a ModuleDict, an MLP in a Sequential."""

    def __init__(self, d: int = 8, hidden: int = 12):
        super().__init__()
        self.attn = nn.ModuleDict({"q": nn.Linear(d, d), "k": nn.Linear(d, d), "v": nn.Linear(d, d),
                                   "out": nn.Linear(d, d)})
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d)
        a = self.attn
        att = torch.softmax(a["q"](x) @ a["k"](x).transpose(1, 2) / x.shape[-1] ** 0.5, -1)
        x = x + a["out"](att @ a["v"](x))
        return x + self.mlp(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)).mean(1))


def net() -> Net:
    torch.manual_seed(0)
    return Net().double()


def converted(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, LowRankLayer)}


ALL_NAMES = ["embed", *[f"blocks.{b}.{p}" for b in (0, 1)
                        for p in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.0", "mlp.2")], "head"]


def test_default_target_is_all_but_output_layer() -> None:
    model = net()
    assert select(model) == ALL_NAMES[:-1]
    out = convert(model, rank=2)
    assert converted(out) == set(ALL_NAMES[:-1])
    assert converted(model) == set()  # not in place by default
    assert isinstance(out.head, nn.Linear)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"target": r"blocks\.\d+\.attn\.(q|k|v)"},
     {f"blocks.{b}.attn.{p}" for b in (0, 1) for p in "qkv"}),
    ({"target": r"attn\.q"}, set()),  # a regex must match the WHOLE name: this one matches none
    ({"target": ["q", "blocks.1.mlp.0"]}, {"blocks.0.attn.q", "blocks.1.attn.q", "blocks.1.mlp.0"}),
    ({"target": ["attn.out"]}, {"blocks.0.attn.out", "blocks.1.attn.out"}),
    ({"target": ["head", "embed"]}, {"head", "embed"}),
    ({"target": r"blocks\..*", "exclude": ["mlp.2", "blocks.0.attn.v"]},
     {f"blocks.{b}.{p}" for b in (0, 1) for p in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.0")}
     - {"blocks.0.attn.v"}),
    ({"exclude": r".*attn.*"}, {"embed", "blocks.0.mlp.0", "blocks.0.mlp.2", "blocks.1.mlp.0", "blocks.1.mlp.2"}),
])
def test_selection_rules(kwargs: dict, expected: set[str]) -> None:
    model = net()
    if not expected:
        with pytest.raises(ConfigError, match="matches no Linear layer; available: embed, blocks.0.attn.q"):
            convert(model, rank=2, **kwargs)
        return
    out = convert(model, rank=2, **kwargs)
    assert converted(out) == expected
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    assert out(x).shape == (2, 3)


def test_rank_overrides_and_inplace() -> None:
    model = net()
    same = convert(model, "svd", rank=2, target=["q", "v"], rank_overrides={"blocks.1.attn.v": 5, "q": 3},
                   inplace=True)
    assert same is model
    ranks = {n: m.rank for n, m in model.named_modules() if isinstance(m, SVDLinear)}
    assert ranks == {"blocks.0.attn.q": 3, "blocks.1.attn.q": 3, "blocks.0.attn.v": 2, "blocks.1.attn.v": 5}
    with pytest.raises(ConfigError, match="rank_overrides key 'mlp.0' matches no selected layer"):
        convert(net(), rank=2, target=["q"], rank_overrides={"mlp.0": 2})


def test_rank_rules_energy_and_param_ratio() -> None:
    model = net()
    out = convert(model, energy=1.0, target=["embed"])
    assert out.embed.rank == 5
    out = convert(model, param_ratio=0.5, target=["mlp.0"])  # 8*12/(8+12) * 0.5 = 2.4
    assert {m.rank for m in out.modules() if isinstance(m, VanillaLinear)} == {2}
    w = model.embed.weight.detach()
    s = torch.linalg.svdvals(w)
    k = int((torch.cumsum(s**2, 0) / (s**2).sum() < 0.8).sum()) + 1
    assert convert(model, energy=0.8, target=["embed"]).embed.rank == k


def test_errors_name_layer_and_shape() -> None:
    model = net()
    with pytest.raises(RankError, match=r"'blocks.0.mlp.0'.*12x8"):
        convert(model, rank=9, target=["mlp.0"])
    with pytest.raises(RankError, match=r"'embed'.*8x5"):
        convert(model, rank=6)
    with pytest.raises(RankError, match="'embed'"):
        convert(model, rank=2, rank_overrides={"embed": 0})
    with pytest.raises(ConfigError, match="only one of rank, energy, param_ratio"):
        convert(model, rank=2, energy=0.9)
    assert convert(model).embed.rank == 5  # no rule: vanilla's default rank 20, capped at min(m, n)
    with pytest.raises(ConfigError, match="available: embed"):
        convert(model, rank=2, target=["nope"])
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        convert(model, rank=2, target="fc(")
    with pytest.raises(ConfigError, match="exclude 'nope'"):
        convert(model, rank=2, exclude=["nope"])
    with pytest.raises(ConfigError, match="method 'bogus'"):
        convert(model, "bogus", rank=2)
    # A failed conversion leaves an in-place target untouched.
    with pytest.raises(RankError):
        convert(model, rank=6, inplace=True)
    assert converted(model) == set()


@pytest.mark.parametrize("method", METHODS)
def test_merge_convert_full_rank_is_identity(method: str) -> None:
    model = net()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = convert(model, method, rank=5, target=["embed", "attn.q", "mlp.0", "mlp.2"],
                      rank_overrides={"attn.q": 8, "mlp.2": 8}, exclude=["mlp.0"])
    assert len(converted(out)) == 5
    if method == "lora":  # give the adapters something to merge
        for m in out.modules():
            if isinstance(m, LoRALinear):
                torch.nn.init.normal_(m.B, std=0.1)
    y = out(x)
    if method != "lora":
        torch.testing.assert_close(y, model(x), atol=1e-10, rtol=0)
    merged = merge(out)
    assert all(type(m) is not LoRALinear and not isinstance(m, LowRankLayer) for m in merged.modules())
    sd, ref = merged.state_dict(), model.state_dict()
    assert list(sd) == list(ref) and all(sd[k].shape == ref[k].shape for k in ref)
    torch.testing.assert_close(merged(x), y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", ["vanilla", "twofactor", "svd"])
def test_merge_convert_lower_rank_is_truncated_svd(method: str) -> None:
    model = mlp([10, 8, 6, 3]).double()
    out = merge(convert(model, method, rank=3))
    for name in ("fc0", "fc1"):
        w = getattr(model, name).weight.detach()
        u, s, vh = torch.linalg.svd(w)
        torch.testing.assert_close(getattr(out, name).weight.detach(), u[:, :3] @ torch.diag(s[:3]) @ vh[:3],
                                   atol=1e-12, rtol=0)
        torch.testing.assert_close(getattr(out, name).bias, getattr(model, name).bias)
    assert torch.equal(out.fc2.weight, model.fc2.weight)


def test_layer_classes_come_from_the_registry() -> None:
    assert layer_class("DLRTLinear").__name__ == "DLRTLinear"
    with pytest.raises(CheckpointError, match="not registered"):
        layer_class("NoSuchLinear")


def test_multihead_attention_projections_are_selectable() -> None:
    model = nn.Sequential(OrderedDict(att=nn.MultiheadAttention(8, 2), fc=nn.Linear(8, 8), out=nn.Linear(8, 2)))
    assert select(model) == ["att.q_proj", "att.k_proj", "att.v_proj", "att.out_proj", "fc"]
    assert select(model, target=["out_proj", "q_proj"]) == ["att.q_proj", "att.out_proj"]
    assert select(model, exclude=r"att\..*") == ["fc"]


def test_plan_rows() -> None:
    rows = {r["name"]: r for r in plan(mlp([784, 256, 128, 10]), rank=20)}
    fc0 = rows["fc0"]
    assert (fc0["in_features"], fc0["out_features"], fc0["rank"], fc0["convert"]) == (784, 256, 20, True)
    assert fc0["params_before"] == 784 * 256 + 256
    assert fc0["params_after"] == 20 * (784 + 256) + 400 + 256
    assert fc0["break_even_rank"] == pytest.approx(784 * 256 / (784 + 256))
    assert rows["fc2"]["convert"] is False and rows["fc2"]["params_after"] == 1290
    rows = plan(convert(mlp([6, 4, 2]), "svd", rank=2), rank=2)
    assert rows[0]["type"] == "SVDLinear" and rows[0]["params_after"] == 2 * 10 + 2 + 4
    assert [r["convert"] for r in rows] == [False, False]


# ---------------------------------------------------------------------------- structure

SIZES = [12, 10, 8, 4]


def variants() -> dict[str, nn.Module]:
    """Converted MLPs whose structure differs from the dense one in every way we support."""
    out: dict[str, nn.Module] = {}
    torch.manual_seed(1)
    out["vanilla"] = convert(mlp(SIZES), "vanilla", rank=3, init_decay=2.0)
    out["twofactor"] = convert(mlp(SIZES), "twofactor", rank=2)
    svd = convert(mlp(SIZES), "svd", rank=7, rank_overrides={"fc1": 6}, lambda_orth=0.1)
    with torch.no_grad():
        svd.fc0.s.copy_(torch.tensor([4.0, 1e-3, 3.0, 1e-3, 2.0, 1e-3, 1e-3]))
    svd.fc0.prune(0.99)  # 7 -> 3: shapes no longer follow the config
    out["svd_pruned"] = svd
    for merged in (False, True):
        lora = convert(mlp(SIZES), "lora", rank=2, lora_alpha=4.0)
        for m in lora.modules():
            if isinstance(m, LoRALinear):
                torch.nn.init.normal_(m.B, std=0.1)
                if merged:
                    m.merge()
        out[f"lora_merged={merged}"] = lora
    return out


def test_structure_round_trip_in_process() -> None:
    x = torch.randn(5, SIZES[0])
    for name, model in variants().items():
        struct = json.loads(json.dumps(structure(model)))  # must survive JSON
        fresh = restore_structure(mlp(SIZES), struct)
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh(x), model(x), msg=name)
    assert structure(variants()["svd_pruned"])["fc0"] == {
        "cls": "SVDLinear", "spec": {"in_features": 12, "out_features": 10, "rank": 3, "bias": True,
                                     "lambda_orth": 0.1, "lambda_sparse": 1e-4}}


FRESH = textwrap.dedent("""
    import json, sys, torch
    from lowrank import mlp
    from lowrank.convert import restore_structure
    folder, sizes = sys.argv[1], json.loads(sys.argv[2])
    names = json.load(open(f"{folder}/names.json"))
    x = torch.load(f"{folder}/x.pt", weights_only=True)
    for name in names:
        model = restore_structure(mlp(sizes), json.load(open(f"{folder}/{name}.json")))
        model.load_state_dict(torch.load(f"{folder}/{name}.pt", weights_only=True))
        expected = torch.load(f"{folder}/{name}.out.pt", weights_only=True)
        err = float((model(x) - expected).abs().max())
        assert err < 1e-6, (name, err)
        print(name, type(model.fc0).__name__, model.fc0.rank)
""")


def test_structure_round_trip_in_fresh_process(tmp_path: Path) -> None:
    x = torch.randn(5, SIZES[0])
    torch.save(x, tmp_path / "x.pt")
    models = variants()
    for name, model in models.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(structure(model)))
        torch.save(model.state_dict(), tmp_path / f"{name}.pt")
        torch.save(model(x).detach(), tmp_path / f"{name}.out.pt")
    (tmp_path / "names.json").write_text(json.dumps(list(models)))
    res = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path), json.dumps(SIZES)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert "svd_pruned SVDLinear 3" in lines and "twofactor TwoFactorLinear 2" in lines
    assert sum(line.startswith("lora") for line in lines) == 2


def test_restore_structure_errors() -> None:
    from lowrank.errors import CheckpointError

    with pytest.raises(CheckpointError, match="lacks"):
        restore_structure(mlp(SIZES), {"fc9": {"cls": "SVDLinear", "spec": {}}})
    with pytest.raises(CheckpointError, match="not registered"):
        restore_structure(mlp(SIZES), {"fc0": {"cls": "NoSuchLayer", "spec": {}}})


def test_types_after_conversion() -> None:
    types = {m: type(convert(mlp(SIZES), m, rank=2).fc0) for m in METHODS}
    assert types == {"vanilla": VanillaLinear, "twofactor": TwoFactorLinear, "svd": SVDLinear, "lora": LoRALinear}
