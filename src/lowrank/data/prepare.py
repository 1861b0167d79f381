"""From decoded arrays to :class:`~lowrank.data.dataset.Splits`: split, subset, normalize, convert.

Every dataset, registered, read from a file or handed over in memory, ends
here as a :class:`Prepared` (inputs with encoded targets) and goes through
:func:`build_splits`, so the options of :class:`~lowrank.data.config.DataConfig`
mean the same thing for all of them:

1. Test split. Data with a test split of its own keeps it. Other data is split
   at random (seeded): ``round(test_fraction * N)`` samples become the test set,
   the rest the training set.
2. ``train_size``: a random subset (seeded) of that many training samples.
3. ``val_fraction``: that fraction of the (subset) training samples, chosen at
   random (seeded), held out as the validation split.
4. ``test_size``: the first that many test samples.
5. Conversion to float32 (N, D), D the product of the sample shape. 8-bit
   (uint8) inputs are divided by 255. With ``normalize`` they then have the
   training split's mean subtracted and are divided by its std: one pair of
   numbers over all pixels for 8-bit data, one pair per feature otherwise (a
   constant feature keeps std 1). Regression targets are never changed; with
   ``normalize_target`` the training targets' mean and std are recorded in
   ``Splits.target_mean`` / ``target_std`` and the model maps its outputs
   through them (:mod:`lowrank.target_scale`).

Within each split the samples keep the order they have in the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError
from .config import DataConfig
from .dataset import ArrayDataset, Splits

__all__ = ["Prepared", "build_splits", "split_off_test", "pixel_moments", "feature_moments"]

_TEST_SPLIT_STREAM = 0x7E57
"""Mixed into the seed of the test split, so it is drawn independently of the training subset."""


@dataclass
class Prepared:
    """A dataset's inputs with encoded targets, before splitting and conversion to tensors."""

    x_train: np.ndarray
    """(N, ...) inputs: ``uint8`` for 8-bit data (scaled by 1/255), or any real dtype."""
    y_train: np.ndarray
    """(N,) int64 class indices 0..K-1, or float32 regression targets."""
    x_test: np.ndarray | None
    """(M, ...) test inputs, or None to split the test set off the training samples."""
    y_test: np.ndarray | None
    name: str
    num_classes: int
    """K, or 0 for regression."""
    classes: list[str] | None = None
    sample_shape: tuple[int, ...] = ()
    """Shape of one input; empty means ``x_train.shape[1:]`` (``(1,)`` for 1-d inputs)."""
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sample_shape:
            self.sample_shape = tuple(self.x_train.shape[1:]) or (1,)
        pairs = [("training", self.x_train, self.y_train)]
        if self.x_test is not None or self.y_test is not None:
            if self.x_test is None or self.y_test is None:
                raise ConfigError(f"{self.name}: give both test inputs and test targets, or neither")
            pairs.append(("test", self.x_test, self.y_test))
        size = int(np.prod(self.sample_shape))
        for split, x, y in pairs:
            if len(x) != len(y):
                raise ConfigError(f"{self.name}: {len(x)} {split} inputs but {len(y)} targets; "
                                  f"expected one target per input")
            per = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
            if per != size:
                raise ConfigError(f"{self.name}: {split} inputs of shape {tuple(x.shape[1:])} do not "
                                  f"match the sample shape {self.sample_shape}")


def split_off_test(n: int, test_fraction: float, seed: int, where: str = "the dataset"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row indices (train, test) of a seeded random split of ``n`` samples.

    The test part has ``round(test_fraction * n)`` samples; both parts must end
    up non-empty. The same ``n``, fraction and seed always give the same split.
    """
    n_test = int(round(test_fraction * n))
    if not 1 <= n_test < n:
        raise ConfigError(f"{where}: test_fraction {test_fraction} of {n} samples leaves {n_test} for "
                          f"testing and {n - n_test} for training; both must be >= 1")
    perm = np.random.default_rng([seed, _TEST_SPLIT_STREAM]).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def pixel_moments(x: np.ndarray) -> tuple[float, float]:
    """Exact mean and std of a ``uint8`` array scaled to [0, 1], via a 256-bin histogram."""
    hist = torch.bincount(torch.from_numpy(np.ascontiguousarray(x)).reshape(-1), minlength=256)
    h = hist.numpy().astype(np.float64)
    n = h.sum()
    if n == 0:
        return 0.0, 1.0
    v = np.arange(256, dtype=np.float64) / 255.0
    mean = float((h * v).sum() / n)
    var = float((h * (v - mean) ** 2).sum() / n)
    return mean, var ** 0.5


def feature_moments(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-feature mean and (population) std of (N, ...) samples, features flattened.

    A feature with one value throughout gets std 1, so it is only shifted to 0.
    """
    a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if len(a) == 0:
        return [0.0] * a.shape[1], [1.0] * a.shape[1]
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    constant = a.max(axis=0) == a.min(axis=0)
    std[constant | ~(std > 0)] = 1.0
    mean[constant] = a[0, constant]
    return mean.tolist(), std.tolist()


def _tensor(x: np.ndarray, index: np.ndarray | None, scale: float,
            mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    """Rows ``index`` of ``x`` (all when None) as a new float32 (N, D) tensor, converted."""
    a = x if index is None else x[index]
    if a.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(a)).reshape(len(a), -1).to(torch.float32)
    else:  # always a copy: the caller's arrays are never written to
        t = torch.from_numpy(np.array(a, dtype=np.float32).reshape(len(a), -1))
    if scale != 1.0:
        t.div_(scale)
    if isinstance(mean, list):
        t.sub_(torch.tensor(mean, dtype=torch.float32)).div_(torch.tensor(std, dtype=torch.float32))
    else:
        if mean != 0.0:
            t.sub_(mean)
        if std != 1.0:
            t.div_(std)
    return t


def _targets(y: np.ndarray, classify: bool) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y).astype(np.int64 if classify else np.float32))


