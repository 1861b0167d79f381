"""LeNet-5 as used in the dynamical low-rank training paper (Schotthöfer et al., 2022).

Two 5x5 convolutions (20 and 50 filters, no padding), each followed by the
activation and a 2x2 max-pool, then a 500-unit hidden Linear and the output
Linear. On 28x28 MNIST-sized input the flattened feature map is 50 x 4 x 4 = 800.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import ConfigError
from .mlp import _activation

__all__ = ["lenet5", "lenet5_feature_side", "LENET5_MIN_IMAGE_SIZE"]

_KERNEL = 5
_POOL = 2
_FILTERS = (20, 50)
_HIDDEN = 500

LENET5_MIN_IMAGE_SIZE = 16
"""Smallest square image side LeNet-5 accepts (leaves a 1x1 feature map)."""


def lenet5_feature_side(image_size: int) -> int:
    """Side of the square feature map after the second pool for ``image_size`` x ``image_size`` input.

    Each stage is a valid 5x5 convolution (side - 4) then a floor-dividing 2x2 pool:
    28 -> 24 -> 12 -> 8 -> 4.
    """
    side = image_size
    for _ in _FILTERS:
        side = (side - (_KERNEL - 1)) // _POOL
    return side


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"lenet5 {name} must be a positive integer, got {value!r}")
    return value


def lenet5(in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
           activation: str = "relu") -> nn.Sequential:
    """LeNet-5 taking FLAT input: (N, in_channels * image_size**2) -> (N, num_classes) logits.

    Modules, in order: ``unflatten`` (to (N, C, H, H)), ``conv0`` (20 filters, 5x5),
    ``act0``, ``pool0``, ``conv1`` (50 filters, 5x5), ``act1``, ``pool1``, ``flatten``,
    ``fc0`` (50*s*s -> 500, s = :func:`lenet5_feature_side` of image_size, 4 for 28),
    ``act2``, ``fc1`` (500 -> num_classes). ``fc1`` is the last Linear, so conversion's
    keep-the-output-dense default keeps it dense.
    """
    in_channels = _positive_int("in_channels", in_channels)
    image_size = _positive_int("image_size", image_size)
    num_classes = _positive_int("num_classes", num_classes)
    _activation(activation)
    if image_size < LENET5_MIN_IMAGE_SIZE:
        raise ConfigError(f"lenet5 needs images of at least {LENET5_MIN_IMAGE_SIZE}x{LENET5_MIN_IMAGE_SIZE} "
                          f"pixels, got {image_size}x{image_size}: use the mlp model for this data")
    side = lenet5_feature_side(image_size)
    c0, c1 = _FILTERS
    return nn.Sequential(OrderedDict([
        ("unflatten", nn.Unflatten(1, (in_channels, image_size, image_size))),
        ("conv0", nn.Conv2d(in_channels, c0, _KERNEL)),
        ("act0", _activation(activation)),
        ("pool0", nn.MaxPool2d(_POOL)),
        ("conv1", nn.Conv2d(c0, c1, _KERNEL)),
        ("act1", _activation(activation)),
        ("pool1", nn.MaxPool2d(_POOL)),
        ("flatten", nn.Flatten(1)),
        ("fc0", nn.Linear(c1 * side * side, _HIDDEN)),
        ("act2", _activation(activation)),
        ("fc1", nn.Linear(_HIDDEN, num_classes)),
    ]))
