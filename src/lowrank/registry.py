"""The one table of methods: everything that names a method reads it.

A method registers itself once, from its own package, with :func:`register_method`
(as peft's ``register_peft_method``); config validation, the CLI's choices and flags,
:func:`lowrank.convert.convert`, checkpoint restore and the report all look it up here.

Built-in methods are the sub-packages of :mod:`lowrank.methods`, imported on the first
look-up. Methods living outside the package are imported from the modules named in
``$LOWRANK_PLUGINS`` (comma-separated import names) and from the ``lowrank.methods``
entry-point group of installed distributions.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .config import TrainConfig
    from .layer import LowRankLayer
    from .method_config import MethodConfig
    from .stepper import Stepper

__all__ = ["Method", "register_method", "get_method", "method_names", "layer_class", "layer_classes",
           "method_config"]

PLUGINS_ENV = "LOWRANK_PLUGINS"


@dataclass(frozen=True)
class Method:
    """One method: its options, its layers and its training step."""

    name: str
    """Registered name (``--method NAME``)."""
    config: type["MethodConfig"]
    """Its options dataclass."""
    summary: str
    """One line for ``--help``."""
    prepare: Callable[["nn.Module", "MethodConfig"], "nn.Module"]
    """Turn a freshly built dense model into the method's form, in place (convert, freeze, load a base)."""
    make_stepper: Callable[["nn.Module", "TrainConfig", int], "Stepper"]
    """The object that trains the prepared model: ``(model, train config, total steps) -> Stepper``."""
    layers: tuple[type["LowRankLayer"], ...] = ()
    """Its layer classes; ``layers[0]`` is what :func:`~lowrank.convert.convert` builds (``from_linear``)."""
    label: Callable[[dict[str, Any]], str] | None = None
    """A short report label from a run's config dict (default: ``"<name> r<rank>"``)."""


_METHODS: dict[str, Method] = {}
_loaded = False


def register_method(method: Method) -> Method:
    """Add ``method`` to the table (a second registration of the same name replaces the first)."""
    method.config.method = method.name
    _METHODS[method.name] = method
    return method


def _load() -> None:
    global _loaded
    if _loaded:
        return
    importlib.import_module("lowrank.methods")
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"${PLUGINS_ENV} names module {name!r}, which cannot be imported ({e}); "
                              f"fix PYTHONPATH or the variable") from None
    for ep in entry_points(group="lowrank.methods"):
        ep.load()
    _loaded = True  # only once every import succeeded: a failed one is reported again


def method_names() -> tuple[str, ...]:
    """Every registered method name, in registration order."""
    _load()
    return tuple(_METHODS)


def get_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name is a ConfigError listing the known ones."""
    _load()
    if name not in _METHODS:
        raise ConfigError(f"method {name!r} is not one of {', '.join(_METHODS)} (a method outside lowrank: "
                          f"name its module in ${PLUGINS_ENV})")
    return _METHODS[name]


def method_config(name: str, **options: Any) -> "MethodConfig":
    """``name``'s config built from ``options``; an option the method lacks is a ConfigError listing its own."""
    cls = get_method(name).config
    unknown = [k for k in options if k not in cls.options()]
    if unknown:
        raise ConfigError(f"{', '.join(repr(k) for k in unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} "
                          f"of method {name!r} (its options: {', '.join(cls.options()) or 'none'})")
    return cls(**options)


def layer_classes() -> dict[str, type["LowRankLayer"]]:
    """Class name -> layer class of every registered method (what checkpoints record)."""
    _load()
    return {cls.__name__: cls for m in _METHODS.values() for cls in m.layers}


def layer_class(name: str) -> type["LowRankLayer"]:
    """The registered layer class called ``name`` (a checkpoint's structure record names it)."""
    classes = layer_classes()
    if name not in classes:
        raise CheckpointError(f"layer class {name!r} is not registered by any method; known: "
                              f"{', '.join(classes)} (a method outside lowrank: set ${PLUGINS_ENV})")
    return classes[name]
