"""Targets of a dataset: classification or regression, and class labels renumbered to 0..K-1.

The task follows the targets' type unless it is given:

- integer or boolean targets: classification;
- floating-point targets: regression;
- text targets: classification, the classes being the sorted distinct strings.

Classification targets become int64 class indices 0..K-1. Integer targets
whose distinct values are exactly 0, 1, ..., K-1 are kept as they are (no class
names are recorded); any other set of values (say 1..10, or -1 and 1) is
renumbered: the sorted distinct values become 0..K-1 and their text forms are
recorded as the class names. Training and test targets are renumbered together,
so one value means one class in both. Regression targets become float32 and
must all be finite; there are then no classes (``num_classes`` 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, CorruptFileError
from .config import TASKS

__all__ = ["Targets", "infer_task", "encode_targets"]


@dataclass
class Targets:
    """Encoded targets of the training and (optional) test samples."""

    y_train: np.ndarray
    """int64 class indices 0..K-1, or float32 regression targets."""
    y_test: np.ndarray | None
    num_classes: int
    """K, or 0 for regression."""
    classes: list[str] | None
    """Name of each class index when the targets were renumbered or are text; else None."""


def infer_task(y: np.ndarray) -> str:
    """``"classification"`` for integer, boolean or text targets, ``"regression"`` for floats."""
    kind = y.dtype.kind
    if kind in "biuUS":
        return "classification"
    if kind == "f":
        return "regression"
    raise ConfigError(f"targets of dtype {y.dtype} are neither numbers nor text")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")


def encode_targets(y_train: np.ndarray, y_test: np.ndarray | None = None, *, task: str = "auto",
                   where: str = "the dataset") -> Targets:
    """Decide the task (``task`` ``"auto"``: from the dtype) and encode the targets for it.

    ``where`` names the source in error messages (a file name, say). Raises
    :class:`~lowrank.errors.ConfigError` for regression on text targets or
    classification on fractional numbers, and
    :class:`~lowrank.errors.CorruptFileError` for non-finite regression targets.
    """
    _check_task(task)
    parts = [np.asarray(y_train)] + ([] if y_test is None else [np.asarray(y_test)])
    for p in parts:
        if p.ndim != 1:
            raise ConfigError(f"{where}: targets must be one value per sample (1-d), got shape {p.shape}")
    if task == "auto":
        task = infer_task(parts[0])
    if task == "regression":
        return _regression(parts, where)
    return _classification(parts, where)


def _regression(parts: list[np.ndarray], where: str) -> Targets:
    out = []
    for p in parts:
        if p.dtype.kind in "US":
            raise ConfigError(f"{where}: task regression needs numeric targets, found text such as "
                              f"{str(p[0])!r}; use task classification")
        if p.dtype.kind not in "biuf":
            raise ConfigError(f"{where}: targets of dtype {p.dtype} are not numbers")
        y = p.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            raise CorruptFileError(f"{where}: regression target {int(bad[0])} is {p[bad[0]]}, "
                                   f"expected a finite number (remove or fill that sample)")
        out.append(y)
    return Targets(out[0], out[1] if len(out) > 1 else None, 0, None)


def _classification(parts: list[np.ndarray], where: str) -> Targets:
    kinds = {p.dtype.kind for p in parts}
    if kinds & set("US"):  # text (numbers mixed in are taken as their text)
        return _renumber([p.astype(str) for p in parts], where, text=True)
    if not kinds <= set("biuf"):
        raise ConfigError(f"{where}: targets of dtype {parts[0].dtype} are not class labels")
    ints = []
    for p in parts:
        if p.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(p) | (p != np.round(p)))
            if bad.size:
                raise ConfigError(f"{where}: task classification needs whole-number labels, target "
                                  f"{int(bad[0])} is {p[bad[0]]}; use task regression for real-valued targets")
        ints.append(p.astype(np.int64))
    return _renumber(ints, where, text=False)


def _renumber(parts: list[np.ndarray], where: str, text: bool) -> Targets:
    values = np.unique(np.concatenate(parts))
    if values.size == 0:
        raise ConfigError(f"{where}: there are no targets")
    if not text and values[0] == 0 and values[-1] == values.size - 1:
        coded = [p.astype(np.int64) for p in parts]
        classes = None
    else:
        coded = [np.searchsorted(values, p).astype(np.int64) for p in parts]
        classes = [str(v) for v in values.tolist()]
    return Targets(coded[0], coded[1] if len(coded) > 1 else None, int(values.size), classes)
