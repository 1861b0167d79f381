"""Type checks of config fields against their annotations (TOML and JSON bring any type).

:func:`check_field_types` is the first thing every config's ``__post_init__`` does, so
``adaptive = "yes"`` or ``epochs = "2"`` in a TOML file is a one-line error naming the
field, never a truthy string or a ``TypeError`` deep in training. An ``int`` is accepted
for a ``float`` field (``lr = 1``); a ``bool`` is never a number.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from .errors import ConfigError

__all__ = ["check_field_types", "describe_type"]


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        return not args or args[-1] is Ellipsis or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the config's own validation decides


def describe_type(hint: Any) -> str:
    """``int | None`` -> ``an integer or none``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(h) for h in typing.get_args(hint))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "none (left out)"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin is dict or hint is dict:
        return "a table"
    return getattr(hint, "__name__", str(hint))


def check_field_types(obj: Any) -> None:
    """Raise :class:`ConfigError` for the first field of dataclass ``obj`` whose value does not
    have its annotated type, naming the field, the type wanted and the value."""
    for name, hint in _hints(type(obj)).items():
        value = getattr(obj, name)
        if not _matches(value, hint):
            raise ConfigError(f"{name} must be {describe_type(hint)}, got {value!r}")
