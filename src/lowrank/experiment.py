"""Experiment files: TOML lists of runs, each a table of overrides over a base config.

An experiment file (read with :mod:`tomllib`) looks like::

    name = "compare-default"            # tags the runs in the database
    title = "Fashion-MNIST, 784-256-128-10"
    description = "free text shown in the report"

    [base]                              # any TrainConfig field; sections data/optim/method
    layers = [784, 256, 128, 10]
    epochs = 4
    [base.data]
    dataset = "fashion-mnist"

    [[runs]]
    label = "dense Adam"                # shown in tables and legends (stored as the run name)
    optim = { optimizer = "adam", lr = 1e-3 }

    [[runs]]
    label = "DLRT KLS adaptive"
    method = { method = "dlrt", integrator = "kls", adaptive = true, rank = 20 }

``baselines = ["curve-fit"]`` (top level) adds methods that train nothing
(:mod:`lowrank.baselines`); each is run once on the base data config and
stored as a run row next to the networks. A ``stopped-flow:PATH`` dataset with
a relative PATH is read relative to the experiment file's folder and must stay
inside it (``..`` leading out of it is an error); an absolute PATH is taken as
it is.

Every key is checked against :class:`~lowrank.config.TrainConfig` and its sections:
an unknown key is a :class:`~lowrank.errors.ConfigError` naming the key, where it
was found and the file. :func:`apply_overrides` is shared with sweep matrices.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DataConfig, OptimConfig, TrainConfig
from .errors import ConfigError
from .registry import get_method, method_names

__all__ = ["RunSpec", "Experiment", "load_experiment", "read_toml", "apply_overrides", "SECTIONS",
           "config_paths", "check_name", "resolve_paths"]

#: TrainConfig fields that are sections, with their dataclasses (``method``: see :func:`method_keys`).
SECTIONS: dict[str, type | None] = {"data": DataConfig, "optim": OptimConfig, "method": None}


def method_keys() -> list[str]:
    """Keys of a ``method`` table: ``method`` and every registered method's options."""
    keys = ["method"]
    for name in method_names():
        keys += [k for k in get_method(name).config.options() if k not in keys]
    return keys

_TOP_KEYS = {"name", "title", "description", "base", "runs", "baselines"}
_RUN_META = {"label"}


@dataclass
class RunSpec:
    """One run of an experiment: a display label and its full config."""

    label: str
    config: TrainConfig


@dataclass
class Experiment:
    """A parsed experiment file."""

    name: str
    """Short name; runs are stored with ``sweep = "compare:<name>"`` and their label as key."""
    title: str
    """Heading of the report."""
    description: str
    """Free text shown under the heading."""
    runs: list[RunSpec]
    """The runs, in file order."""
    source: Path | None = None
    """The file it was read from."""
    base: dict[str, Any] = field(default_factory=dict)
    """The base config (TrainConfig as a dict, overrides applied)."""
    baselines: list[str] = field(default_factory=list)
    """Names of :data:`lowrank.baselines.BASELINES` run on the base data config."""


def config_paths() -> set[str]:
    """Every settable config key as a dotted path: ``epochs``, ``optim.lr``, ``method.rank`` ..."""
    paths = {f.name for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS}
    for sec in SECTIONS:
        paths |= {f"{sec}.{name}" for name in _fields(sec)}
    return paths


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: Any, path: Path) -> str:
    """The ``name`` of a config file, which names its report folder: a plain name, never a path."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"name {name!r} in {path} must be a plain name (letters, digits, '.', '_', '-'; no "
                          f"folders): it names the report folder report/<name>; pass --out for another place")
    return name


#: Config keys that hold paths: in a config file they are relative to the file's folder and stay in it.
PATH_KEYS = (("data", "data_dir"), ("method", "base_checkpoint"), ("data", "dataset"))


def resolve_paths(cfg: dict[str, Any], path: Path, where: str, given: set[str] | frozenset[str] = frozenset()
                  ) -> dict[str, Any]:
    """A copy of ``cfg`` with every path of :data:`PATH_KEYS` made absolute against the folder
    of config file ``path``. A path that leads out of that folder (``..``, an absolute path
    elsewhere, ``~``) is a ConfigError: such a path is given on the command line, never by
    a file. Keys in ``given`` came from the command line and are left alone; so is a dataset
    name (not a path). A ``stopped-flow:PATH`` dataset's PATH is checked the same way."""
    from .data.files import looks_like_path
    from .data.registry import DATASETS
    from .data.stopped_flow import PREFIX, is_stopped_flow

    cfg = copy.deepcopy(cfg)
    folder = path.parent.resolve()
    for sec, key in PATH_KEYS:
        value = cfg.get(sec, {}).get(key)
        if key in given or not isinstance(value, str):
            continue
        prefix = ""
        if key == "dataset":
            if is_stopped_flow(value):
                prefix, value = PREFIX, value[len(PREFIX):].strip()
            elif value in DATASETS or not looks_like_path(value):
                continue
        target = (folder / Path(value)).resolve()
        if value.startswith("~") or not target.is_relative_to(folder):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{sec}.{key} = {prefix + value!r} in {where} leads out of the folder of {path.name} "
                              f"({folder}): a path in a config file stays inside its folder; give it on the "
                              f"command line ({flag}) instead")
        cfg[sec][key] = prefix + str(target)
    return cfg


