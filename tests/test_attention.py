"""nn.MultiheadAttention conversion: LowRankMultiheadAttention's semantics, full-rank exactness,
merge, transformer layers in train and eval (PyTorch's fused path), plan, checkpoints."""

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

from lowrank import convert, merge, plan
from lowrank.attention import LowRankMultiheadAttention
from lowrank.convert import restore_structure, select, structure
from lowrank.layer import LowRankLayer

METHODS = ["vanilla", "twofactor", "svd", "lora", "dlrt"]
F64 = torch.float64


def mha(seed: int = 0, **kw) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    kw = {"embed_dim": 8, "num_heads": 2, **kw}
    m = nn.MultiheadAttention(dtype=F64, **kw)
    with torch.no_grad():  # nonzero biases, so every bias slice is checked
        for name in ("in_proj_bias", "bias_k", "bias_v"):
            p = getattr(m, name, None)
            if p is not None:
                p.normal_()
        if m.out_proj.bias is not None:
            m.out_proj.bias.normal_()
    return m.eval()


def quiet_convert(model: nn.Module, method: str, **kw) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # full rank is past TwoFactorLinear's break-even on purpose
        return convert(model, method, **kw)


def randomise_lora(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "lora_alpha"):
            torch.nn.init.normal_(m.B, std=0.1)


def inputs(batch_first: bool, L: int = 5, S: int = 6, N: int = 3, E: int = 8, kdim: int = 8, vdim: int = 8,
           batched: bool = True, grad: bool = True):
    torch.manual_seed(11)

    def t(length: int, d: int) -> torch.Tensor:
        shape = ((N, length, d) if batch_first else (length, N, d)) if batched else (length, d)
        return torch.randn(shape, dtype=F64, requires_grad=grad)

    return t(L, E), t(S, kdim), t(S, vdim)


def run(module: nn.Module, q, k, v, **kw):
    out, w = module(q, k, v, **kw)
    g = torch.ones_like(out) + torch.arange(out.numel(), dtype=F64).reshape(out.shape) / out.numel()
    grads = torch.autograd.grad(out, [t for t in (q, k, v) if t.requires_grad], g)
    return out, w, grads


def assert_same(ref, got, atol: float = 1e-12) -> None:
    (o1, w1, g1), (o2, w2, g2) = ref, got
    torch.testing.assert_close(o2, o1, atol=atol, rtol=0)
    assert (w1 is None) == (w2 is None)
    if w1 is not None:
        torch.testing.assert_close(w2, w1, atol=atol, rtol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, atol=atol, rtol=0)


def masks(L: int = 5, S: int = 6, N: int = 3, H: int = 2):
    g = torch.Generator().manual_seed(5)
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -2:] = True
    kpm[2, 0] = True
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=F64)[:, :S] if S >= L else None
    bool_2d = torch.rand(L, S, generator=g) > 0.7
    bool_2d[:, 0] = False   # every query sees at least one key
    float_3d = torch.randn(N * H, L, S, generator=g, dtype=F64)
    return kpm, bool_2d, float_3d, causal


# ---------------------------------------------------------------------------- the module

