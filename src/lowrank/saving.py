"""Save a (low-rank) model to a folder and load it back, with nothing pickled.

``save(model, path)`` writes the folder ``path/`` holding two files:

``model.safetensors``
    every tensor of ``model.state_dict()`` (parameters and persistent buffers, each
    with its own dtype and shape, e.g. LoRA's 0-d bool ``lora_merged``), written by
    ``safetensors.torch.save_file``: a JSON header and the raw bytes, no code.
    A tensor that is the very same view as an earlier one (tied weights) is stored
    once and named in ``aliases``; other tensors sharing memory, and non-contiguous
    ones, are stored as contiguous copies.
``lowrank.json``
    ``format``       the string :data:`FORMAT` (``"lowrank-model-1"``);
    ``lowrank_version`` the version that wrote it;
    ``structure``    :func:`lowrank.convert.structure`: ``{qualified name: {"cls": layer
                     class, "spec": constructor arguments}}`` of every low-rank layer (and
                     low-rank attention module, before its projections), with its current
                     ranks and shapes (what :func:`load` rebuilds);
    ``layers``       one row per structure record, for people reading the file: ``name``,
                     ``method``, ``class``, ``rank``, ``in_features``, ``out_features``
                     (``null`` where the module has none; convolutions add
                     ``in_channels``, ``out_channels``, ``kernel_size``), ``params``
                     (inference weights);
    ``model_spec``   how to build the dense base model, or ``null``: ``{"model": "mlp" |
                     "lenet5" | "package.module:factory", "model_args": {...},
                     "sample_shape": [...], "num_outputs": N}``, the arguments of
                     :func:`lowrank.models.build_model`;
    ``aliases``      ``{key: earlier key}`` of state_dict entries stored once;
    ``strides``      ``{key: strides}`` of tensors kept in another dense order than
                     row-major (restored on load, since BLAS rounds differently for it);
    ``weights``      the name of the tensor file.

``load(path, model=None)`` is the inverse, the way peft's ``from_pretrained(base, path)``
works: give it a freshly built dense model (its own weights do not matter), or let it
rebuild one from ``model_spec``; it swaps in the low-rank layers the structure names and
loads the weights (strict: every key, shape and dtype must match). The files are read with
``json`` and ``safetensors.torch.load_file`` only: nothing is unpickled and no code named by
the files is run: a ``model_spec`` naming a ``package.module:factory`` is imported and
called only with ``load(..., trust_factory=True)`` (it must be importable, as for a run's
checkpoint).

Writing is atomic: the files go to a temporary folder beside ``path`` (fsync'd), which is
renamed to ``path`` when complete; an existing ``path`` holding an earlier save is replaced
only then. A folder holding anything else is never replaced.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .convert import restore_structure, structure
from .errors import CheckpointError, ConfigError, LowRankError
from .models import MODELS, build_model, check_model_args
from .registry import get_method, layer_class, method_names

# The module, not the function ``lowrank.convert`` that shadows it on the package.
_convert = importlib.import_module(f"{__package__}.convert")

__all__ = ["save", "load", "FORMAT"]

FORMAT = "lowrank-model-1"
"""The format tag of ``lowrank.json``."""

WEIGHTS = "model.safetensors"
CONFIG = "lowrank.json"
_FILES = (WEIGHTS, CONFIG)
_SPEC_KEYS = ("model", "model_args", "sample_shape", "num_outputs")


# ---------------------------------------------------------------------------- helpers

def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _folder(path: str | os.PathLike) -> Path:
    """``path`` itself, or its folder when it names one of the two files."""
    p = Path(path)
    if p.name in _FILES and not p.is_dir():
        return p.parent
    return p


def _check_model_spec(spec: object, error: type[LowRankError], where: str) -> dict[str, Any]:
    """``spec`` checked and normalized (lists, ints, ``model_args`` default ``{}``); ``error(where: ...)``."""
    fix = ('model_spec must be {"model": "mlp" | "lenet5" | "package.module:factory", '
           '"model_args": {...}, "sample_shape": [...], "num_outputs": N}')
    if not isinstance(spec, Mapping):
        raise error(f"{where}: model_spec is a {type(spec).__name__}, not a dict: {fix}")
    unknown = [k for k in spec if k not in _SPEC_KEYS]
    missing = [k for k in ("model", "sample_shape", "num_outputs") if k not in spec]
    if unknown or missing:
        what = "; ".join(filter(None, [f"unknown keys {', '.join(map(repr, unknown))}" if unknown else "",
                                       f"missing {', '.join(map(repr, missing))}" if missing else ""]))
        raise error(f"{where}: model_spec has {what}: {fix}")
    model, args = spec["model"], spec.get("model_args") or {}
    shape, outputs = spec["sample_shape"], spec["num_outputs"]

    def positive(v: object) -> bool:
        return not isinstance(v, bool) and isinstance(v, numbers.Integral) and int(v) > 0

    if not isinstance(model, str) or not model:
        raise error(f"{where}: model_spec['model'] must be a built-in model name or "
                    f"'package.module:factory', got {model!r}")
    try:
        check_model_args(args)
    except ConfigError as e:
        raise error(f"{where}: model_spec: {e}") from None
    if not isinstance(shape, (list, tuple)) or not shape or not all(positive(s) for s in shape):
        raise error(f"{where}: model_spec['sample_shape'] must be a non-empty list of positive integers "
                    f"(one sample's shape, e.g. [1, 28, 28]), got {shape!r}")
    if not positive(outputs):
        raise error(f"{where}: model_spec['num_outputs'] must be a positive integer (classes, or 1 for "
                    f"regression), got {outputs!r}")
    return {"model": model, "model_args": dict(args), "sample_shape": [int(s) for s in shape],
            "num_outputs": int(outputs)}


def _record_class(name: str) -> type[nn.Module]:
    """The class a structure record names: a registered layer class, or the low-rank attention
    module (``convert.ATTENTION_CLS``); anything else is the registry's CheckpointError."""
    if name == getattr(_convert, "ATTENTION_CLS", None):
        return getattr(_convert, "LowRankMultiheadAttention")
    return layer_class(name)


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" and name != "" or name.startswith(prefix + ".")


