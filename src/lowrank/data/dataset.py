"""In-memory datasets: tensors loaded once, sliced by index by the trainers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["ArrayDataset", "Splits"]


@dataclass
class ArrayDataset:
    """Inputs and targets of one split, held as whole tensors.

    ``x`` is float32 (N, D); ``y`` is int64 (N,) class indices for classification
    or float32 (N,) targets for regression. Index with ``ds.x[idx], ds.y[idx]``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 2:
            raise ConfigError(f"ArrayDataset.x must be 2-d (N, D), got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ConfigError(
                f"ArrayDataset.y must be 1-d with {self.x.shape[0]} entries, got shape {tuple(self.y.shape)}"
            )
        if self.x.dtype != torch.float32:
            raise ConfigError(f"ArrayDataset.x must be float32, got {self.x.dtype}")
        if self.y.dtype not in (torch.int64, torch.float32):
            raise ConfigError(f"ArrayDataset.y must be int64 (classes) or float32 (regression), got {self.y.dtype}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_dim(self) -> int:
        """Number of input features D."""
        return int(self.x.shape[1])

    def subset(self, index: torch.Tensor) -> "ArrayDataset":
        """The samples at ``index`` (a new dataset; tensors are copied by indexing)."""
        return ArrayDataset(self.x[index], self.y[index])

    def to(self, device: str | torch.device) -> "ArrayDataset":
        """The same data on ``device``."""
        return ArrayDataset(self.x.to(device), self.y.to(device))


@dataclass
class Splits:
    """A dataset ready for training: its splits and what is known about them.

    Every split's ``x`` is float32 (N, D), one flattened sample per row. A raw
    sample ``r`` (as stored in the files, flattened) became the row
    ``(r / input_scale - mean) / std``; :meth:`prepare_inputs` applies the same
    conversion to new raw inputs. ``mean`` and ``std`` are either one number for
    every feature (8-bit image data: the training split's pixel mean and std
    after scaling to [0, 1]) or a list of D numbers, one per feature (tabular
    and other non-8-bit data: each feature's training-split mean and std).
    """

    train: ArrayDataset
    test: ArrayDataset
    val: ArrayDataset | None
    """Held-out part of the training data, or None when ``val_fraction`` is 0."""
    name: str
    """Registered dataset name, the dataset path as given, or the name passed to ``as_splits``."""
    num_classes: int
    """Number of classes (0 for regression)."""
    input_dim: int
    """Number of input features."""
    sources: list[str] = field(default_factory=list)
    """Absolute paths of the files the data was decoded from."""
    mean: float | list[float] = 0.0
    """Subtracted from every input: one number, or one per feature (see above); 0 when not normalized."""
    std: float | list[float] = 1.0
    """Every input was divided by it: one number, or one per feature; 1 when not normalized."""
    sample_shape: tuple[int, ...] = ()
    """Shape of one input before flattening: (1, 28, 28) for MNIST, (C, H, W) for image folders,
    (D,) for tables. Its product is ``input_dim``; left empty it becomes ``(input_dim,)``."""
    classes: list[str] | None = None
    """Name of each class index (folder names, text labels, or original label values when they
    were renumbered to 0..K-1); None when the labels were 0..K-1 already, or for regression."""
    input_scale: float = 255.0
    """Raw inputs were divided by this before ``mean`` was subtracted: 255 for 8-bit (uint8) data, else 1."""
    target_mean: float = 0.0
    """Regression with ``normalize_target``: the training targets' mean (the model adds it to its output)."""
    target_std: float = 1.0
    """Regression with ``normalize_target``: the training targets' std (the model's output is scaled by it)."""
    vocab_size: int = 0
    """Text data: every input is a token id below this (0 = padding); 0 for other data."""
    tokenizer: str | None = field(default=None, repr=False)
    """Text data: the JSON of the tokenizer that made the ids (a run saves it as tokenizer.json)."""

    @property
    def target_scaled(self) -> bool:
        """True when the model must map its outputs by ``target_mean`` and ``target_std``."""
        return self.target_mean != 0.0 or self.target_std != 1.0

    def __post_init__(self) -> None:
        if not self.sample_shape:
            self.sample_shape = (self.input_dim,)
        self.sample_shape = tuple(int(s) for s in self.sample_shape)
        size = 1
        for s in self.sample_shape:
            size *= s
        if size != self.input_dim:
            raise ConfigError(f"Splits.sample_shape {self.sample_shape} holds {size} values, "
                              f"but input_dim is {self.input_dim}")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ConfigError(f"Splits.classes names {len(self.classes)} classes, "
                              f"but num_classes is {self.num_classes}")

    @property
    def task(self) -> str:
        """``"classification"`` when there are classes, else ``"regression"``."""
        return "classification" if self.num_classes > 0 else "regression"

    def prepare_inputs(self, x: torch.Tensor | Any) -> torch.Tensor:
        """A batch of raw inputs, (N, *sample_shape) or (N, D) as stored, as model-ready float32 (N, D).

        Applies exactly the conversion the splits went through: divide by
        ``input_scale``, subtract ``mean``, divide by ``std``.
        """
        raw = torch.as_tensor(x)
        if raw.dim() == 0 or (len(raw) > 0 and raw[0].numel() != self.input_dim):
            raise ConfigError(f"expected a batch of inputs with {self.input_dim} values each "
                              f"(sample shape {self.sample_shape}), got shape {tuple(raw.shape)}")
        t = raw.reshape(len(raw), self.input_dim).to(torch.float32)
        if self.input_scale != 1.0:
            t = t / self.input_scale
        mean = torch.as_tensor(self.mean, dtype=torch.float32)
        std = torch.as_tensor(self.std, dtype=torch.float32)
        return (t - mean) / std
