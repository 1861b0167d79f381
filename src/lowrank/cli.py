"""The ``lowrank`` command.

``train`` flags are generated from the config dataclasses (:mod:`lowrank.config`):
one flag per field, its help text the field's docstring, so an option exists in
exactly one place. Every user mistake ends in a one-line ``lowrank: error: ...``
and exit code 2; the library raises, only this file prints and exits.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from . import config as config_mod
from .config import DataConfig, MethodConfig, OptimConfig, TrainConfig
from .errors import LowRankError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


# -- flags from dataclasses --------------------------------------------------------------------

def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a dataclass (read from the source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = b.value.value
    return docs


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 784,256,10, got {text!r}")


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, group_name: str) -> None:
    hints = typing.get_type_hints(cls, vars(config_mod))
    docs = _field_docs(cls)
    group = parser.add_argument_group(group_name)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        args = typing.get_args(typ)
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            typ = next(a for a in args if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = docs.get(f.name, "") + (f" (default: {default})" if default not in (None, False) else "")
        dest = f"{group_name}.{f.name}"
        if typ is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif typing.get_origin(typ) is list:
            group.add_argument(flag, dest=dest, type=_int_list, default=None, help=help_text, metavar="N,N,...")
        else:
            group.add_argument(flag, dest=dest, type=typ, default=None, help=help_text,
                               metavar=f.name.upper())
    # keep the method choices visible
    if cls is MethodConfig:
        for a in group._group_actions:
            if a.dest == "method.method":
                a.choices = config_mod.METHODS
            if a.dest == "method.integrator":
                a.choices = ("kls", "parallel")
    if cls is OptimConfig:
        for a in group._group_actions:
            if a.dest == "optim.optimizer":
                a.choices = ("sgd", "adam", "adamw")


def config_from_args(ns: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig with every flag the user gave applied over ``base`` (or the defaults)."""
    cfg = base or TrainConfig()
    for key, value in vars(ns).items():
        if value is None or "." not in key:
            continue
        section, name = key.split(".", 1)
        target = cfg if section == "train" else getattr(cfg, section)
        setattr(target, name, value)
    cfg.validate()
    return cfg


# -- sub-commands -------------------------------------------------------------------------------

def _store(ns: argparse.Namespace):
    from .store import Store
    return Store(ns.db)


def cmd_train(ns: argparse.Namespace) -> int:
    from .train import fit, resume

    store = _store(ns)
    progress = sys.stderr.isatty() and not ns.quiet
    try:
        if ns.resume is not None:
            result = resume(ns.resume, store=store, progress=progress)
        else:
            cfg = config_from_args(ns)
            result = fit(cfg, store=store, runs_dir=ns.runs_dir, progress=progress,
                         on_epoch=None if ns.quiet or ns.json else _print_epoch)
    except KeyboardInterrupt:
        print("\nlowrank: interrupted; progress saved. Continue with: lowrank train --resume <run id> "
              "(`lowrank runs` lists it)", file=sys.stderr)
        return 130
    out = {"run_id": result.run_id, "run_dir": str(result.run_dir), "config": result.config.to_dict(),
           "final": _final(result.history[-1], result.summary), "history": result.history}
    if ns.json:
        print(json.dumps(out, default=float))
    else:
        s = result.summary
        acc = f"test acc {s['test_acc']:.4f}, " if s.get("test_acc") is not None else ""
        print(f"run {result.run_id} finished: {acc}test loss {s['test_loss']:.4f}, "
              f"{s['epoch_time']:.2f} s/epoch, hidden weights kept "
              f"{100 * s['hidden_weights']['ratio']:.1f}% -> {result.run_dir}")
    return 0


def _final(last: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    return {**{k: last.get(k) for k in keys}, "test_loss": summary["test_loss"],
            "test_acc": summary["test_acc"], "epoch_time": summary["epoch_time"],
            "train_time": summary["train_time"], "peak_mem": summary["peak_mem"]}


def _print_epoch(epoch: int, row: dict[str, Any]) -> None:
    acc = row.get("test_acc")
    ranks = row.get("ranks")
    rank_txt = (" ranks " + ",".join(str(r["rank"]) for r in ranks.values())) if ranks else ""
    print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}"
          + (f" test acc {acc:.4f}" if acc is not None else f" test loss {row['test_loss']:.4f}")
          + f" ({row['epoch_time']:.2f} s){rank_txt}", flush=True)


