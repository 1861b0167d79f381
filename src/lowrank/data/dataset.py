"""In-memory datasets: tensors loaded once, sliced by index by the trainers."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """A dataset ready for training: its splits and what is known about them."""

    train: ArrayDataset
    test: ArrayDataset
    val: ArrayDataset | None
    """Held-out part of the training data, or None when ``val_fraction`` is 0."""
    name: str
    """Registered dataset name."""
    num_classes: int
    """Number of classes (0 for regression)."""
    input_dim: int
    """Number of input features."""
    sources: list[str] = field(default_factory=list)
    """Absolute paths of the files the data was decoded from."""
    mean: float = 0.0
    """Mean subtracted from every input (training split's, when normalised; else 0)."""
    std: float = 1.0
    """Std every input was divided by (training split's, when normalised; else 1)."""