def build_splits(data: Prepared, cfg: DataConfig, seed: int = 0) -> Splits:
    """Split, subset and convert ``data`` as ``cfg`` asks (see the module docstring).

    Only the split options of ``cfg`` are read here (``test_fraction``,
    ``train_size``, ``val_fraction``, ``test_size``, ``normalize``); all random
    choices are seeded by ``seed``.
    """
    cfg.validate()
    pool = data.x_train
    base: np.ndarray | None = None      # rows of the training pool in data.x_train (None: all)
    test_rows: np.ndarray | None = None
    if data.x_test is None:
        base, test_rows = split_off_test(len(pool), cfg.test_fraction, seed, data.name)
        x_test, y_test = data.x_train, data.y_train
    else:
        x_test, y_test = data.x_test, data.y_test
    assert y_test is not None
    n = len(pool) if base is None else len(base)
    train_idx: np.ndarray | None = base
    val_idx: np.ndarray | None = None
    if cfg.train_size is not None or cfg.val_fraction > 0:
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(n)[: min(cfg.train_size or n, n)]
        n_val = int(round(cfg.val_fraction * len(chosen)))
        if cfg.val_fraction > 0 and not 1 <= n_val < len(chosen):
            raise ConfigError(
                f"val_fraction {cfg.val_fraction} of {len(chosen)} training samples leaves "
                f"{n_val} for validation and {len(chosen) - n_val} for training; both must be >= 1"
            )
        if base is not None:
            chosen = base[chosen]
        val_idx = np.sort(chosen[:n_val]) if n_val else None
        train_idx = np.sort(chosen[n_val:])
    if cfg.test_size is not None:
        m = len(x_test) if test_rows is None else len(test_rows)
        test_rows = np.arange(min(cfg.test_size, m)) if test_rows is None else test_rows[:cfg.test_size]

    xtr = pool if train_idx is None else pool[train_idx]
    ytr = data.y_train if train_idx is None else data.y_train[train_idx]
    eight_bit = pool.dtype == np.uint8
    scale = 255.0 if eight_bit else 1.0
    mean: float | list[float] = 0.0
    std: float | list[float] = 1.0
    if cfg.normalize:
        if eight_bit:
            mean, std = pixel_moments(xtr)
            if std <= 0.0:
                std = 1.0
        else:
            mean, std = feature_moments(xtr)
    classify = data.num_classes > 0
    target_mean, target_std = 0.0, 1.0
    if cfg.normalize_target:
        if classify:
            raise ConfigError(f"{data.name}: normalize_target standardizes regression targets, but the data has "
                              f"{data.num_classes} classes; leave it off (or use task regression)")
        yt = np.asarray(ytr, dtype=np.float64)
        target_mean = float(yt.mean()) if len(yt) else 0.0
        target_std = float(yt.std()) if len(yt) else 1.0
        if not target_std > 0:
            target_std = 1.0
    train = ArrayDataset(_tensor(xtr, None, scale, mean, std), _targets(ytr, classify))
    val = None
    if val_idx is not None:
        val = ArrayDataset(_tensor(pool, val_idx, scale, mean, std), _targets(data.y_train[val_idx], classify))
    yte = y_test if test_rows is None else y_test[test_rows]
    test = ArrayDataset(_tensor(x_test, test_rows, scale, mean, std), _targets(yte, classify))
    return Splits(train=train, test=test, val=val, name=data.name, num_classes=data.num_classes,
                  input_dim=train.input_dim, sources=list(data.sources), mean=mean, std=std,
                  sample_shape=data.sample_shape, classes=data.classes, input_scale=scale,
                  target_mean=target_mean, target_std=target_std)
