"""Hugging Face ``transformers`` models built locally from tiny configs (nothing downloaded): a BERT
classifier (nn.Linear projections) and GPT-2 (``Conv1D`` projections, weight stored (in, out)) convert
with every method, merge back exactly to their own classes, and train with ``lowrank.DLRT``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn import functional as F

import lowrank
from lowrank.conv1d import is_conv1d
from lowrank.convert import restore_structure, structure

transformers = pytest.importorskip("transformers")

METHODS = ["vanilla", "twofactor", "svd", "lora", "dlrt"]
F64 = torch.float64


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg).to(F64).eval()


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=60, n_embd=16, n_layer=2, n_head=2, n_positions=16, num_labels=2,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    return transformers.GPT2ForSequenceClassification(cfg).to(F64).eval()


MODELS = {"bert": (bert, "bert.encoder.layer.0.attention.self.query"),
          "gpt2": (gpt2, "transformer.h.0.attn.c_attn")}


def ids() -> torch.Tensor:
    return torch.randint(2, 60, (3, 10), generator=torch.Generator().manual_seed(1))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_convert_and_merge_round_trip(name, method):
    build, probe = MODELS[name]
    dense = build()
    x = ids()
    ref = logits(dense, x)
    kinds = {type(dense.get_submodule(r["name"])).__name__ for r in lowrank.plan(dense) if r["convert"]}
    assert kinds == ({"Conv1D"} if name == "gpt2" else {"Linear"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # full rank keeps more weights than dense, on purpose
        full = lowrank.convert(dense, method, rank=16)
    assert lowrank.layer.is_lowrank(full.get_submodule(probe))
    torch.testing.assert_close(logits(full, x), ref, rtol=0, atol=1e-9)   # full rank: the same function
    low = lowrank.convert(dense, method, rank=3)
    if method == "lora":
        with torch.no_grad():
            for m in low.modules():
                if hasattr(m, "lora_alpha"):
                    m.B.normal_(std=0.3)
    out = logits(low, x)
    assert (out - ref).abs().max() > 1e-6
    merged = lowrank.merge(low)
    layer = merged.get_submodule(probe)
    assert type(layer).__name__ == type(dense.get_submodule(probe)).__name__   # Conv1D back as Conv1D
    assert layer.weight.shape == dense.get_submodule(probe).weight.shape
    assert set(merged.state_dict()) == set(dense.state_dict())
    torch.testing.assert_close(logits(merged, x), out, rtol=0, atol=1e-10)


def test_gpt2_checkpoint_structure_keeps_conv1d():
    low = lowrank.convert(gpt2(), "dlrt", rank=4)
    fresh = gpt2()
    restore_structure(fresh, structure(low))
    fresh.load_state_dict(low.state_dict())
    x = ids()
    torch.testing.assert_close(logits(fresh, x), logits(low, x), rtol=0, atol=0)
    assert is_conv1d(lowrank.merge(fresh).transformer.h[1].mlp.c_fc)


@pytest.mark.parametrize("name", list(MODELS))
def test_trains_with_dlrt(name):
    build, probe = MODELS[name]
    model = lowrank.convert(build().float().train(), "dlrt", rank=4)
    opt = lowrank.DLRT(model, torch.optim.Adam, lr=1e-2, adaptive=True, tau=1e-3, max_rank=8)
    x, y = ids(), torch.tensor([0, 1, 1])
    first = F.cross_entropy(logits(model, x), y).item()
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(logits(model, x), y).backward()
        opt.step()
    assert F.cross_entropy(logits(model, x), y).item() < first
    layer = model.get_submodule(probe)
    assert layer.rank != 4 or any(m.rank != 4 for m in opt.layers)   # adaptive: ranks moved
    assert len(opt.layers) == len([r for r in lowrank.plan(build()) if r["convert"]])