CASES = {
    "plain": {},
    "kpm": {"key_padding_mask": "kpm"},
    "kpm-float": {"key_padding_mask": "kpm-float"},
    "bool-2d": {"attn_mask": "bool_2d"},
    "float-3d+kpm": {"attn_mask": "float_3d", "key_padding_mask": "kpm"},
    "per-head": {"average_attn_weights": False, "attn_mask": "float_3d"},
}


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch_first", [True, False])
def test_from_mha_is_exact(batch_first: bool, case: str, need_weights: bool) -> None:
    ref_mod = mha(batch_first=batch_first)
    new = LowRankMultiheadAttention.from_mha(ref_mod)
    assert all(type(getattr(new, p)) is nn.Linear for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    kpm, bool_2d, float_3d, _ = masks()
    named = {"kpm": kpm, "kpm-float": torch.zeros(kpm.shape, dtype=F64).masked_fill(kpm, -1e4),
             "bool_2d": bool_2d, "float_3d": float_3d}
    kw = {k: (named[v] if isinstance(v, str) else v) for k, v in CASES[case].items()}
    q, k, v = inputs(batch_first)
    ref = run(ref_mod, q, k, v, need_weights=need_weights, **kw)
    got = run(new, q, k, v, need_weights=need_weights, **kw)
    assert_same(ref, got)
    assert ref[0].shape == ((3, 5, 8) if batch_first else (5, 3, 8))


@pytest.mark.parametrize("kw", [
    {"kdim": 5, "vdim": 7},
    {"add_bias_kv": True},
    {"add_zero_attn": True, "add_bias_kv": True},
    {"bias": False},
    {"dropout": 0.3},            # eval mode: no dropout
])
def test_from_mha_variants_are_exact(kw: dict) -> None:
    ref_mod = mha(**kw)
    new = LowRankMultiheadAttention.from_mha(ref_mod)
    assert new.spec() == LowRankMultiheadAttention.spec_of(ref_mod)
    kpm, bool_2d, _, _ = masks()
    q, k, v = inputs(False, kdim=kw.get("kdim", 8), vdim=kw.get("vdim", 8))
    for need in (True, False):
        assert_same(run(ref_mod, q, k, v, need_weights=need, key_padding_mask=kpm, attn_mask=bool_2d),
                    run(new, q, k, v, need_weights=need, key_padding_mask=kpm, attn_mask=bool_2d))
    assert (new.in_proj_bias is None) == (ref_mod.in_proj_bias is None)
    if ref_mod._qkv_same_embed_dim:
        torch.testing.assert_close(new.in_proj_weight, ref_mod.in_proj_weight)
    else:
        assert new.in_proj_weight is None
        torch.testing.assert_close(new.k_proj_weight, ref_mod.k_proj_weight)


def test_unbatched_and_causal_inputs() -> None:
    ref_mod = mha()
    new = LowRankMultiheadAttention.from_mha(ref_mod)
    q, k, v = inputs(False, batched=False)
    for need in (True, False):
        assert_same(run(ref_mod, q, k, v, need_weights=need), run(new, q, k, v, need_weights=need))
    q, k, v = inputs(True, L=5, S=5)
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=F64)
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[1, 3:] = True
    ref_mod.batch_first = new.batch_first = True
    for need in (True, False):
        for extra in ({}, {"key_padding_mask": kpm}):
            assert_same(run(ref_mod, q, k, v, attn_mask=causal, is_causal=True, need_weights=need, **extra),
                        run(new, q, k, v, attn_mask=causal, is_causal=True, need_weights=need, **extra))
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        new(q, k, v, is_causal=True)


def test_dropout_in_training_mode() -> None:
    ref_mod = mha(dropout=0.5).train()
    new = LowRankMultiheadAttention.from_mha(ref_mod)
    assert new.training
    q, k, v = inputs(True)
    ref_mod.batch_first = new.batch_first = True
    torch.manual_seed(0)
    a, _ = new(q, k, v, need_weights=False)
    torch.manual_seed(1)
    b, _ = new(q, k, v, need_weights=False)
    assert not torch.allclose(a, b)   # dropout acts
    torch.manual_seed(0)
    w1 = ref_mod(q, k, v)[1]
    torch.manual_seed(0)
    w2 = new(q, k, v)[1]
    torch.testing.assert_close(w2, w1)   # need_weights: the same dropout draw on the weights


# ---------------------------------------------------------------------------- conversion

def attn_model(seed: int = 0, **kw) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(att=mha(seed, **kw), head=nn.Linear(8, 2, dtype=F64)))


