"""User model factories for tests/test_models.py, loaded the way a user's own module is.

pytest puts ``tests/`` on ``sys.path`` (it has no ``__init__.py``; rootdir-relative
"prepend" import mode), so the specs read ``user_models:<factory>``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

NOT_A_FACTORY = 42


class FactoryBug(RuntimeError):
    """Raised inside a factory: a bug in the user's code, not a config mistake."""


def small_cnn(channels: int = 4, num_classes: int = 10) -> nn.Module:
    """Flat (N, 784) MNIST input -> (N, num_classes): conv 3x3 -> ReLU -> max-pool 4 -> Linear."""
    return nn.Sequential(OrderedDict([
        ("unflatten", nn.Unflatten(1, (1, 28, 28))),
        ("conv0", nn.Conv2d(1, channels, 3, padding=1)),
        ("act0", nn.ReLU()),
        ("pool0", nn.MaxPool2d(4)),
        ("flatten", nn.Flatten(1)),
        ("fc0", nn.Linear(channels * 7 * 7, num_classes)),
    ]))


def tiny_mlp(hidden: int = 16) -> nn.Module:
    """(N, 784) -> (N, 10) through one hidden layer of ``hidden`` units."""
    return nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


class SmallNet(nn.Module):
    """A class used directly as the factory: (N, in_features) -> (N, out_features)."""

    def __init__(self, in_features: int = 784, out_features: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x):  # (N, in_features) -> (N, out_features)
        return self.fc(x)


def needs_width(width: int) -> nn.Module:
    """A factory with a required argument."""
    return nn.Linear(784, width)


def not_a_module() -> list[int]:
    """Returns something other than an nn.Module."""
    return [1, 2, 3]


def explodes(depth: int = 1) -> nn.Module:
    """Fails inside the factory body with the user's own exception."""
    raise FactoryBug(f"bug in the user's factory at depth {depth}")


def type_error_inside(width: int = 3) -> nn.Module:
    """Accepts its arguments, then raises a TypeError of its own."""
    raise TypeError(f"bug inside the factory (width={width})")