def _outermost(struct: Mapping[str, Any]) -> list[str]:
    """The records not nested in another record (e.g. an attention module, not its projections):
    the modules the dense model itself must have."""
    return [n for n in struct if not any(o != n and _inside(n, o) for o in struct)]


def _method_of(cls: type) -> str | None:
    for name in method_names():
        if cls in get_method(name).layers:
            return name
    return None


def _layer_rows(model: nn.Module, struct: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in struct:
        mod = model.get_submodule(name) if name else model
        row: dict[str, Any] = {"name": name, "method": _method_of(type(mod)), "class": type(mod).__name__}
        for key in ("rank", "in_features", "out_features"):
            value = getattr(mod, key, None)
            row[key] = int(value) if isinstance(value, numbers.Integral) else None
        for key in ("in_channels", "out_channels", "kernel_size"):  # convolutions
            value = getattr(mod, key, None)
            if isinstance(value, (numbers.Integral, tuple, list)):
                row[key] = [int(v) for v in value] if isinstance(value, (tuple, list)) else int(value)
        count = getattr(mod, "num_params", None)
        row["params"] = int(count()) if callable(count) else sum(p.numel() for p in mod.parameters())
        rows.append(row)
    return rows


def _storable(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, list[int]]]:
    """The tensors safetensors can write (CPU, contiguous, no two sharing memory), the aliases
    and the strides of tensors laid out in another dense order (e.g. column-major).

    A tensor that is exactly an earlier one (same memory, offset, shape, strides, dtype) is
    an alias of it; any other tensor sharing memory with a stored one, or not contiguous, is
    copied. A permuted dense layout is recorded because BLAS rounds differently for it: the
    loaded model must compute bit for bit what the saved one did.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    strides: dict[str, list[int]] = {}
    seen: dict[tuple, str] = {}          # exact view -> first key
    storages: set[tuple[str, int]] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor: "
                                  f"{WEIGHTS} holds tensors only (no pickled extra state); store it as a buffer")
        t = value.detach()
        if t.is_sparse or t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            raise CheckpointError(f"state_dict entry {key!r} ({t.layout}, {t.device.type}) cannot be saved: "
                                  f"only dense strided tensors with data can; convert it first")
        storage = (t.device.type, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and view in seen:
            aliases[key] = seen[view]
            continue
        if t.numel():
            seen[view] = key
        shared = t.numel() > 0 and storage in storages
        storages.add(storage)
        if not t.is_contiguous() and _is_dense(t.shape, t.stride()):
            strides[key] = list(t.stride())
        t = t.cpu()
        # Shared memory, a non-contiguous layout or a view of a larger block: store a copy of
        # just its own elements (safetensors refuses the first two).
        if shared or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone(memory_format=torch.contiguous_format)
        tensors[key] = t
    return tensors, aliases, strides


def _is_dense(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """True when the elements fill a block without gaps or overlaps, in some dimension order."""
    expected = 1
    for st, size in sorted((st, size) for size, st in zip(shape, stride) if size != 1):
        if st != expected:
            return False
        expected *= size
    return True


def _same_layout(shape: Sequence[int], a: Sequence[int], b: Sequence[int]) -> bool:
    return all(x == y for size, x, y in zip(shape, a, b) if size > 1)


def _row_major(shape: Sequence[int]) -> list[int]:
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= max(size, 1)
    return out[::-1]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_target(folder: Path) -> None:
    """An existing ``folder`` may only be replaced when it holds nothing but an earlier save."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise CheckpointError(f"cannot save to {folder}: it exists and is not a folder; give a folder path")
    if folder.is_dir():
        other = sorted(p.name for p in folder.iterdir() if p.name not in _FILES)
        if other:
            shown = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
            raise CheckpointError(f"cannot save to {folder}: the folder holds other files ({shown}), which "
                                  f"saving would delete; save to a new folder")