def read_toml(path: str | Path, top_keys: set[str] | frozenset[str] | None = None) -> dict[str, Any]:
    """The TOML document at ``path``; a missing or malformed file, or (when ``top_keys`` is
    given) a top-level key outside it, is a ConfigError naming the file and key."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    for key in doc if top_keys is not None else ():
        if key not in top_keys:
            raise ConfigError(f"unknown key {key!r} at the top of {path} (known: {', '.join(sorted(top_keys))})")
    return doc


def apply_overrides(cfg: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of the TrainConfig dict ``cfg`` with ``overrides`` applied.

    ``overrides`` holds top-level fields and section tables (``{"optim": {"lr": 0.1}}``)
    or dotted keys (``{"optim.lr": 0.1}``). Naming another method (``method.method``)
    starts that method's table afresh: options of the previous method do not carry over. ``where`` (e.g. ``"runs[2] of configs/x.toml"``)
    goes into the error message of an unknown key.
    """
    out = copy.deepcopy(cfg)
    known = config_paths()
    for key, value in overrides.items():
        if "." in key:
            sec, _, name = key.partition(".")
            pairs = [(sec, {name: value})]
        else:
            pairs = [(key, value)]
        for k, v in pairs:
            if k in SECTIONS:
                if not isinstance(v, dict):
                    raise ConfigError(f"{k!r} in {where} must be a table of {k} fields, got {v!r}")
                if k == "method" and "method" in v and v["method"] != out["method"].get("method"):
                    out["method"] = {}
                for name, val in v.items():
                    if f"{k}.{name}" not in known:
                        raise ConfigError(f"unknown key {k}.{name!r} in {where} "
                                          f"(known {k} keys: {', '.join(sorted(_fields(k)))})")
                    out[k][name] = _plain(val)
            elif k in known:
                out[k] = _plain(v)
            else:
                raise ConfigError(f"unknown key {k!r} in {where} (known keys: "
                                  f"{', '.join(sorted(p for p in known if '.' not in p))}, "
                                  f"and tables {', '.join(SECTIONS)})")
    return out


def load_experiment(path: str | Path, dataset: str | None = None) -> Experiment:
    """Parse and validate the experiment file at ``path`` (every run's config is validated).

    ``dataset`` (the CLI's ``--dataset``) replaces ``data.dataset`` of the base and of every run.
    """
    path = Path(path)
    doc = read_toml(path, _TOP_KEYS)
    base_over = doc.get("base", {})
    if not isinstance(base_over, dict):
        raise ConfigError(f"'base' in {path} must be a table")
    given = {"dataset"} if dataset is not None else set()  # from the command line: not checked
    base = apply_overrides(TrainConfig().to_dict(), base_over, f"[base] of {path}")
    if dataset is not None:
        base["data"]["dataset"] = dataset
    base = resolve_paths(base, path, f"[base] of {path}", given)
    runs_doc = doc.get("runs", [])
    if not isinstance(runs_doc, list) or not runs_doc:
        raise ConfigError(f"{path} lists no runs: add [[runs]] tables")
    runs: list[RunSpec] = []
    labels: set[str] = set()
    for i, entry in enumerate(runs_doc):
        where = f"runs[{i}] of {path}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        over = {k: v for k, v in entry.items() if k not in _RUN_META}
        cfg_dict = apply_overrides(base, over, where)
        if dataset is not None:
            cfg_dict["data"]["dataset"] = dataset
        label = str(entry.get("label") or cfg_dict.get("name") or cfg_dict["method"]["method"])
        if label in labels:
            raise ConfigError(f"label {label!r} appears twice in {path}; labels must be unique")
        labels.add(label)
        cfg_dict["name"] = label
        try:
            cfg = TrainConfig.from_dict(resolve_paths(cfg_dict, path, where, given))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        runs.append(RunSpec(label, cfg))
    baselines = doc.get("baselines", [])
    if not isinstance(baselines, list) or not all(isinstance(b, str) for b in baselines):
        raise ConfigError(f"'baselines' in {path} must be a list of names, e.g. [\"curve-fit\"]")
    if baselines:
        from .baselines import check_baseline

        base_data = TrainConfig.from_dict(base).data
        for b in baselines:
            try:
                check_baseline(b, base_data)
            except ConfigError as e:
                raise ConfigError(f"baselines of {path}: {e}") from None
    return Experiment(name=check_name(doc.get("name", path.stem), path), title=str(doc.get("title", path.stem)),
                      description=str(doc.get("description", "")), runs=runs, source=path, base=base,
                      baselines=list(baselines))


def _fields(section: str) -> list[str]:
    cls = SECTIONS[section]
    return method_keys() if cls is None else [f.name for f in dataclasses.fields(cls)]


def _plain(value: Any) -> Any:
    """TOML values as the config expects them (arrays become lists)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
