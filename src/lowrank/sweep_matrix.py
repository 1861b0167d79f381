"""Test matrices: the product of lists of settings, read from a TOML file.

A matrix file (see ``configs/sweep-small.toml``)::

    name = "sweep-small"                 # runs are stored with sweep = name
    [base]                               # overrides over TrainConfig, as in experiment files
    layers = [784, 64, 10]
    [base.data]
    dataset = "mnist"

    [matrix]                             # every combination of these lists is one run
    method = ["dense", "vanilla", "dlrt-adaptive"]
    optimizer = ["sgd", "adam"]
    widths = [[64], [128, 64]]           # hidden widths; input and output come from base.layers
    rank = [10, 20]
    epochs = [1]
    batch_size = [64]
    lr = [0.01]
    noise = [0.0, 0.1]
    train_size = [1000]
    regularization = ["none", "l1", "l2", "l1+l2"]
    # any other config path works too: "method.tau" = [0.05, 0.1]

    [regularization]                     # strengths used by the regularization axis
    l1 = 1e-5
    l2 = 1e-4

    [variants.dlrt-adaptive]             # a method-axis value may name a set of overrides
    method = { method = "dlrt", integrator = "kls", adaptive = true }

Axis names are the short names above or dotted config paths. Each grid point has a
stable key: its axis values in sorted axis order (``lr=0.01, method=vanilla, ...``),
independent of list order in the file, so a re-run finds the points already done.
An axis of method options (``rank``, ``method.tau``) is dropped for the points whose
method has no such option (dense has no rank: its key shows ``rank=-``), and the
duplicate points this creates are merged. The ``method`` axis is applied first, so
the options of the other axes land on the point's method.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .registry import get_method, method_names
from .errors import ConfigError
from .experiment import apply_overrides, check_name, config_paths, read_toml, resolve_paths

__all__ = ["GridPoint", "Matrix", "load_matrix", "format_value", "AXES"]

#: short axis name -> config path ("widths" and "regularization" are handled specially).
AXES: dict[str, str] = {
    "method": "method.method", "optimizer": "optim.optimizer", "layers": "layers", "widths": "layers",
    "rank": "method.rank", "epochs": "epochs", "batch_size": "batch_size", "lr": "optim.lr",
    "momentum": "optim.momentum", "noise": "data.noise", "train_size": "data.train_size",
    "regularization": "optim.l1+optim.l2", "seed": "seed", "dataset": "data.dataset",
}
_REG = ("none", "l1", "l2", "l1+l2")
_TOP = {"name", "title", "description", "base", "matrix", "regularization", "variants"}


@dataclass
class GridPoint:
    """One combination of the matrix: its key, the axis values and the full config."""

    key: str
    values: dict[str, Any]
    config: TrainConfig


@dataclass
class Matrix:
    """A parsed matrix file."""

    name: str
    title: str
    description: str
    axes: dict[str, list[Any]]
    """Axis name -> values, in file order."""
    points: list[GridPoint]
    source: Path | None = None
    skipped: list[str] = field(default_factory=list)
    """Keys of duplicate points merged away (dense with several ranks)."""


def format_value(v: Any) -> str:
    """An axis value as written in keys and tables (lists joined by ``-``, ``None`` as ``-``)."""
    if isinstance(v, list):
        return "-".join(format_value(x) for x in v)
    if isinstance(v, float):  # %g where it reads back as the same number, else every digit needed
        return f"{v:g}" if float(f"{v:g}") == v else repr(v)
    if v is None:
        return "-"
    return str(v)


def load_matrix(path: str | Path) -> Matrix:
    """Parse the matrix file at ``path`` and expand its grid (every config validated)."""
    path = Path(path)
    doc = read_toml(path, _TOP)
    axes = doc.get("matrix")
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{path} has no [matrix] table of lists")
    known = config_paths()
    for axis, values in axes.items():
        if axis not in AXES and axis not in known:
            raise ConfigError(f"unknown axis {axis!r} in [matrix] of {path} (use one of "
                              f"{', '.join(AXES)} or a config path such as method.tau)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axis {axis!r} in [matrix] of {path} must be a non-empty list")
    reg = doc.get("regularization", {})
    for k in reg:
        if k not in ("l1", "l2"):
            raise ConfigError(f"unknown key {k!r} in [regularization] of {path} (known: l1, l2)")
    strengths = {"l1": float(reg.get("l1", 1e-5)), "l2": float(reg.get("l2", 1e-4))}
    variants = doc.get("variants", {})
    base = apply_overrides(TrainConfig().to_dict(), doc.get("base", {}), f"[base] of {path}")
    name = check_name(doc.get("name", path.stem), path)

    names = sorted(axes, key=lambda a: a != "method")  # the method first: other axes set its options
    points: list[GridPoint] = []
    seen: set[str] = set()
    skipped: list[str] = []
    for combo in itertools.product(*(axes[a] for a in names)):
        values = dict(zip(names, combo))
        where = f"grid point {values} of {path}"
        cfg = base
        for axis, value in values.items():
            key_path = AXES.get(axis, axis)
            option = (key_path.partition(".")[2] if key_path.startswith("method.") and key_path != "method.method"
                      else None)
            if option and option not in get_method(cfg["method"]["method"]).config.options():
                values[axis] = None          # this point's method has no such option
                continue
            cfg = _apply_axis(cfg, axis, value, strengths, variants, where)
        key = ", ".join(f"{a}={format_value(values[a])}" for a in sorted(values))
        if key in seen:
            skipped.append(key)
            continue
        seen.add(key)
        cfg["name"] = key
        try:
            points.append(GridPoint(key, values, TrainConfig.from_dict(resolve_paths(cfg, path, where))))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return Matrix(name=name, title=str(doc.get("title", f"Sweep {name}")),
                  description=str(doc.get("description", "")), axes=dict(axes), points=points,
                  source=path, skipped=skipped)


def _apply_axis(cfg: dict[str, Any], axis: str, value: Any, strengths: dict[str, float],
                variants: dict[str, Any], where: str) -> dict[str, Any]:
    if axis == "widths":
        if not isinstance(value, list):
            value = [value]
        return apply_overrides(cfg, {"layers": [cfg["layers"][0], *value, cfg["layers"][-1]]}, where)
    if axis == "regularization":
        text = str(value).lower().replace(" ", "")
        if text not in _REG:
            raise ConfigError(f"regularization {value!r} in {where} is not one of {', '.join(_REG)}")
        return apply_overrides(cfg, {"optim": {"l1": strengths["l1"] if "l1" in text else 0.0,
                                               "l2": strengths["l2"] if "l2" in text else 0.0}}, where)
    if axis == "method" and value not in method_names():
        if value not in variants:
            raise ConfigError(f"method {value!r} in {where} is neither a method ({', '.join(method_names())}) "
                              f"nor a [variants.{value}] table")
        return apply_overrides(cfg, variants[value], f"[variants.{value}]")
    return apply_overrides(cfg, {AXES.get(axis, axis): value}, where)
