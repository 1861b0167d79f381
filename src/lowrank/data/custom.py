"""In-memory data as :class:`~lowrank.data.dataset.Splits`: :func:`as_splits`.

Takes either a ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs
(``x`` a tensor or array of any shape, the same for every item; ``y`` a number
or 0-d tensor), or a pair ``(x, y)`` of tensors or arrays with one sample per
row of the first axis. The shape of one ``x`` is recorded as
``Splits.sample_shape``; the inputs are flattened to float32 (N, D).

Integer (or boolean) targets make a classification dataset: values that are
not already 0..K-1 are renumbered in sorted order and the original values
recorded as ``Splits.classes``. Floating-point targets make a regression
dataset (float32 targets, ``num_classes`` 0). ``uint8`` inputs are read as
8-bit data and scaled to [0, 1] like every image dataset; other inputs are
taken as they are. Splitting and normalizing follow
:mod:`lowrank.data.prepare`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .config import DataConfig
from .dataset import Splits
from .labels import encode_targets
from .prepare import Prepared, build_splits

__all__ = ["as_splits"]


def _numpy(a: Any, what: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    try:
        out = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"as_splits: {what} cannot be made an array: {e}") from None
    if out.dtype == object:
        raise ConfigError(f"as_splits: {what} is not an array of numbers (ragged or mixed items?)")
    return out


def _from_dataset(ds: torch.utils.data.Dataset, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Stack the ``(x, y)`` items of a map-style or iterable dataset."""
    try:
        n = len(ds)  # type: ignore[arg-type]
        items: Any = (ds[i] for i in range(n))
    except TypeError:  # an iterable dataset without a length
        items = iter(ds)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ConfigError(f"as_splits: {what} item {i} is {type(item).__name__}; expected an (x, y) pair")
        x = _numpy(item[0], f"{what} item {i}'s x")
        y = _numpy(item[1], f"{what} item {i}'s y")
        if y.size != 1:
            raise ConfigError(f"as_splits: {what} item {i}'s y has shape {y.shape}; expected one number")
        if shape is None:
            shape = x.shape
        elif x.shape != shape:
            raise ConfigError(f"as_splits: {what} item {i}'s x has shape {x.shape}, item 0's has {shape}; "
                              f"every item must have the same shape")
        xs.append(x)
        ys.append(y.reshape(()))
    if not xs:
        raise ConfigError(f"as_splits: {what} is empty")
    return np.stack(xs), np.stack(ys)


def _arrays(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, torch.utils.data.Dataset):
        return _from_dataset(data, what)
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = _numpy(data[0], f"{what} x"), _numpy(data[1], f"{what} y")
        if x.ndim == 0:
            raise ConfigError(f"as_splits: {what} x is a single number; expected (N, ...) samples")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ConfigError(f"as_splits: {what} y has shape {y.shape}; expected one target per sample")
        if len(x) != len(y):
            raise ConfigError(f"as_splits: {what} x has {len(x)} samples but y has {len(y)} targets; "
                              f"expected one target per sample")
        if len(x) == 0:
            raise ConfigError(f"as_splits: {what} is empty")
        return x, y
    raise ConfigError(f"as_splits: {what} is {type(data).__name__}; expected a torch Dataset of (x, y) "
                      f"items or a pair (x, y) of tensors or arrays")


def as_splits(train: Any, test: Any = None, *, val_fraction: float = 0.0, test_fraction: float = 0.2,
              seed: int = 0, name: str = "custom", normalize: bool = False) -> Splits:
    """Turn in-memory data into :class:`~lowrank.data.dataset.Splits` ready for training.

    ``train`` (and ``test``, when given) is a ``torch.utils.data.Dataset`` of
    ``(x, y)`` items or an ``(x, y)`` pair of tensors or arrays. Without
    ``test``, ``test_fraction`` of ``train`` (chosen at random, seeded by
    ``seed``) becomes the test set. ``val_fraction`` of the training samples is
    held out as the validation split. ``normalize`` standardizes the inputs with
    the training split's mean and std (per feature, or one pair for ``uint8``
    inputs). See the module docstring for how targets decide the task.

    Raises :class:`~lowrank.errors.ConfigError` for items that are not
    ``(x, y)`` pairs, inputs of differing shapes, targets that are not one
    number per sample, or inputs and targets of different lengths.
    """
    xtr, ytr = _arrays(train, "train")
    xte, yte = (None, None) if test is None else _arrays(test, "test")
    for x, what in ((xtr, "train"), (xte, "test")):
        if x is not None and x.dtype.kind not in "biuf":
            raise ConfigError(f"as_splits: {what} x has dtype {x.dtype}; expected real numbers")
    if xte is not None and xte.shape[1:] != xtr.shape[1:]:
        raise ConfigError(f"as_splits: test samples have shape {xte.shape[1:]}, train samples "
                          f"{xtr.shape[1:]}; expected the same shape")
    eight_bit = xtr.dtype == np.uint8 and (xte is None or xte.dtype == np.uint8)
    if not eight_bit:  # everything but 8-bit data is taken as plain numbers
        xtr = xtr.astype(np.float32, copy=False)
        xte = None if xte is None else xte.astype(np.float32, copy=False)
    t = encode_targets(ytr, yte, task="auto", where=f"as_splits({name!r})")
    cfg = DataConfig(dataset=name, val_fraction=val_fraction, test_fraction=test_fraction, normalize=normalize)
    shape = tuple(int(s) for s in xtr.shape[1:]) or (1,)
    data = Prepared(xtr, t.y_train, xte, t.y_test, name=name, num_classes=t.num_classes, classes=t.classes,
                    sample_shape=shape, sources=[])
    return build_splits(data, cfg, seed)