class SelfAttention(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.att = mha(**kw)
        self.head = nn.Linear(8, 2, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.att(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("method", METHODS)
def test_full_rank_conversion_equals_mha_forward_and_gradients(method: str) -> None:
    ref_mod = mha(kdim=6, vdim=7)
    model = nn.Sequential(OrderedDict(att=ref_mod))
    out = quiet_convert(model, method, target=[r"q_proj", "k_proj", "v_proj", "out_proj"], rank=8,
                        rank_overrides={"k_proj": 6, "v_proj": 7})
    att = out.att
    assert isinstance(att, LowRankMultiheadAttention)
    assert all(isinstance(getattr(att, p), LowRankLayer) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    kpm, bool_2d, _, _ = masks()
    q, k, v = inputs(False, kdim=6, vdim=7)
    for need in (True, False):
        assert_same(run(ref_mod, q, k, v, need_weights=need, key_padding_mask=kpm, attn_mask=bool_2d),
                    run(att, q, k, v, need_weights=need, key_padding_mask=kpm, attn_mask=bool_2d), atol=1e-10)


def test_selection_names_and_partial_conversion() -> None:
    model = attn_model()
    assert select(model) == ["att.q_proj", "att.k_proj", "att.v_proj", "att.out_proj"]  # head: the last Linear
    out = convert(model, "vanilla", rank=3, target=["k_proj"])
    att = out.att
    assert isinstance(att, LowRankMultiheadAttention)
    assert {p: type(getattr(att, p)).__name__ for p in ("q_proj", "k_proj", "v_proj", "out_proj")} == \
        {"q_proj": "Linear", "k_proj": "VanillaLinear", "v_proj": "Linear", "out_proj": "Linear"}
    torch.testing.assert_close(att.q_proj.weight, model.att.in_proj_weight[:8])
    # The converted module's own Linears are selectable by the same names.
    assert select(out) == ["att.q_proj", "att.v_proj", "att.out_proj"]
    again = convert(out, "svd", rank=2, target=["out_proj"])
    assert type(again.att.out_proj).__name__ == "SVDLinear" and type(again.att.k_proj).__name__ == "VanillaLinear"
    # Only out_proj selected: the attention module is replaced all the same.
    only_out = convert(model, "vanilla", rank=3, target=["att.out_proj"])
    assert isinstance(only_out.att, LowRankMultiheadAttention) and type(only_out.att.q_proj) is nn.Linear
    assert convert(model, "vanilla", rank=2, target=["head"]).att.__class__ is nn.MultiheadAttention


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kw", [{}, {"kdim": 5, "vdim": 7, "add_bias_kv": True}, {"bias": False}])
def test_merge_is_the_inverse(method: str, kw: dict) -> None:
    model = nn.Sequential(OrderedDict(att=mha(**kw)))
    out = quiet_convert(model, method, rank=2, target=["q_proj", "k_proj", "v_proj", "out_proj"])
    randomise_lora(out)
    merged = merge(out)
    assert type(merged.att) is nn.MultiheadAttention and merged.att._qkv_same_embed_dim == model.att._qkv_same_embed_dim
    sd, ref = merged.state_dict(), model.state_dict()
    assert list(sd) == list(ref) and all(sd[key].shape == ref[key].shape for key in ref)
    q, k, v = inputs(False, kdim=kw.get("kdim", 8), vdim=kw.get("vdim", 8), grad=False)
    torch.testing.assert_close(merged.att(q, k, v)[0], out.att(q, k, v)[0], atol=1e-10, rtol=0)
    # merge(convert(.)) at full rank gives the original weights back.
    full = merge(quiet_convert(model, method, rank=8, target=["q_proj", "out_proj"]))
    if method != "lora":
        torch.testing.assert_close(full.att.out_proj.weight, model.att.out_proj.weight, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------- transformer layers

def encoder_layer(batch_first: bool, seed: int = 0) -> nn.TransformerEncoderLayer:
    torch.manual_seed(seed)
    return nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first, dtype=F64)


class FusedCalls:
    """Counts calls of PyTorch's fused encoder-layer kernel."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = torch._transformer_encoder_layer_fwd

        def wrapper(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", wrapper)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_converted_encoder_layer_train_and_eval(method: str, batch_first: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fused = FusedCalls(monkeypatch)
    layer = encoder_layer(batch_first)
    model = nn.Sequential(OrderedDict(enc=layer, head=nn.Linear(8, 2, dtype=F64)))
    out = quiet_convert(model, method, rank=8)     # full rank; head (the last Linear) kept
    assert isinstance(out.enc.self_attn, LowRankMultiheadAttention)
    assert all(isinstance(m, LowRankLayer) for m in (out.enc.linear1, out.enc.linear2, out.enc.self_attn.q_proj))
    x = torch.randn((3, 5, 8) if batch_first else (5, 3, 8), dtype=F64)
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[0, -1] = True
    for mode in ("train", "eval"):
        model.train(mode == "train")
        out.train(mode == "train")
        for kwargs in ({}, {"src_key_padding_mask": kpm}):
            expected = layer(x, **kwargs)
            torch.testing.assert_close(out.enc(x, **kwargs), expected, atol=1e-10, rtol=0)
            with torch.no_grad():
                torch.testing.assert_close(out.enc(x, **kwargs), layer(x, **kwargs), atol=1e-10, rtol=0)
    # train mode: gradients reach the factors (DLRT's layers are trained by its integrator; see
    # test_dlrt_integrator_trains_converted_transformer)
    if method != "dlrt":
        out.train()
        out(x).sum().backward()
        for mod in (out.enc.self_attn.q_proj, out.enc.self_attn.out_proj, out.enc.linear1):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    # The unconverted layer took the fused path in eval under no_grad (batch_first only); ours never does.
    assert fused.calls == (2 if batch_first else 0)


@pytest.mark.parametrize("method", METHODS)
def test_fused_path_reads_lowrank_linear_weights(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only linear1/linear2 converted: in eval under no_grad PyTorch's fused kernel runs and reads
    ``linear1.weight`` etc. from the low-rank layers (formerly an AttributeError)."""
    fused = FusedCalls(monkeypatch)
    layer = encoder_layer(True).eval()
    out = quiet_convert(nn.Sequential(layer), method, rank=8, target=["linear1", "linear2"])
    randomise_lora(out)
    enc = out[0]
    assert type(enc.self_attn) is nn.MultiheadAttention and isinstance(enc.linear1, LowRankLayer)
    assert enc.linear1.weight.shape == (16, 8) and enc.linear2.bias.shape == (8,)
    x = torch.randn(3, 5, 8, dtype=F64)
    expected = merge(out)[0](x)    # the same function with dense Linears, regular path (grad enabled)
    with torch.no_grad():
        got = enc(x)
    assert fused.calls == 1
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    if method != "lora":
        torch.testing.assert_close(got, layer(x), atol=1e-10, rtol=0)


def test_transformer_encoder_stack_with_padding_mask_in_eval() -> None:
    """nn.TransformerEncoder turns a padded batch into a nested tensor in eval (no_grad); that path
    is switched off while its layers hold LowRankMultiheadAttention, and back on after merge."""
    torch.manual_seed(0)
    stack = nn.TransformerEncoder(encoder_layer(True), num_layers=2, enable_nested_tensor=True).eval()
    assert stack.use_nested_tensor
    out = convert(stack, "vanilla", rank=8, exclude=["layers.1.linear2"])
    assert out.use_nested_tensor is False
    x = torch.randn(3, 5, 8, dtype=F64)
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[0, 3:] = True
    with torch.no_grad():
        got = out(x, src_key_padding_mask=kpm)
        ref = stack(x, src_key_padding_mask=kpm)
    keep = ~kpm   # the nested path leaves padded positions at 0
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-10, rtol=0)
    assert merge(out).use_nested_tensor is True


def test_plan_rows_for_attention() -> None:
    model = nn.Sequential(OrderedDict(enc=encoder_layer(True), head=nn.Linear(8, 2, dtype=F64)))
    rows = {r["name"]: r for r in plan(model, "vanilla", rank=3, exclude=["v_proj"])}
    assert list(rows) == ["enc.self_attn.q_proj", "enc.self_attn.k_proj", "enc.self_attn.v_proj",
                          "enc.self_attn.out_proj", "enc.linear1", "enc.linear2", "head"]
    q = rows["enc.self_attn.q_proj"]
    assert (q["kind"], q["type"], q["attention"], q["projection"]) == ("attention", "MultiheadAttention",
                                                                        "enc.self_attn", "q")
    assert (q["rank"], q["convert"], q["becomes"]) == (3, True, "VanillaLinear")
    assert q["params_before"] == 72 and q["params_after"] == 3 * 16 + 9 + 8
    assert rows["enc.self_attn.k_proj"]["note"] == "in_proj_weight[8:16] of enc.self_attn"
    v = rows["enc.self_attn.v_proj"]
    assert (v["convert"], v["rank"], v["becomes"], v["params_after"]) == (False, None, "Linear", 72)
    assert rows["enc.self_attn.out_proj"]["projection"] == "out" and rows["head"]["convert"] is False
    # After conversion: the projections are the module's own children.
    rows = {r["name"]: r for r in plan(convert(model, "vanilla", rank=3, exclude=["v_proj"]), "vanilla", rank=2)}
    assert rows["enc.self_attn.q_proj"]["type"] == "VanillaLinear" and rows["enc.self_attn.q_proj"]["rank"] == 3
    assert rows["enc.self_attn.v_proj"]["type"] == "Linear" and rows["enc.self_attn.v_proj"]["convert"] is True


def tiny_transformer() -> nn.Module:
    """(N, 784) -> (N, 10): 28 tokens of 28 features, one encoder layer, mean, Linear."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        tokens=nn.Unflatten(1, (28, 28)),
        enc=nn.TransformerEncoderLayer(28, 2, 32, dropout=0.0, batch_first=True),
        pool=nn.Flatten(1), head=nn.Linear(28 * 28, 10)))


def test_lowrank_inspect_lists_attention(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from lowrank.cli import main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["inspect", "--model", "test_attention:tiny_transformer", "--dataset", "mnist",
                 "--train-size", "32", "--test-size", "8", "--method", "svd", "--rank", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = {line.split()[0]: line for line in out[1:]}
    assert list(lines)[:6] == ["enc.self_attn.q_proj", "enc.self_attn.k_proj", "enc.self_attn.v_proj",
                               "enc.self_attn.out_proj", "enc.linear1", "enc.linear2"]
    assert "in_proj_weight[0:28] of enc.self_attn" in lines["enc.self_attn.q_proj"]
    assert "-> SVDLinear" in lines["enc.self_attn.q_proj"]
    assert out[-1] == ("attention enc.self_attn -> LowRankMultiheadAttention: q: SVDLinear r4, k: SVDLinear r4, "
                       "v: SVDLinear r4, out: SVDLinear r4")


# ---------------------------------------------------------------------------- checkpoints & training

FRESH = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    from lowrank.convert import restore_structure
    from lowrank.attention import LowRankMultiheadAttention
    folder = sys.argv[1]
    torch.manual_seed(123)   # different initial values: everything must come from the files
    model = nn.Sequential(nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, dtype=torch.float64), 2,
        enable_nested_tensor=False), nn.Linear(8, 3, dtype=torch.float64)).eval()
    restore_structure(model, json.load(open(f"{folder}/structure.json")))
    model.load_state_dict(torch.load(f"{folder}/model.pt", weights_only=True))
    x = torch.load(f"{folder}/x.pt", weights_only=True)
    expected = torch.load(f"{folder}/out.pt", weights_only=True)
    err = float((model(x) - expected).abs().max())
    assert err < 1e-12, err
    att = model[0].layers[1].self_attn
    print(type(att).__name__, type(att.q_proj).__name__, att.q_proj.rank, type(att.v_proj).__name__)
""")


@pytest.mark.parametrize("method", ["vanilla", "dlrt"])
def test_structure_round_trip_in_fresh_process(method: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, dtype=F64), 2,
        enable_nested_tensor=False), nn.Linear(8, 3, dtype=F64)).eval()
    out = convert(model, method, rank=3, exclude=["v_proj"], rank_overrides={"layers.1.self_attn.q_proj": 2})
    struct = structure(out)
    assert struct["0.layers.1.self_attn"]["cls"] == "LowRankMultiheadAttention"
    assert struct["0.layers.1.self_attn.q_proj"]["spec"]["rank"] == 2
    assert "0.layers.1.self_attn.v_proj" not in struct
    x = torch.randn(2, 5, 8, dtype=F64)
    (tmp_path / "structure.json").write_text(json.dumps(struct))
    torch.save(out.state_dict(), tmp_path / "model.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.save(out(x).detach(), tmp_path / "out.pt")
    res = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    expected_cls = "VanillaLinear" if method == "vanilla" else "DLRTLinear"
    assert res.stdout.split() == ["LowRankMultiheadAttention", expected_cls, "2", "Linear"]


def test_restore_structure_in_process_keeps_modes_and_merges() -> None:
    model = nn.Sequential(encoder_layer(False), nn.Linear(8, 2, dtype=F64))
    out = convert(model, "lora", rank=2)
    randomise_lora(out)
    fresh = restore_structure(nn.Sequential(encoder_layer(False, seed=4), nn.Linear(8, 2, dtype=F64)),
                              json.loads(json.dumps(structure(out))))
    fresh.load_state_dict(out.state_dict())
    x = torch.randn(5, 3, 8, dtype=F64)
    torch.testing.assert_close(fresh(x), out(x))
    torch.testing.assert_close(merge(fresh)(x), out(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["vanilla", "lora"])
def test_converted_transformer_trains(method: str) -> None:
    from lowrank.config import OptimConfig
    from lowrank.losses import loss_function
    from lowrank.stepper import Stepper

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(enc=nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                                      pool=nn.Flatten(1), head=nn.Linear(40, 2)))
    model = convert(model, method, rank=4)
    if method == "lora":
        from lowrank.methods.lora import freeze_base
        freeze_base(model)
    x = torch.randn(64, 5, 8)
    y = (x[:, 0, 0] > 0).long()
    stepper = Stepper(model, OptimConfig(optimizer="adam", lr=1e-2))
    loss_fn = loss_function("cross_entropy")
    losses = [float(stepper.step(x, y, loss_fn)) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_dlrt_integrator_trains_converted_transformer() -> None:
    from torch.nn import functional as F

    from lowrank.methods.dlrt import DLRT

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(enc=nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                                      pool=nn.Flatten(1), head=nn.Linear(40, 2)))
    model = convert(model, "dlrt", rank=4)
    opt = DLRT(model, torch.optim.Adam, lr=1e-2)
    assert {n for n, m in model.named_modules() if m in opt.layers} == {
        "enc.self_attn.q_proj", "enc.self_attn.k_proj", "enc.self_attn.v_proj", "enc.self_attn.out_proj",
        "enc.linear1", "enc.linear2"}
    x = torch.randn(64, 5, 8)
    y = (x[:, 0, 0] > 0).long()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    assert max(layer.orthonormality_error() for layer in opt.layers) < 1e-4


def test_accounting_counts_attention_projections() -> None:
    from lowrank.accounting import count, hidden_weights, linear_like

    model = nn.Sequential(OrderedDict(enc=encoder_layer(True), head=nn.Linear(8, 2, dtype=F64)))
    names = [n for n, _ in linear_like(model)]
    assert names == ["enc.self_attn.q_proj", "enc.self_attn.k_proj", "enc.self_attn.v_proj",
                     "enc.self_attn.out_proj", "enc.linear1", "enc.linear2", "head"]
    dense = count(model)
    proj = 4 * (64 + 8)
    ffn = (128 + 16) + (128 + 8)
    assert dense.flops_per_sample == dense.dense_flops == proj + ffn + 18   # per token
    assert hidden_weights(model).count == 4 * 64 + 2 * 128
    out = convert(model, "vanilla", rank=2, exclude=["linear2"])
    a = count(out, dense_reference=model)
    low = 2 * 16 + 4 + 8                       # VanillaLinear 8x8 rank 2 with bias
    assert a.flops_per_sample == 4 * low + (2 * 24 + 4 + 16) + (128 + 8) + 18
    assert a.dense_flops == dense.flops_per_sample and a.dense_params == dense.dense_params
    assert a.hidden.count == 4 * (low - 8) + (2 * 24 + 4) + 128
    assert a.hidden.ratio == a.hidden.count / (4 * 64 + 2 * 128)
    assert a.inference.count == dense.inference.count - 4 * 72 - 144 + 4 * low + (2 * 24 + 4 + 16)


def test_a_bare_attention_module_converts_and_merges() -> None:
    ref_mod = mha()
    out = convert(ref_mod, "svd", rank=8)   # default: every projection but out_proj (the last Linear)
    assert isinstance(out, LowRankMultiheadAttention) and type(ref_mod) is nn.MultiheadAttention
    assert [type(getattr(out, p)).__name__ for p in ("q_proj", "k_proj", "v_proj", "out_proj")] == \
        ["SVDLinear", "SVDLinear", "SVDLinear", "Linear"]
    q, k, v = inputs(False)
    assert_same(run(ref_mod, q, k, v), run(out, q, k, v), atol=1e-10)
    back = merge(out)
    assert type(back) is nn.MultiheadAttention and list(back.state_dict()) == list(ref_mod.state_dict())
