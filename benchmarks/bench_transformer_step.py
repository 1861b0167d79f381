"""Training-step time of the IMDB transformer: dense against low-rank attention at each k, in one run.

The model is that of ``configs/imdb.toml`` (``transformer``: d_model 64, 4 heads, one encoder
layer, feed-forward 128, 8,000-token vocabulary, 256 positions), stepped by the CLI's own
steppers (Adam, batch 64) on a fixed pool of random token ids with the padding profile of
IMDB at max length 256 (44% of reviews fill all 256 positions; the rest end in padding).
Rows: ``dense`` (``nn.MultiheadAttention``, as built); ``dense, separate projections``
(the same weights in :class:`~lowrank.attention.LowRankMultiheadAttention` with
``nn.Linear`` projections: the attention code every low-rank row runs, so the two dense rows
separate the implementation from the rank); vanilla ``U S V^T`` attention at each k; fixed
and rank-adaptive DLRT (parallel) at k = 16.

Timing protocol: ``timing.py`` (interleaved rounds, the 25th-percentile block kept); compare
the ratios.

    python benchmarks/bench_transformer_step.py [--threads N] [--rounds R] [--steps S] [--json out.json]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.nn import functional as F

from lowrank.attention import LowRankMultiheadAttention
from lowrank.config import OptimConfig, TrainConfig
from lowrank.data import DataConfig
from lowrank.registry import method_config
from lowrank.run import build_dense_model, apply_method, build_stepper
from timing import StepStream, interleaved, parser

ARGS = {"d_model": 64, "num_heads": 4, "num_layers": 1, "dim_feedforward": 128, "dropout": 0.1}
LENGTH, VOCAB = 256, 8000
TARGET = r".*self_attn\..*"
RANKS = [4, 8, 16, 32]


def rows(batch: int) -> dict[str, tuple[torch.nn.Module, object]]:
    specs = [("dense", method_config("dense"), False), ("dense, separate projections", method_config("dense"), True)]
    specs += [(f"vanilla k={k}", method_config("vanilla", rank=k, target=TARGET), False) for k in RANKS]
    specs += [("DLRT fixed k=16", method_config("dlrt", rank=16, target=TARGET), False),
              ("DLRT adaptive from 32", method_config("dlrt", rank=32, adaptive=True, tau=0.1, max_rank=32,
                                                      target=TARGET), False)]
    out = {}
    for name, method, separate in specs:
        cfg = TrainConfig(model="transformer", model_args=dict(ARGS), method=method, batch_size=batch,
                          data=DataConfig(dataset="imdb", max_length=LENGTH, vocab_size=VOCAB),
                          optim=OptimConfig(optimizer="adam", schedule="constant"))
        torch.manual_seed(0)
        model = build_dense_model(cfg, (LENGTH,), 2)
        if separate:
            for layer in model.encoder.layers:
                layer.self_attn = LowRankMultiheadAttention.from_mha(layer.self_attn)
        model = apply_method(model, cfg)
        out[name] = (model, build_stepper(model, cfg, 0))
    return out


def main() -> None:
    a = parser(__doc__.splitlines()[0], threads=2, rounds=7, steps=10).parse_args()
    torch.set_num_threads(a.threads)
    runners = rows(a.batch)
    g = torch.Generator().manual_seed(0)
    n = 1024
    x = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.where(torch.rand(n, generator=g) < 0.44, LENGTH, torch.randint(40, LENGTH, (n,), generator=g))
    x[torch.arange(LENGTH)[None, :] >= lengths[:, None]] = 0
    x, y = x.to(torch.float32), torch.randint(0, 2, (n,), generator=g)
    streams = [StepStream(name, stepper, x, y, a.batch, F.cross_entropy) for name, (_, stepper) in runners.items()]
    per_step = interleaved(streams, rounds=a.rounds, steps=a.steps, warmup=3)
    dense = per_step["dense"]
    print(f"IMDB transformer training step (d_model 64, 4 heads, 1 layer, L={LENGTH}, batch {a.batch}, Adam), "
          f"{a.threads} thread(s), {a.rounds} interleaved rounds of {a.steps} steps, 25th percentile "
          f"(host: {os.cpu_count()} CPUs, shared)")
    print(f"{'row':28s} {'attention params':>16s} {'ms/step':>8s} {'vs dense':>8s}")
    out = []
    for name, (model, _) in runners.items():
        attn = sum(p.numel() for n_, p in model.named_parameters() if ".self_attn." in n_)
        print(f"{name:28s} {attn:>16,d} {1e3 * per_step[name]:>8.1f} {per_step[name] / dense:>7.2f}x")
        out.append({"row": name, "attention_params": attn, "seconds_per_step": per_step[name],
                    "ratio_to_dense": per_step[name] / dense})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