# ---------------------------------------------------------------------------- save

def save(model: nn.Module, path: str | os.PathLike, *, model_spec: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (dense or partly low-rank) to the folder ``path``; returns the folder.

    Stored: ``model.safetensors`` (the state_dict tensors: parameters and persistent
    buffers, dtypes and shapes kept) and ``lowrank.json`` (format tag, the low-rank
    structure with each layer's class, rank and shapes, a per-layer summary, and
    ``model_spec`` when given). Nothing is pickled; see the module docstring.

    ``model_spec`` (optional) tells :func:`load` how to build the dense base model without
    being given one: ``{"model": "mlp" | "lenet5" | "package.module:factory", "model_args":
    {...}, "sample_shape": [...], "num_outputs": N}``, the arguments of
    :func:`lowrank.models.build_model` (for a run of a ``TrainConfig``: its ``model`` and
    ``model_args``, with ``layers`` and ``activation`` added for the built-ins as
    ``run.build_dense_model`` does, and the data's ``sample_shape`` and class count). It is
    checked here (a ConfigError), not built.

    A path naming ``model.safetensors`` or ``lowrank.json`` means its folder. The write is
    atomic; an existing folder is replaced (once the new one is complete) only when it holds
    nothing but an earlier save's two files, else it is a CheckpointError.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save needs an nn.Module, got {type(model).__name__}")
    folder = _folder(path)
    spec = None if model_spec is None else _check_model_spec(model_spec, ConfigError, "save")
    _check_target(folder)
    struct = structure(model)
    for name, rec in struct.items():
        try:
            _record_class(rec["cls"])  # a class load could not find is an error now, not at load time
        except CheckpointError as e:
            raise CheckpointError(f"cannot save layer {name!r}, as load could not rebuild it: {e}") from None
    from . import __version__

    tensors, aliases, strides = _storable(model.state_dict())
    meta = {"format": FORMAT, "lowrank_version": __version__, "weights": WEIGHTS,
            "layers": _layer_rows(model, struct), "model_spec": spec, "structure": struct,
            "aliases": aliases, "strides": strides}
    try:
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot write {CONFIG}: the structure or model_spec is not JSON ({_one_line(e)}); "
                              f"layer specs must be numbers, strings, booleans, lists and dicts") from None

    from safetensors.torch import save_file

    _check_target(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{folder.name}.{secrets.token_hex(6)}.tmp"
    os.mkdir(tmp)
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "lowrank_format": FORMAT})
        _fsync(tmp / WEIGHTS)
        with open(tmp / CONFIG, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        if folder.exists():
            _check_target(folder)  # still only an earlier save
            old = parent / f".{folder.name}.{secrets.token_hex(6)}.old"
            os.rename(folder, old)
            try:
                os.rename(tmp, folder)
            except BaseException:
                os.rename(old, folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ---------------------------------------------------------------------------- load

def _read_meta(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG
    if not folder.exists():
        raise CheckpointError(f"no saved model at {folder}: the folder does not exist "
                              f"(lowrank.saving.save(model, path) writes one)")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder written by lowrank.saving.save "
                              f"(give the folder holding {CONFIG} and {WEIGHTS})")
    if not file.exists():
        hint = (" (a run's checkpoint.pt is read by lowrank.checkpoint.read_checkpoint)"
                if (folder / "checkpoint.pt").exists() else "")
        raise CheckpointError(f"{file} is missing: {folder} is not a folder written by lowrank.saving.save{hint}")
    try:
        with open(file, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is damaged (not JSON: {e.msg} at line {e.lineno} column {e.colno}): "
                              f"save the model again") from None
    except (UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"cannot read {file} ({type(e).__name__}: {_one_line(e)}): save the model again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file} is damaged (a JSON {type(meta).__name__}, not an object): save the model again")
    tag = meta.get("format")
    if tag != FORMAT:
        raise CheckpointError(f"{file} has format {tag!r}, not {FORMAT!r}: it was not written by this version's "
                              f"lowrank.saving.save; load it with the program that wrote it, or save it again")
    struct = meta.get("structure")
    if not isinstance(struct, dict) or not all(
            isinstance(k, str) and isinstance(r, dict) and isinstance(r.get("cls"), str)
            and isinstance(r.get("spec"), dict) for k, r in struct.items()):
        raise CheckpointError(f"{file} is damaged: 'structure' must map module names to "
                              f'{{"cls": ..., "spec": {{...}}}}; save the model again')
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"{file} is damaged: 'aliases' must map keys to keys; save the model again")
    meta["aliases"] = aliases
    strides = meta.get("strides", {})
    if not isinstance(strides, dict) or not all(
            isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
            for v in strides.values()):
        raise CheckpointError(f"{file} is damaged: 'strides' must map keys to lists of strides; save the model again")
    meta["strides"] = strides
    return meta


def _device(map_location: Any) -> torch.device | None:
    if map_location is None:
        return None
    try:
        dev = torch.device(map_location)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"map_location {map_location!r} is not a device ({_one_line(e)}): "
                          f"use 'cpu', 'cuda', 'cuda:1', ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"map_location {map_location!r}: CUDA is not available here; use map_location='cpu'")
    return dev


def _read_weights(folder: Path, meta: Mapping[str, Any], device: torch.device | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = folder / WEIGHTS
    if not file.exists():
        raise CheckpointError(f"{file} is missing: the save is incomplete; save the model again")
    try:
        state = load_file(str(file), device=str(device or "cpu"))
    except Exception as e:  # safetensors raises SafetensorError, OSError, ... for damaged files
        raise CheckpointError(f"{file} is damaged ({type(e).__name__}: {_one_line(e)}): save the model again") from None
    for key, target in meta["aliases"].items():
        if target not in state:
            raise CheckpointError(f"{folder / CONFIG} is damaged: alias {key!r} -> {target!r} names no tensor "
                                  f"of {WEIGHTS}; save the model again")
        state[key] = state[target]
    return state


def _check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    """Every key of the model in the file and back, with the same shape and dtype."""
    fix = "load into the dense model it was saved from (same architecture and dtype), or rebuild from model_spec"
    own = model.state_dict()
    for key, t in own.items():
        if key not in state:
            raise CheckpointError(f"{file} does not fit the model: the model's {key!r} "
                                  f"{tuple(t.shape)} is not in the file: {fix}")
        s = state[key]
        if tuple(s.shape) != tuple(t.shape):
            raise CheckpointError(f"{file} does not fit the model: {key!r} has shape {tuple(s.shape)} in the file "
                                  f"but {tuple(t.shape)} in the model: {fix}")
        if s.dtype != t.dtype:
            raise CheckpointError(f"{file} does not fit the model: {key!r} is {s.dtype} in the file but {t.dtype} "
                                  f"in the model: convert the model first (e.g. model.to({s.dtype}))")
    for key, s in state.items():
        if key not in own:
            raise CheckpointError(f"{file} does not fit the model: {key!r} {tuple(s.shape)} in the file is not "
                                  f"in the model: {fix}")


def _restore(model: nn.Module, struct: Mapping[str, Mapping[str, Any]], file: Path) -> nn.Module:
    """``restore_structure`` with every failure a CheckpointError naming ``file``; training flags kept."""
    classes = {}
    for name, rec in struct.items():
        try:
            classes[name] = _record_class(rec["cls"])
        except CheckpointError as e:
            raise CheckpointError(f"{file}: layer {name!r}: {e}") from None
    top = _outermost(struct)
    for name in top:
        if name:
            try:
                model.get_submodule(name)
            except AttributeError:
                names = [n for n, _ in model.named_modules() if n]
                shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
                raise CheckpointError(f"{file} names module {name!r}, which the model lacks (its modules: "
                                      f"{shown or 'none'}): pass the dense model the save was made from") from None
    flags = {name: (model.get_submodule(name) if name else model).training for name in top}
    try:
        with torch.random.fork_rng(devices=[]):  # fresh layers' random init must not move the caller's RNG
            rest = dict(struct)
            if "" in rest:  # the model itself is one low-rank layer (or attention module)
                ref = next(model.parameters(), None)
                model = classes[""](**rest.pop("")["spec"])
                if ref is not None:
                    model = model.to(device=ref.device, dtype=ref.dtype)
            if rest:
                restore_structure(model, rest)
    except CheckpointError as e:
        raise CheckpointError(f"{file}: {e} (pass the dense model the save was made from)") from None
    except (TypeError, ValueError, LowRankError) as e:
        raise CheckpointError(f"{file}: cannot rebuild the low-rank layers ({type(e).__name__}: {_one_line(e)}): "
                              f"the layer specs do not fit this lowrank version; save the model again") from None
    for name, flag in flags.items():
        (model.get_submodule(name) if name else model).train(flag)
    return model


def load(path: str | os.PathLike, model: nn.Module | None = None, *, map_location: Any = None,
         trust_factory: bool = False) -> nn.Module:
    """The model saved by :func:`save` at ``path`` (a folder, or one of its two files).

    ``model``: a freshly built dense model of the same architecture (its weights are
    overwritten). The low-rank layers the saved structure names replace its modules in
    place (:func:`lowrank.convert.restore_structure`), then the weights are loaded
    strictly. Without ``model`` the dense model is rebuilt from the saved ``model_spec``
    (:func:`lowrank.models.build_model`); floating weights all of one dtype make the rebuilt
    model that dtype. Without either it is a CheckpointError. The ranks come from the file:
    the caller need not know them.

    ``trust_factory``: a ``model_spec`` naming a ``package.module:factory`` (rather than a
    built-in model) is rebuilt only with ``trust_factory=True``, because that imports the
    module and calls what the file names with the file's arguments (the module must be
    importable: installed or on ``PYTHONPATH``). Built-in models need no trust.

    ``map_location``: where the tensors are read to; given, the model is also moved there
    (``model.to(map_location)``) before loading. ``None`` (default): tensors are read to the
    CPU and copied into the model wherever its parameters are (a rebuilt model stays on the CPU).

    Returns the model (``model`` itself, converted, when given — unless the save is of a
    single low-rank layer, which is returned new). Training mode is kept as built: the
    replaced modules' ``training`` flags carry over to their low-rank layers, and a rebuilt
    model is in training mode as ``build_model`` gives it; call ``.eval()`` for inference.
    The caller's random number generator state is not changed.

    Errors, each a one-line :class:`CheckpointError` naming the file and the fix: a missing
    folder or file, damaged JSON or safetensors, an unknown format tag, a layer class no
    registered method has, a structure naming a module the model lacks, a key, shape or dtype
    that does not fit (the first bad key). Everything read from the files is checked before
    ``model`` is touched, except the fit of its state, checked after the layers are swapped in.
    """
    folder = _folder(path)
    meta = _read_meta(folder)
    device = _device(map_location)
    state = _read_weights(folder, meta, device)
    file = folder / CONFIG
    if model is None:
        if meta.get("model_spec") is None:
            raise CheckpointError(f"{file} records no model_spec: pass the dense model, "
                                  f"load(path, model=<freshly built dense model>)")
        spec = _check_model_spec(meta["model_spec"], CheckpointError, str(file))
        if spec["model"] not in MODELS and not trust_factory:
            raise CheckpointError(f"{file}: model_spec names the factory {spec['model']!r}, which rebuilding "
                                  f"would import and call with the file's arguments: pass trust_factory=True "
                                  f"if you trust the file, or pass the dense model, load(path, model)")
        try:
            with torch.random.fork_rng(devices=[]):
                model = build_model(spec["model"], spec["model_args"], sample_shape=spec["sample_shape"],
                                    num_outputs=spec["num_outputs"])
        except ConfigError as e:
            raise CheckpointError(f"{file}: cannot rebuild the model from model_spec: {e} "
                                  f"(or pass the dense model: load(path, model))") from None
        floats = {t.dtype for t in state.values() if t.is_floating_point()}
        if len(floats) == 1:
            model = model.to(dtype=floats.pop())
    elif not isinstance(model, nn.Module):
        raise ConfigError(f"load's model must be an nn.Module (a freshly built dense model), "
                          f"got {type(model).__name__}")
    if device is not None:
        model = model.to(device)
    model = _restore(model, meta["structure"], file)
    _check_fit(model, state, folder / WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{folder / WEIGHTS} does not fit the model: {_one_line(e)[:300]}") from None
    _restore_layouts(model, meta, file)
    return model


@torch.no_grad()
def _restore_layouts(model: nn.Module, meta: Mapping[str, Any], file: Path) -> None:
    """Give every tensor the memory layout it was saved with (row-major unless ``strides`` says
    otherwise): BLAS rounds differently for other layouts, and a fresh layer's may differ
    (e.g. QR's column-major ``Q``). Values are unchanged and parameter objects kept (``.data``
    is swapped); a tensor that is a view into a larger block (sharing memory) is left alone."""
    strides, aliases = meta["strides"], meta["aliases"]
    for key, t in model.state_dict(keep_vars=True).items():
        stride = strides.get(aliases.get(key, key))
        if stride is None:
            if t.is_contiguous():
                continue
            stride = _row_major(t.shape)
        elif len(stride) != t.dim() or not _is_dense(t.shape, stride):
            raise CheckpointError(f"{file} is damaged: 'strides' of {key!r} is {stride}, not a dense layout of "
                                  f"shape {tuple(t.shape)}; save the model again")
        if _same_layout(t.shape, t.stride(), stride):
            continue
        whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if whole and _is_dense(t.shape, t.stride()):
            t.data = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t.data)
