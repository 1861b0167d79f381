"""The trained model a compression starts from: a run folder or checkpoint, rebuilt from its config."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import load_model, read_checkpoint
from ..config import TrainConfig
from ..convert import merge
from ..errors import CheckpointError
from ..models import MODELS

__all__ = ["Source", "load_source", "model_spec", "load_any"]


@dataclass
class Source:
    """A trained run's model, dense (low-rank layers of a low-rank run merged back)."""

    path: Path
    """The checkpoint file."""
    run_dir: Path
    """Its folder (the run folder, for a run's checkpoint)."""
    config: TrainConfig
    """The run's config (model, data, optimizer)."""
    model: nn.Module
    """The trained model, every layer dense, eval mode."""
    sample_shape: tuple[int, ...]
    """One input sample's shape."""
    num_outputs: int
    """Classes (or 1 for regression)."""
    was_lowrank: bool
    """The run trained low-rank layers (merged here to start from their dense form)."""

    @property
    def input_shape(self) -> tuple[int]:
        """What the model takes per sample: the flattened sample, ``(prod(sample_shape),)``."""
        return (math.prod(self.sample_shape),)


def model_spec(cfg: TrainConfig, sample_shape: tuple[int, ...], num_outputs: int) -> dict[str, Any]:
    """The ``model_spec`` of :func:`lowrank.save` that rebuilds ``cfg``'s dense model."""
    args = dict(cfg.model_args)
    if cfg.model == "mlp":
        args.setdefault("layers", list(cfg.layers))
    if cfg.model in MODELS:
        args.setdefault("activation", cfg.activation)
    return {"model": cfg.model, "model_args": args, "sample_shape": list(sample_shape), "num_outputs": num_outputs}


def load_source(path: str | os.PathLike) -> Source:
    """The model stored at ``path`` (a run folder or its ``checkpoint.pt``), rebuilt in this process."""
    from ..run import build_dense_model

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}: give a run folder (runs/0007-dense-fashion-mnist) or its "
                              f"checkpoint.pt (`lowrank runs` lists the runs)")
    ckpt = read_checkpoint(p)
    file = p / "checkpoint.pt" if p.is_dir() else p
    cfg = TrainConfig.from_dict(ckpt["config"])
    shape = ckpt.get("data_shape") or {}
    if not shape:
        raise CheckpointError(f"checkpoint {file} does not record its data's shape (written by an older lowrank); "
                              f"retrain the run")
    sample_shape = tuple(int(s) for s in shape["sample_shape"])
    outputs = int(shape["num_outputs"])
    model = load_model(build_dense_model(cfg, sample_shape, outputs), ckpt)
    lowrank = bool(ckpt.get("structure"))
    if lowrank:
        model = merge(model)
    model.eval()
    return Source(file, file.parent, cfg, model, sample_shape, outputs, lowrank)


def load_any(path: str | os.PathLike, *, trust_factory: bool = False) -> tuple[nn.Module, tuple[int]]:
    """``(model in eval mode, per-sample input shape)`` of a :func:`lowrank.save` folder (rebuilt from
    its ``model_spec``) or of a run folder / checkpoint (dense as trained, low-rank layers kept)."""
    import json

    from ..saving import CONFIG, load

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no model at {p}: give a folder written by lowrank.save (a compress job's "
                              f"out/chosen) or a run folder / checkpoint.pt")
    folder = p if p.is_dir() else p.parent
    if (folder / CONFIG).is_file():
        try:
            spec = json.loads((folder / CONFIG).read_text()).get("model_spec")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder / CONFIG} cannot be read: {e}") from None
        if not isinstance(spec, dict) or "sample_shape" not in spec:
            raise CheckpointError(f"{folder / CONFIG} has no model_spec (saved without one): the input shape is "
                                  f"unknown; save it with lowrank.save(model, path, model_spec=...)")
        model = load(folder, trust_factory=trust_factory).eval()
        return model, (math.prod(int(s) for s in spec["sample_shape"]),)
    from ..run import build_dense_model

    ckpt = read_checkpoint(p)
    cfg = TrainConfig.from_dict(ckpt["config"])
    shape = ckpt.get("data_shape") or {}
    if not shape:
        raise CheckpointError(f"checkpoint {p} does not record its data's shape (written by an older lowrank)")
    sample_shape = tuple(int(s) for s in shape["sample_shape"])
    model = load_model(build_dense_model(cfg, sample_shape, int(shape["num_outputs"])), ckpt).eval()
    return model, (math.prod(sample_shape),)
