"""Starting from a pretrained dense model: what a checkpoint holds, and loading it with a new output layer.

Transfer to another dataset (``lowrank finetune``, the ``base_checkpoint`` / ``new_head``
options of the ``dense`` and ``lora`` methods) loads every weight of a dense checkpoint
but, with ``new_head``, those of the output layer: the model's own freshly initialized
output layer (sized for the new dataset's classes) is kept and trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_dense_weights, read_checkpoint
from .config import TrainConfig
from .errors import CheckpointError, ConfigError

__all__ = ["output_layer", "start_from", "Pretrained", "read_pretrained"]


def output_layer(model: nn.Module) -> str:
    """Name of the output layer: the last Linear-like layer in module order (``fc2`` of an MLP)."""
    from .accounting import linear_like

    layers = linear_like(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv2d layer to serve as its output layer")
    return layers[-1][0]


def start_from(model: nn.Module, path: str, *, new_head: bool) -> nn.Module:
    """Load the dense weights at ``path`` into ``model`` (in place); with ``new_head`` all but the
    output layer's, which keeps its fresh initialization."""
    return load_dense_weights(model, path, exclude=(output_layer(model),) if new_head else ())


@dataclass(frozen=True)
class Pretrained:
    """A dense checkpoint to fine-tune, as :func:`read_pretrained` found it."""

    path: Path
    """The checkpoint file."""
    config: TrainConfig
    """The config of the run that wrote it (model, layers, activation, dataset ...)."""
    sample_shape: tuple[int, ...]
    """Shape of one input sample the model was trained on."""
    num_outputs: int
    """Outputs of its output layer (classes of the pretraining data)."""
    summary: dict[str, Any] | None
    """The run's ``summary.json`` next to the checkpoint, when there is one (its test accuracy)."""

    @property
    def input_size(self) -> int:
        size = 1
        for s in self.sample_shape:
            size *= s
        return size


def read_pretrained(path: str | Path) -> Pretrained:
    """The dense checkpoint at ``path`` (a run folder or its ``checkpoint.pt``); a one-line
    :class:`CheckpointError` if it is missing, unreadable, or not a dense model."""
    import json

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: give a run folder (runs/0001-dense-hoda) "
                              f"or its checkpoint.pt")
    file = (p / "checkpoint.pt" if p.is_dir() else p).resolve()  # absolute: runs resumed elsewhere find it
    ckpt = read_checkpoint(file)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: its stored config cannot be read ({e})") from None
    structure = ckpt.get("structure") or {}
    if cfg.method.method != "dense" or structure:
        layers = ", ".join(structure) or "none"
        raise CheckpointError(f"checkpoint {path} holds a {cfg.method.method!r} model (low-rank layers: {layers}); "
                              f"fine-tuning starts from a dense model: pretrain one with "
                              f"`lowrank train --method dense`")
    shape = ckpt.get("data_shape") or {}
    if not shape:
        raise CheckpointError(f"checkpoint {path} does not record its data's shape; it was written by an "
                              f"older lowrank: train the model again")
    summary_file = file.parent / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return Pretrained(file, cfg, tuple(int(s) for s in shape["sample_shape"]), int(shape["num_outputs"]), summary)