def cmd_datasets(ns: argparse.Namespace) -> int:
    from .data import list_datasets

    infos = list_datasets(ns.data_dir)
    if ns.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos]))
        return 0
    for info in infos:
        where = info.found or "not found"
        print(f"{info.name:15s} {where}")
        if not info.found:
            print(f"{'':15s} searched: {', '.join(info.searched)}")
            print(f"{'':15s} get it: {info.how_to_get}")
    return 0


def cmd_runs(ns: argparse.Namespace) -> int:
    store = _store(ns)
    if ns.action == "show":
        if ns.run_id is None:
            raise LowRankError("`lowrank runs show` needs a run id (see `lowrank runs`)")
        run = store.run(ns.run_id)
        if run is None:
            raise LowRankError(f"no run {ns.run_id} in {store.path}; `lowrank runs` lists the runs")
        run["epochs"] = store.epochs(ns.run_id)
        run["ranks"] = store.ranks(ns.run_id)
        if ns.json:
            print(json.dumps(run, default=float))
            return 0
        print(f"run {run['id']} [{run['status']}] {run['method']} on {run['dataset']} -> {run['run_dir']}")
        print(json.dumps(run["config"], indent=1))
        for e in run["epochs"]:
            _print_epoch(e["epoch"], e)
        if run["summary"]:
            s = run["summary"]
            print(f"final test acc {s.get('test_acc')}, test loss {s.get('test_loss'):.4f}")
        return 0
    runs = store.runs()
    if ns.json:
        print(json.dumps(runs, default=float))
        return 0
    print(f"{'id':>4}  {'status':11s} {'method':10s} {'dataset':14s} {'epochs':>6}  {'test acc':>8}  name")
    for r in runs:
        s = r["summary"] or {}
        acc = s.get("test_acc")
        print(f"{r['id']:>4}  {r['status']:11s} {r['method']:10s} {r['dataset']:14s} "
              f"{len(store.epochs(r['id'])):>6}  {acc if acc is None else f'{acc:.4f}':>8}  {r['name'] or ''}")
    return 0


def cmd_inspect(ns: argparse.Namespace) -> int:
    from .convert import inspect as inspect_layers
    from .models import mlp

    cfg = config_from_args(ns)
    m = cfg.method
    model = mlp(cfg.layers, cfg.activation)
    rows = inspect_layers(model, rank=m.rank, energy=m.energy, param_ratio=m.param_ratio,
                          target=m.target)
    if ns.json:
        print(json.dumps(rows, default=float))
        return 0
    print(f"{'layer':12s} {'shape (n x m)':>14s} {'rank':>5s} {'params':>9s} {'after':>9s} {'break-even':>10s}")
    for r in rows:
        shape = f"{r['out_features']}x{r['in_features']}"
        print(f"{r['name']:12s} {shape:>14s} {str(r['rank'] or '-'):>5s} {r['params_before']:>9d} "
              f"{r['params_after']:>9d} {r['break_even_rank']:>10.1f}{'' if r['convert'] else '  (kept dense)'}")
    return 0


# -- parser -------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2
        self.exit(EXIT_USAGE, f"lowrank: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lowrank", description="Train and compress neural networks with low-rank weights.")
    p.add_argument("--db", default=None, help="results database (default: $LOWRANK_DB or runs/lowrank.db)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one model and store its results")
    t.add_argument("--resume", type=int, metavar="RUN_ID", help="continue an interrupted run")
    t.add_argument("--runs-dir", default="runs", help="folder for run folders (default: runs)")
    t.add_argument("--json", action="store_true", help="print machine-readable results")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bar")
    _add_dataclass_flags(t, TrainConfig, "train")
    _add_dataclass_flags(t, DataConfig, "data")
    _add_dataclass_flags(t, OptimConfig, "optim")
    _add_dataclass_flags(t, MethodConfig, "method")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("datasets", help="list datasets and where they were found")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_datasets)

    r = sub.add_parser("runs", help="list runs, or show one")
    r.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    r.add_argument("run_id", nargs="?", type=int)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)

    i = sub.add_parser("inspect", help="show which layers a conversion would touch, with ranks and sizes")
    i.add_argument("--json", action="store_true")
    _add_dataclass_flags(i, TrainConfig, "train")
    _add_dataclass_flags(i, MethodConfig, "method")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.db is None:
        from .store import default_db_path
        ns.db = str(default_db_path())
    try:
        return int(ns.func(ns) or 0)
    except LowRankError as e:
        print(f"lowrank: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
