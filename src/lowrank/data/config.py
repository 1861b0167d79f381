"""What to train on: :class:`DataConfig`, one docstring per field (each becomes a CLI flag)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..field_types import check_field_types

__all__ = ["DataConfig", "TASKS", "IMAGE_MODES", "TRACE_SCALINGS", "MAX_TEXT_LENGTH", "MIN_VOCAB", "MAX_VOCAB"]

TASKS = ("auto", "classification", "regression")
"""Values of :attr:`DataConfig.task`."""
IMAGE_MODES = ("auto", "L", "RGB")
"""Values of :attr:`DataConfig.image_mode`."""
TRACE_SCALINGS = ("none", "amplitude")
"""Values of :attr:`DataConfig.trace_scaling`."""
MAX_TEXT_LENGTH = 8192
"""Largest :attr:`DataConfig.max_length` (attention costs grow with its square)."""
MIN_VOCAB, MAX_VOCAB = 100, 1_000_000
"""Range of :attr:`DataConfig.vocab_size`."""


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    """Registered name (`lowrank datasets` lists them) or path of a .npz, .csv(.gz) file or image folder."""
    data_dir: str | None = None
    """Folder searched first for the dataset's files (and for a relative dataset path)."""
    val_fraction: float = 0.0
    """Fraction of the training set held out for validation (0 = none)."""
    train_size: int | None = None
    """Use only the first N training samples (stratification-free, seeded shuffle first)."""
    test_size: int | None = None
    """Use only the first N test samples (for quick runs)."""
    noise: float = 0.0
    """Std of Gaussian noise added to normalized training inputs at every batch."""
    augment_shift: float = 0.0
    """Image data: shift each training image by a random (sub-pixel) offset of up to N pixels each way, every batch."""
    augment_rotate: float = 0.0
    """Image data: rotate each training image by a random angle of up to N degrees either way, every batch."""
    normalize: bool = True
    """Standardize inputs with the training split's mean and std (one pair for 8-bit images, else per feature)."""
    test_fraction: float = 0.2
    """Fraction held out (seeded) as the test set when a dataset file has no test split of its own."""
    label_column: str = "label"
    """CSV datasets: the header's name of the column holding the label or regression target."""
    split_column: str | None = None
    """CSV datasets: a column whose values (train or test) give each row's split."""
    task: str = "auto"
    """File datasets: auto, classification or regression (auto: integer/text labels classify, floats regress)."""
    image_mode: str = "auto"
    """Image folders: L (grey), RGB, or auto (L if every image is single-channel, else RGB)."""
    image_size: int | None = None
    """Image folders: resize every image to NxN (default: keep sizes, which must then all be equal)."""
    trace_pairs: int = 14000
    """Stopped-flow datasets: (time, volts) pairs per trace after X_start, zero-padded or truncated (inputs: 2x)."""
    trace_stride: int = 1
    """Stopped-flow datasets: down-sampling, keep every Nth row after X_start (1: every row)."""
    trace_scaling: str = "none"
    """Stopped-flow datasets: none (raw volts, as the thesis), or amplitude: each trace's volts as
    (v - end) / (start - end), so every decay runs from about 1 to 0."""
    normalize_target: bool = False
    """Regression: train on targets standardized by the training split's mean and std; the model maps its
    outputs back, so predictions, losses and metrics stay in the target's units."""
    max_length: int = 256
    """Text datasets (imdb): tokens kept per text (its first ones), padded to this length."""
    vocab_size: int = 8000
    """Text datasets: size of the WordPiece vocabulary trained on the training split (the embedding's size)."""
    tokenizer: str | None = None
    """Text datasets: a tokenizer.json to use instead of training one (a resumed run reuses its own)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~lowrank.errors.ConfigError` naming the first field with an impossible value."""
        check_field_types(self)
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ConfigError(f"dataset must be a registered name or a path, got {self.dataset!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("trace_pairs", "trace_stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.trace_scaling not in TRACE_SCALINGS:
            raise ConfigError(f"trace_scaling {self.trace_scaling!r} is not one of {', '.join(TRACE_SCALINGS)}")
        if not isinstance(self.normalize_target, bool):
            raise ConfigError(f"normalize_target must be true or false, got {self.normalize_target!r}")
        for name, top in (("augment_shift", None), ("augment_rotate", 180.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf") or (
                    top is not None and v > top):
                raise ConfigError(f"{name} must be a number >= 0{f' and <= {top:g}' if top else ''}, got {v!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or \
                not 1 <= self.max_length <= MAX_TEXT_LENGTH:
            raise ConfigError(f"max_length must be an integer from 1 to {MAX_TEXT_LENGTH} (tokens per text), "
                              f"got {self.max_length!r}")
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or \
                not MIN_VOCAB <= self.vocab_size <= MAX_VOCAB:
            raise ConfigError(f"vocab_size must be an integer from {MIN_VOCAB} to {MAX_VOCAB}, got {self.vocab_size!r}")
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str) or not self.tokenizer.strip()):
            raise ConfigError(f"tokenizer must be the path of a tokenizer.json, got {self.tokenizer!r}")
        for name in ("train_size", "test_size", "image_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {v!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.image_mode not in IMAGE_MODES:
            raise ConfigError(f"image_mode {self.image_mode!r} is not one of {', '.join(IMAGE_MODES)}")
        if not isinstance(self.label_column, str) or not self.label_column:
            raise ConfigError(f"label_column must name a CSV column, got {self.label_column!r}")
        if self.split_column is not None and self.split_column == self.label_column:
            raise ConfigError(f"split_column and label_column are both {self.label_column!r}; "
                              f"they must name different columns")
