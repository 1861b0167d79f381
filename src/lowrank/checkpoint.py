"""Self-describing checkpoints, written atomically and read without running code.

A checkpoint is a plain dict saved by ``torch.save``:

``format``     the string ``"lowrank-checkpoint-2"``;
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

import copy
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError

__all__ = ["FORMAT", "TEMP_SUFFIX", "damaged", "write_checkpoint", "read_checkpoint", "model_payload", "load_model", "load_dense_weights",
           "check_optimizer_state"]

FORMAT = "lowrank-checkpoint-2"
#: Formats written by earlier versions, which this one cannot resume (their method options
#: were one flat table and their layer classes had other names).
OLD_FORMATS = ("lowrank-checkpoint-1",)

#: The suffix of a checkpoint being written (``.checkpoint.pt.XXXX.tmp``); a leftover is removed on resume.
TEMP_SUFFIX = ".tmp"


def write_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (plus the format tag) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
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
    if isinstance(payload, dict) and payload.get("format") in OLD_FORMATS:
        raise CheckpointError(f"{path} is from an older lowrank (format {payload['format']}, this version reads "
                              f"{FORMAT}): retrain the run, or resume it with the version that wrote it")
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

    with damaged("the checkpoint's structure record"):
        restore_structure(model, payload.get("structure", {}))
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint does not fit the model: {_mismatch(e)}") from None
    except (TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's model weights are damaged ({type(e).__name__}: {e})") from None
    return model


@contextmanager
def damaged(what: str) -> Iterator[None]:
    """Errors from reading ``what`` (a part of a checkpoint that loaded safely but holds the
    wrong types, keys or shapes) as one :class:`CheckpointError` line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        text = str(e).splitlines()[0] if str(e) else repr(e)
        raise CheckpointError(f"{what} is damaged or of another version ({type(e).__name__}: {text[:200]})") from None


def _dense_state(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dense ``state_dict`` stored at ``path``: a lowrank checkpoint (low-rank layers are
    merged back to dense) or a plain ``torch.save``d state_dict."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"base_checkpoint {path} does not exist")
    try:
        payload: dict[str, Any] = read_checkpoint(p)
    except CheckpointError:
        try:
            payload = {"model": torch.load(p if p.is_file() else p / "checkpoint.pt", map_location="cpu",
                                           weights_only=True)}
        except Exception as e:
            raise CheckpointError(f"base_checkpoint {path}: neither a lowrank checkpoint nor a state_dict "
                                  f"({type(e).__name__})") from None
    state = payload.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"base_checkpoint {path} holds no model state_dict")
    return state, payload.get("structure") or {}


def load_dense_weights(model: nn.Module, path: str, exclude: tuple[str, ...] = ()) -> nn.Module:
    """Load the dense weights stored at ``path`` (a lowrank run folder or checkpoint, whose low-rank
    layers are merged back to dense, or a plain state_dict file) into the dense ``model``, in place.

    ``exclude``: names of modules of ``model`` whose stored weights are not loaded (they keep
    their values; their stored shapes may differ, e.g. an output layer for other classes)."""
    state, struct = _dense_state(path)
    if struct:
        # A low-rank checkpoint: rebuild its layers on a copy, load, merge back to dense.
        from .convert import merge

        state = merge(load_model(copy.deepcopy(model), {"model": state, "structure": struct})).state_dict()
    if exclude:
        own = model.state_dict()
        skipped = [k for k in own if any(k.startswith(name + ".") for name in exclude)]
        state = {**{k: v for k, v in state.items() if not any(k.startswith(n + ".") for n in exclude)},
                 **{k: own[k] for k in skipped}}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"base_checkpoint {path} does not fit the model: {_mismatch(e)}") from None
    return model


def _mismatch(error: Exception, limit: int = 300) -> str:
    """torch's multi-line ``load_state_dict`` error as one line: what is missing, unexpected or misshapen."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = " ".join(lines[1:] if len(lines) > 1 else lines)
    return detail if len(detail) <= limit else detail[:limit - 3] + "..."


def check_optimizer_state(optimizer: torch.optim.Optimizer, where: str) -> None:
    """Every per-parameter state tensor (momentum, Adam's moments) is shaped like its parameter;
    else a one-line :class:`CheckpointError` (factors and optimizer state of different ranks
    cannot resume). Scalar state (step counters) is not checked."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    strays = [k for k in optimizer.state if id(k) not in held]
    if strays:
        raise CheckpointError(f"{where}: optimizer state has {len(strays)} entries for no parameter of the model: "
                              f"the checkpoint is damaged or of another model; resume from another or start again")
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            state = optimizer.state.get(p, {})
            if not isinstance(state, dict):
                raise CheckpointError(f"{where}: optimizer state of parameter {i} is a {type(state).__name__}, not a "
                                      f"table: the checkpoint is damaged; resume from another or start again")
            for key, value in state.items():
                if not (value is None or torch.is_tensor(value) or isinstance(value, (int, float))):
                    raise CheckpointError(f"{where}: optimizer state {key!r} of parameter {i} is a "
                                          f"{type(value).__name__}: the checkpoint is damaged; resume from another "
                                          f"or start again")
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise CheckpointError(
                        f"{where}: optimizer state {key!r} of parameter {i} is shaped {tuple(value.shape)} but the "
                        f"parameter is {tuple(p.shape)}: factors and optimizer state disagree; resume from another "
                        f"checkpoint or start the run again")
