"""Self-describing checkpoints, written atomically and read without running code.

A checkpoint is a plain dict saved by ``torch.save``:

``format``     the string ``"lowrank-checkpoint-1"``;
``config``     the run's :class:`~lowrank.config.TrainConfig` as a dict;
``structure``  ``{qualified name: {"cls": ..., "spec": ...}}`` of every low-rank layer
               (current shapes and ranks, so a fresh process can rebuild the model);
``model``      the state_dict;
``ranks``      ``{layer: rank}``, for people reading the file;
plus whatever the trainer adds (epoch, batch, stepper state, RNG state, history).

Writing goes to a temporary file in the same folder, fsync'd, then ``os.replace``:
a crash mid-write never leaves a truncated checkpoint behind. Reading uses
``torch.load(weights_only=True)``, which cannot execute code from the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError

__all__ = ["FORMAT", "write_checkpoint", "read_checkpoint", "model_payload", "load_model"]

FORMAT = "lowrank-checkpoint-1"


def write_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (plus the format tag) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`write_checkpoint` (weights only, no code)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lowrank checkpoint (format tag missing or unknown)")
    return payload


def model_payload(model: nn.Module) -> dict[str, Any]:
    """The model part of a checkpoint: state_dict, low-rank structure and ranks."""
    from .convert import structure  # local import: convert imports the layer classes

    struct = structure(model)
    return {"model": model.state_dict(), "structure": struct,
            "ranks": {name: entry["spec"].get("rank") for name, entry in struct.items()}}


def load_model(model: nn.Module, payload: dict[str, Any]) -> nn.Module:
    """Rebuild ``payload``'s low-rank structure inside the dense ``model`` and load its weights."""
    from .convert import restore_structure

    restore_structure(model, payload.get("structure", {}))
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint does not fit the model: {str(e).splitlines()[0]}") from None
    return model
