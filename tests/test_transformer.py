"""The ``transformer`` model: attention against scaled_dot_product_attention, every method at full
rank equals dense, one rank per head, checkpoints, Fashion-MNIST rows, the CLI on IMDB."""

from __future__ import annotations

import copy
import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lowrank
from cli_checks import one_line_error
from lowrank.attention import LowRankMultiheadAttention
from lowrank.convert import restore_structure, structure
from lowrank.head_split import HeadSplitLinear, split_heads
from lowrank.models import build_model
from lowrank.models.transformer import TransformerClassifier, masked_mean, sinusoidal_positions

METHODS = ["vanilla", "twofactor", "svd", "lora", "dlrt"]
F64 = torch.float64


def tokens(n: int = 4, length: int = 9, vocab: int = 50, seed: int = 3) -> torch.Tensor:
    """Float ids (the data's form), with trailing padding of different lengths and one empty text."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (n, length), generator=g).to(F64)
    for i in range(n):
        x[i, length - 2 * i:] = 0
    x[-1] = 0
    return x


def model(per_head: bool = False, seed: int = 0, **kw) -> TransformerClassifier:
    torch.manual_seed(seed)
    args = {"vocab_size": 50, "d_model": 16, "num_heads": 4, "num_layers": 2, "dim_feedforward": 24,
            "dropout": 0.0, "per_head": per_head, **kw}
    return build_model("transformer", args, sample_shape=(9,), num_outputs=3).to(F64).eval()


def quiet(m: nn.Module, method: str, **kw) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # full rank is past the break-even rank on purpose
        return lowrank.convert(m, method, **kw)


def test_attention_with_dense_projections_equals_sdpa():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True, dtype=F64)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    attn = LowRankMultiheadAttention.from_mha(mha)
    x = torch.randn(3, 7, 16, dtype=F64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = pad[2, 2:] = True
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(3, 7, 4, 4).transpose(1, 2)           # (N, H, L, d)

    q, k, v = heads(F.linear(x, wq, bq)), heads(F.linear(x, wk, bk)), heads(F.linear(x, wv, bv))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])   # True: may attend
    ref = F.linear(ref.transpose(1, 2).reshape(3, 7, 16), mha.out_proj.weight, mha.out_proj.bias)
    out, weights = attn(x, x, x, key_padding_mask=pad, need_weights=False)
    assert weights is None
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out_w, _ = attn(x, x, x, key_padding_mask=pad, need_weights=True)   # the explicit-softmax path
    torch.testing.assert_close(out_w, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(mha(x, x, x, key_padding_mask=pad)[0], ref, rtol=0, atol=1e-12)
    assert (ref[0] - F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1).reshape(7, 16) @
            mha.out_proj.weight.T).abs().max() > 1e-3   # the mask matters


def test_positions_and_pooling():
    pe = sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16) and torch.allclose(pe[0, 0::2], torch.zeros(8)) and torch.allclose(pe[0, 1::2], torch.ones(8))
    assert pe[7, 2] == pytest.approx(float(torch.sin(torch.tensor(7.0) / 10000 ** (2 / 16))), abs=1e-6)
    h = torch.arange(12.0).view(1, 4, 3)
    pad = torch.tensor([[False, False, True, True]])
    assert masked_mean(h, pad).tolist() == [[1.5, 2.5, 3.5]]


def test_padding_does_not_change_the_logits():
    m = model()
    x = tokens()
    longer = torch.cat([x, torch.zeros(4, 5, dtype=F64)], dim=1)    # the same texts padded to 14
    m14 = build_model("transformer", {"vocab_size": 50, "d_model": 16, "num_heads": 4, "num_layers": 2,
                                      "dim_feedforward": 24, "dropout": 0.0}, sample_shape=(14,), num_outputs=3)
    m14 = m14.to(F64).eval()
    m14.load_state_dict(m.state_dict())
    torch.testing.assert_close(m14(longer)[:3], m(x)[:3], rtol=0, atol=1e-12)
    assert torch.isfinite(m(x)).all()   # the empty text too (it attends to its padding)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_at_full_rank_equals_dense(method):
    dense = model()
    x = tokens()
    ref = dense(x)
    low = quiet(dense, method, rank=16)
    names = {n for n, mod in low.named_modules() if lowrank.layer.is_lowrank(mod)}
    assert {f"encoder.layers.{i}.{p}" for i in range(2) for p in ("self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.out_proj", "linear1", "linear2")} == names
    torch.testing.assert_close(low(x), ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(lowrank.merge(low)(x), ref, rtol=0, atol=1e-9)
    attention_only = quiet(dense, method, rank=4, target=r".*self_attn\..*")
    assert isinstance(attention_only.encoder.layers[0].linear1, nn.Linear)
    if method != "lora":   # LoRA starts as its base exactly (B = 0)
        assert (attention_only(x) - ref).abs().max() > 1e-6     # rank 4 of 16 changes the function


def test_one_rank_per_head():
    dense = model()
    x = tokens()
    split = copy.deepcopy(dense)
    for layer in split.encoder.layers:
        layer.self_attn = LowRankMultiheadAttention.from_mha(layer.self_attn)
        split_heads(layer.self_attn)
    assert isinstance(split.encoder.layers[0].self_attn.q_proj, HeadSplitLinear)
    torch.testing.assert_close(split(x), dense(x), rtol=0, atol=1e-12)
    per_head = model(per_head=True)
    assert [n for n, _ in per_head.named_modules() if n.startswith("encoder.layers.0.self_attn.k_proj.heads.")] == \
        [f"encoder.layers.0.self_attn.k_proj.heads.{h}" for h in range(4)]
    ranks = {f"layers.0.self_attn.q_proj.heads.{h}": h + 1 for h in range(4)}
    low = lowrank.convert(per_head, "dlrt", rank=2, rank_overrides=ranks, target=r".*self_attn\..*")
    q = low.encoder.layers[0].self_attn.q_proj
    assert [b.rank for b in q.heads] == [1, 2, 3, 4] and low.encoder.layers[1].self_attn.q_proj.heads[0].rank == 2
    assert low.encoder.layers[0].self_attn.out_proj.rank == 2
    # checkpoints: a fresh per-head model takes the structure and the weights
    fresh = model(per_head=True, seed=5)
    restore_structure(fresh, json.loads(json.dumps(structure(low))))
    fresh.load_state_dict(low.state_dict())
    torch.testing.assert_close(fresh(x), low(x), rtol=0, atol=0)
    merged = lowrank.merge(low)
    assert isinstance(merged.encoder.layers[0].self_attn, nn.MultiheadAttention)
    torch.testing.assert_close(merged(x), low(x), rtol=0, atol=1e-12)


def test_rank_adaptive_dlrt_adapts_each_head_on_its_own():
    torch.manual_seed(0)
    m = lowrank.convert(model(per_head=True).float().train(), "dlrt", rank=2, target=r".*self_attn\..*")
    opt = lowrank.DLRT(m, torch.optim.Adam, lr=1e-2, adaptive=True, tau=1e-3, max_rank=4)
    x, y = tokens().float(), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    heads = [[b.rank for b in getattr(layer.self_attn, p).heads] for layer in m.encoder.layers
             for p in ("q_proj", "k_proj", "v_proj")]
    assert len(heads) == 6 and all(1 <= r <= 4 for h in heads for r in h)
    assert any(len(set(h)) > 1 for h in heads)   # heads of one projection at different ranks
    assert torch.isfinite(m(x)).all()


def test_images_as_rows():
    torch.manual_seed(0)
    grey = build_model("transformer", {"d_model": 8, "num_heads": 2}, sample_shape=(1, 28, 28), num_outputs=10)
    assert isinstance(grey, TransformerClassifier) and grey.rows.in_features == 28 and grey.seq_len == 28
    assert grey(torch.randn(5, 784)).shape == (5, 10)
    rgb = build_model("transformer", {"d_model": 8, "num_heads": 2}, sample_shape=(3, 6, 5), num_outputs=4).eval()
    x = torch.randn(2, 3 * 6 * 5)
    rows = x.view(2, 3, 6, 5).permute(0, 2, 1, 3).reshape(2, 6, 15)   # row i: every channel's row i
    assert torch.equal(rgb[0](x).view(2, 6, 15), rows)
    with pytest.raises(lowrank.errors.ConfigError, match="token ids of a text dataset"):
        build_model("transformer", {}, sample_shape=(12,), num_outputs=2)
    with pytest.raises(lowrank.errors.ConfigError, match="divisible by num_heads"):
        build_model("transformer", {"d_model": 30}, sample_shape=(1, 28, 28), num_outputs=2)


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def small_imdb(datasets_dir: Path, tmp_path_factory) -> Path:
    """A data folder holding imdb/aclImdb_v1.tar.gz with 60 real reviews per split and class."""
    want = {(s, c): 60 for s in ("train", "test") for c in ("pos", "neg")}
    root = tmp_path_factory.mktemp("imdb-data")
    (root / "imdb").mkdir()
    with tarfile.open(datasets_dir / "imdb" / "aclImdb_v1_labeled.tar.gz", "r:gz") as src, \
            tarfile.open(root / "imdb" / "aclImdb_v1.tar.gz", "w:gz") as dst:
        for m in src:
            parts = m.name.split("/")
            if len(parts) == 4 and m.isfile() and want.get((parts[1], parts[2]), 0) > 0:
                want[(parts[1], parts[2])] -= 1
                dst.addfile(m, io.BytesIO(src.extractfile(m).read()))
                if not any(want.values()):
                    break
    return root


def test_cli_trains_on_imdb_and_keeps_the_tokenizer(lowrank_cli, small_imdb, tmp_path):
    args = ["--db", tmp_path / "r.db", "train", "--runs-dir", tmp_path / "runs", "--model", "transformer",
            "--dataset", "imdb", "--data-dir", small_imdb, "--max-length", "64", "--vocab-size", "800",
            "--model-args", '{"d_model": 16, "num_heads": 2}', "--epochs", "1", "--batch-size", "16",
            "--method", "dlrt", "--rank", "4", "--adaptive", "--tau", "0.1", "--json"]
    p = lowrank_cli(args, tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)["history"]
    run_dir = next((tmp_path / "runs").iterdir())
    tok = json.loads((run_dir / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "WordPiece" and len(tok["model"]["vocab"]) <= 800
    show = json.loads(lowrank_cli(["--db", tmp_path / "r.db", "runs", "show", "1", "--json"], tmp_path).stdout)
    params = show["summary"]["layer_params"]
    assert params["embed"] == 800 * 16 and params["classifier"] == 16 * 2 + 2
    assert "encoder.layers.0.self_attn.q_proj" in params and "encoder.layers.0.linear1" in params
    assert sum(params.values()) == show["summary"]["accounting"]["inference"]["count"]
    assert set(show["summary"]["ranks"]) >= {"encoder.layers.0.self_attn.v_proj", "encoder.layers.0.linear2"}
    assert len(out) == 1 and 0 <= out[0]["test_acc"] <= 1


def test_cli_resume_reads_the_runs_tokenizer(small_imdb, tmp_path):
    from lowrank.config import TrainConfig
    from lowrank.data import DataConfig
    from lowrank.errors import CorruptFileError
    from lowrank.run import resume_run, train_run
    from lowrank.store import Store

    store = Store(tmp_path / "db.sqlite")
    cfg = TrainConfig(data=DataConfig(dataset="imdb", data_dir=str(small_imdb), max_length=32, vocab_size=400,
                                      train_size=64, test_size=32), model="transformer",
                      model_args={"d_model": 8, "num_heads": 2}, epochs=2, batch_size=32)

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, store=store, runs_dir=tmp_path / "runs", on_epoch=stop)
    (run,) = store.runs()
    tok = Path(run["run_dir"]) / "tokenizer.json"
    good = tok.read_text()
    tok.write_text("{damaged")
    with pytest.raises(CorruptFileError, match="tokenizer.json"):
        resume_run(run["id"], store=store)
    tok.write_text(good)
    res = resume_run(run["id"], store=store)
    assert len(res.history) == 2 and res.summary["test_acc"] is not None
    store.close()


def test_cli_transformer_on_fashion_mnist(lowrank_cli, tmp_path):
    p = lowrank_cli(["--db", tmp_path / "r.db", "train", "--runs-dir", tmp_path / "runs", "--model", "transformer",
                     "--dataset", "fashion-mnist", "--train-size", "2000", "--test-size", "500", "--epochs", "2", "--batch-size", "32",
                     "--model-args", '{"d_model": 32, "num_heads": 4}', "--method", "vanilla", "--rank", "8",
                     "--optimizer", "adam", "--lr", "3e-3", "--json"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["history"][-1]["test_acc"] > 0.5   # chance: 0.1


@pytest.mark.parametrize("extra, needles", [
    (["--max-length", "0"], ["max_length", "1 to 8192"]),
    (["--model-args", '{"d_model": 30}'], ["d_model 30", "num_heads 4"]),
    (["--model-args", '{"heads": 2}'], ["does not take", "heads"]),
])
def test_cli_one_line_errors(lowrank_cli, small_imdb, tmp_path, extra, needles):
    p = lowrank_cli(["--db", tmp_path / "r.db", "train", "--runs-dir", tmp_path / "runs", "--model", "transformer",
                     "--dataset", "imdb", "--data-dir", small_imdb, *extra], tmp_path)
    one_line_error(p, *needles)
    assert not (tmp_path / "runs").exists()


def test_cli_transformer_on_a_table_is_one_line(lowrank_cli, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    p = lowrank_cli(["--db", tmp_path / "r.db", "train", "--runs-dir", tmp_path / "runs", "--model", "transformer",
                     "--dataset", csv], tmp_path)
    one_line_error(p, "transformer", "use --model mlp")


def test_shipped_imdb_config_loads():
    from lowrank.experiment import load_experiment

    exp = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "imdb.toml")
    assert {r.config.model for r in exp.runs} == {"transformer"} and exp.runs[0].config.method.method == "dense"
    assert sorted(r.config.method.rank for r in exp.runs if r.config.method.method == "vanilla") == [8, 16, 32]
    assert any(getattr(r.config.method, "adaptive", False) for r in exp.runs)
    assert all(r.config.data.dataset == "imdb" and r.config.data.max_length == 256 for r in exp.runs)


def test_compare_reports_accuracy_and_time_against_k(lowrank_cli, small_imdb, tmp_path):
    shutil.copytree(small_imdb, tmp_path / "data")   # config-file paths stay in the file's folder
    toml = tmp_path / "tiny-imdb.toml"
    toml.write_text('''name = "tiny-imdb"
title = "tiny"
[base]
model = "transformer"
model_args = { d_model = 16, num_heads = 2 }
epochs = 2
batch_size = 32
[base.data]
dataset = "imdb"
data_dir = "data"
max_length = 32
vocab_size = 400
[[runs]]
label = "dense"
[[runs]]
label = "k2"
method = { method = "vanilla", rank = 2, target = '.*self_attn\\..*' }
[[runs]]
label = "k4"
method = { method = "vanilla", rank = 4, target = '.*self_attn\\..*' }
[[runs]]
label = "adaptive"
method = { method = "dlrt", rank = 8, adaptive = true, tau = 0.3, max_rank = 8, target = '.*self_attn\\..*' }
''')
    p = lowrank_cli(["--db", tmp_path / "r.db", "compare", "--config", toml, "--runs-dir", tmp_path / "runs",
                     "--out", tmp_path / "report", "--quiet"], tmp_path)
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    section = md[md.index("Accuracy and time against k"):]
    for label in ("| dense ", "| k2 ", "| k4 ", "| adaptive "):
        assert label in section
    assert "adaptive: q_proj" in section
    assert "vanilla on imdb: k = " in section   # the rank rule's choice
    figures = {f.name for f in (tmp_path / "report" / "figures").iterdir()}
    assert {"accuracy_vs_k_0.png", "time_vs_k_0.png", "rank_evolution.png"} <= figures


def test_compress_leaves_packed_attention_out():
    from lowrank.compress.truncate import selected_layers

    m = build_model("transformer", {"d_model": 8, "num_heads": 2}, sample_shape=(1, 28, 28), num_outputs=10)
    assert selected_layers(m) == ["rows", "encoder.layers.0.linear1", "encoder.layers.0.linear2"]
    with pytest.raises(lowrank.errors.ConfigError, match="projection of an nn.MultiheadAttention"):
        selected_layers(m, target=r".*self_attn\..*")
