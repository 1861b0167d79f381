"""Training-step time of LoRA fine-tuning at each rank against full fine-tuning, in one run.

The models are exactly those of ``lowrank finetune`` (784-256-128-10, the ``lora`` method
with ``base_checkpoint`` + ``new_head`` at ranks 1-32: frozen base, adapters on the hidden
layers, trainable new output layer; ``full``: the ``dense`` method with the same two
options; Adam, batch 64), stepped on a fixed pool of random inputs (a step's cost does not
depend on the values).

Timing protocol: ``timing.py`` (interleaved rounds, the 25th-percentile block kept); compare
the ratios.

    python benchmarks/bench_finetune_step.py [--threads N] [--rounds R] [--steps S] [--json out.json]
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch.nn import functional as F

from lowrank.models import mlp
from lowrank.registry import method_config
from lowrank.config import OptimConfig, TrainConfig
from lowrank.run import apply_method, build_stepper
from timing import StepStream, interleaved, parser

LAYERS = [784, 256, 128, 10]
RANKS = [1, 2, 4, 8, 16, 32]


def runners(base: Path, batch: int) -> dict[str, tuple[torch.nn.Module, object]]:
    out = {}
    rows = [(f"lora r{r}", method_config("lora", rank=r, base_checkpoint=str(base), new_head=True)) for r in RANKS]
    rows.append(("full fine-tuning", method_config("dense", base_checkpoint=str(base), new_head=True)))
    for name, method in rows:
        cfg = TrainConfig(method=method, layers=list(LAYERS), batch_size=batch,
                          optim=OptimConfig(optimizer="adam", schedule="constant"))
        torch.manual_seed(0)
        model = apply_method(mlp(LAYERS), cfg)
        out[name] = (model, build_stepper(model, cfg, 0))
    return out


def main() -> None:
    a = parser(__doc__.splitlines()[0], threads=1, rounds=15, steps=100).parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "base.pt"
        torch.manual_seed(1)
        torch.save(mlp(LAYERS).state_dict(), base)
        rows = runners(base, a.batch)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4096, LAYERS[0], generator=g), torch.randint(0, LAYERS[-1], (4096,), generator=g)
    streams = [StepStream(name, stepper, x, y, a.batch, F.cross_entropy) for name, (_, stepper) in rows.items()]
    per_step = interleaved(streams, rounds=a.rounds, steps=a.steps, warmup=50)
    full = per_step["full fine-tuning"]
    print(f"LoRA fine-tuning step vs full fine-tuning, {'-'.join(map(str, LAYERS))}, batch {a.batch}, Adam, "
          f"{a.threads} thread(s), {a.rounds} interleaved rounds of {a.steps} steps, 25th percentile "
          f"(host: {os.cpu_count()} CPUs, shared)")
    print(f"{'row':18s} {'trainable':>10s} {'ms/step':>8s} {'vs full':>8s}")
    out = []
    for name, (model, _) in rows.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{name:18s} {trainable:>10,d} {1e3 * per_step[name]:>8.3f} {per_step[name] / full:>7.2f}x")
        out.append({"row": name, "trainable": trainable, "seconds_per_step": per_step[name],
                    "ratio_to_full": per_step[name] / full})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
