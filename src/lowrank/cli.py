"""The ``lowrank`` command.

``train`` flags are generated from the config dataclasses (:mod:`lowrank.config`):
one flag per field, its help text the field's docstring, so an option exists in
exactly one place. Every user mistake ends in a one-line ``lowrank: error: ...``
and exit code 2; the library raises, only this file prints and exits.
"""

from __future__ import annotations

import argparse
import ast
import functools
import dataclasses
import inspect
import json
import math
import os
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from .config import DataConfig, OptimConfig, TrainConfig
from .errors import ConfigError, LowRankError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


# -- flags from dataclasses --------------------------------------------------------------------

def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a dataclass and its bases (read from the source)."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 784,256,10, got {text!r}")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"channels\": 8}}', got {text!r} ({e.msg})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"channels\": 8}}', got {text!r}")
    return value


def _flag(field_name: str) -> str:
    """The command-line flag of a config field: ``max_rank`` -> ``--max-rank``."""
    return "--" + field_name.replace("_", "-")


#: Closed choices shown by ``--help`` and checked by argparse: field name -> choices.
def _choices() -> dict[str, tuple[str, ...]]:
    from .losses import LOSSES
    from .models import ACTIVATIONS
    from .optimizers import OPTIMIZERS, SCHEDULES
    from .registry import method_names

    from .config import AUTOCAST_MODES

    return {"method": method_names(), "optimizer": tuple(OPTIMIZERS), "schedule": tuple(SCHEDULES),
            "loss": tuple(LOSSES), "activation": tuple(ACTIVATIONS), "autocast": AUTOCAST_MODES}


def _add_fields(group: Any, cls: type, section: str, seen: set[str], choices: dict[str, tuple[str, ...]],
                owners: dict[str, list[str]] | None = None) -> None:
    """One flag per field of ``cls`` not in ``seen``; ``dest`` is ``section.field``; ``owners``
    (method options) names the methods that have each field in its help."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) or f.name in seen or hints[f.name] is typing.Any:
            continue
        seen.add(f.name)
        flag = _flag(f.name)
        typ = hints[f.name]
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = docs.get(f.name, "") + (f" (default: {default})" if default not in (None, False, {}) else "")
        if owners is not None:
            help_text = f"[{', '.join(owners[f.name])}] {help_text}"
        dest = f"{section}.{f.name}"
        if typ is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(typ) is list:
            group.add_argument(flag, dest=dest, type=_int_list, default=None, help=help_text, metavar="N,N,...")
        elif typing.get_origin(typ) is dict:
            group.add_argument(flag, dest=dest, type=_json_object, default=None, help=help_text, metavar="JSON")
        else:
            group.add_argument(flag, dest=dest, type=typ, default=None, help=help_text, metavar=f.name.upper(),
                               choices=choices.get(f.name))


def _add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] = ("train", "data", "optim",
                                                                                     "method")) -> None:
    """Flags for every TrainConfig field, its data and optim sections, and every method's options."""
    from .registry import get_method, method_names

    choices = _choices()
    seen: set[str] = set()
    classes = {"train": TrainConfig, "data": DataConfig, "optim": OptimConfig}
    for section in sections:
        if section == "method":
            group = parser.add_argument_group("method", "--method NAME and its options ([...] names the methods "
                                                        "each option belongs to)")
            owners: dict[str, list[str]] = {}
            for name in method_names():
                for option in get_method(name).config.options():
                    owners.setdefault(option, []).append(name)
            group.add_argument("--method", dest="method.method", default=None, choices=choices["method"],
                               help="layer parameterization: " + "; ".join(
                                   f"{n}: {get_method(n).summary}" for n in method_names()))
            for name in method_names():
                _add_fields(group, get_method(name).config, "method", seen, choices, owners)
        else:
            _add_fields(parser.add_argument_group(section), classes[section], section, seen, choices)


def config_from_args(ns: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig with every flag the user gave applied over ``base`` (or the defaults).

    A method option the chosen method lacks is an error naming the flag and the methods
    that have it.
    """
    from .registry import get_method, method_names

    d = (base or TrainConfig()).to_dict()
    given = {k: v for k, v in vars(ns).items() if v is not None and "." in k and k.split(".", 1)[0] in
             ("train", "data", "optim", "method")}
    method = given.pop("method.method", None)
    if method is not None and method != d["method"]["method"]:
        d["method"] = {"method": method}
    name = d["method"]["method"]
    own = get_method(name).config.options()
    for key, value in given.items():
        section, field_name = key.split(".", 1)
        if section == "train":
            d[field_name] = value
        elif section == "method" and field_name not in own:
            having = [n for n in method_names() if field_name in get_method(n).config.options()]
            raise ConfigError(f"{_flag(field_name)} is an option of method {' or '.join(having)}, not of "
                              f"{name!r}: add --method {having[0]} or drop the flag")
        else:
            d[section][field_name] = value
    return TrainConfig.from_dict(d)


# -- sub-commands -------------------------------------------------------------------------------

def _store(ns: argparse.Namespace):
    from .store import Store
    return Store(ns.db)


def cmd_train(ns: argparse.Namespace) -> int:
    from .run import resume_run, train_run
    from .train import ForcedInterrupt

    from .distributed import launched_by_torchrun

    progress = sys.stderr.isatty() and not ns.quiet
    if ns.nproc < 1 or ns.check_replicas < 0:
        raise LowRankError(f"--nproc must be >= 1 and --check-replicas >= 0, got {ns.nproc} and {ns.check_replicas}")
    try:
        cfg = None
        if ns.resume is not None:
            given = [_flag(k.split(".", 1)[1]) for k, v in vars(ns).items() if "." in k and v is not None]
            if given:
                raise LowRankError(f"--resume continues run {ns.resume} with its stored config; "
                                   f"{', '.join(given)} cannot change it (start a new run instead)")
        else:
            cfg = config_from_args(ns)
        if launched_by_torchrun():
            result = _train_process(ns, cfg, progress)
            if result is None:
                return 0
        elif ns.nproc > 1:
            return _launch_processes(ns, cfg)
        elif cfg is None:
            result = resume_run(ns.resume, store=_store(ns), progress=progress, tensorboard=ns.tensorboard,
                                on_epoch=None if ns.quiet or ns.json else _print_epoch)
        else:
            result = train_run(cfg, store=_store(ns), runs_dir=ns.runs_dir, progress=progress,
                               tensorboard=ns.tensorboard, on_epoch=None if ns.quiet or ns.json else _print_epoch)
    except ForcedInterrupt:
        if os.environ.get("RANK", "0") == "0":      # data-parallel: process 0 speaks for all
            print("\nlowrank: stopped at once (second interrupt); the last epoch's checkpoint is kept. Continue "
                  "with: lowrank train --resume <run id> (`lowrank runs` lists it)", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print("\nlowrank: interrupted after a step; progress saved. Continue with: lowrank train --resume "
                  "<run id> (`lowrank runs` lists it)", file=sys.stderr)
        return 130
    out = {"run_id": result.run_id, "run_dir": str(result.run_dir), "config": result.config.to_dict(),
           "final": _final(result.history[-1], result.summary), "history": result.history}
    if ns.json:
        print(json.dumps(out, default=float))
    else:
        s = result.summary
        acc = f"test acc {s['test_acc']:.4f}, " if s.get("test_acc") is not None else ""
        if s.get("test_mae") is not None:
            r2 = s.get("test_r2")
            acc = f"test MAE {s['test_mae']:.4g}, RMSE {s['test_rmse']:.4g}, R^2 {'-' if r2 is None else f'{r2:.4f}'}, "
        print(f"run {result.run_id} finished: {acc}test loss {s['test_loss']:.4f}, "
              f"{s['epoch_time']:.2f} s/epoch, hidden weights kept "
              f"{100 * s['hidden_weights']['ratio']:.1f}% -> {result.run_dir}")
    return 0


def _train_process(ns: argparse.Namespace, cfg: TrainConfig | None, progress: bool) -> Any:
    """One of the processes torchrun started: process 0 records and returns the result, the others None."""
    from .distributed import leave
    from .distributed_run import train_distributed

    main = os.environ.get("RANK", "0") == "0"       # torchrun's; the process group is joined inside
    _, result = train_distributed(cfg, resume=ns.resume, db=ns.db, runs_dir=ns.runs_dir,
                                  check_every=ns.check_replicas, progress=progress and main,
                                  tensorboard=ns.tensorboard if main else None,
                                  on_epoch=None if ns.quiet or ns.json or not main else _print_epoch)
    leave()
    return result


def _launch_processes(ns: argparse.Namespace, cfg: TrainConfig | None) -> int:
    """``lowrank train --nproc N``: the same command in N processes under torchrun."""
    from .distributed_run import launch

    env = dict(os.environ)
    if cfg is None:                     # resume: the processes join with the stored run's device
        row = _store(ns).run(ns.resume)
        if row is None:
            raise LowRankError(f"no run {ns.resume} in {ns.db}; `lowrank runs` lists the runs")
        env["LOWRANK_DIST_DEVICE"] = str(row["config"].get("device", "cpu"))
    res = launch(ns.nproc, [*ns.argv, "--db", ns.db], env=env, echo=lambda line: print(line, end="", file=sys.stderr))
    if res.returncode == 0:
        return 0
    if res.returncode in (-2, 130) and res.error is None:
        return 130
    raise LowRankError(res.error.removeprefix("lowrank: error: ") if res.error else
                       f"training with {ns.nproc} processes failed (exit status {res.returncode}); "
                       f"the output above says why")


def _final(last: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    return {**{k: last.get(k) for k in keys}, "test_loss": summary["test_loss"],
            "test_acc": summary["test_acc"],
            **{k: summary[k] for k in ("test_mae", "test_rmse", "test_r2") if k in summary},
            "epoch_time": summary["epoch_time"],
            "train_time": summary["train_time"], "peak_mem": summary["peak_mem"]}


def _print_epoch(epoch: int, row: dict[str, Any]) -> None:
    acc = row.get("test_acc")
    ranks = row.get("ranks")
    rank_txt = (" ranks " + ",".join(str(r["rank"]) for r in ranks.values())) if ranks else ""
    val = row.get("val_acc")
    print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}" + (f" val acc {val:.4f}" if val is not None else "")
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


#: Statuses ``lowrank runs prune --status`` takes (``abandoned``: a sweep's row that never got a folder).
PRUNE_STATUSES = ("failed", "diverged", "interrupted", "running", "abandoned", "finished")


def _fmt(value: Any, spec: str = ".4f") -> str:
    """A number for a listing, ``-`` when there is none."""
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _test_result(summary: dict[str, Any] | None) -> str:
    """The listing's test column: accuracy, or ``MAE=...`` for a regression run, or ``-``."""
    s = summary or {}
    if s.get("test_acc") is not None:
        return _fmt(s["test_acc"])
    if s.get("test_mae") is not None:
        return f"MAE={_fmt(s['test_mae'], '.4g')}"
    return "-"


def _held_by(run: dict[str, Any]) -> Any:
    """The pid of the live process training ``run`` (None if none)."""
    from .recorder import lock_holder

    return lock_holder(run["run_dir"]) if run["status"] == "running" else None


def _show_run(run: dict[str, Any], ranks: list[dict[str, Any]]) -> None:
    where = run["run_dir"] or "(no run folder)"
    if run["run_dir"] and not Path(run["run_dir"]).is_dir():
        where += " (folder missing)"
    name = f" {run['name']!r}" if run.get("name") else ""
    print(f"run {run['id']}{name} [{run['status']}] {run['method']} on {run['dataset']} -> {where}")
    if run["status"] == "running":
        if run["held_by"] is not None:
            print(f"being trained now by process {run['held_by']}")
        else:
            print(f"no process is training it (killed?); `lowrank train --resume {run['id']}` continues it")
    print(json.dumps(run["config"], indent=1))
    by_epoch: dict[int, list[str]] = {}
    for r in ranks:
        by_epoch.setdefault(r["epoch"], []).append(str(r["rank"]))
    epochs = run["epochs"]
    total = (run["config"] or {}).get("epochs")
    print(f"{len(epochs)} of {total if total is not None else '?'} epochs recorded")
    for e in epochs:
        extra = e.get("extra") or {}
        if e.get("test_acc") is not None:
            test = f"test acc {_fmt(e['test_acc'])}"
        elif extra.get("test_mae") is not None:
            test = f"test MAE {_fmt(extra['test_mae'], '.4g')} test loss {_fmt(e.get('test_loss'))}"
        else:
            test = f"test loss {_fmt(e.get('test_loss'))}"
        rank_txt = f" ranks {','.join(by_epoch[e['epoch']])}" if e["epoch"] in by_epoch else ""
        print(f"epoch {e['epoch'] + 1}: train loss {_fmt(e.get('train_loss'))} {test} "
              f"({_fmt(e.get('epoch_time'), '.2f')} s){rank_txt}")
    s = run["summary"]
    if s:
        if s.get("test_mae") is not None:
            r2 = s.get("test_r2")
            result = (f"test MAE {_fmt(s['test_mae'], '.4g')}, RMSE {_fmt(s.get('test_rmse'), '.4g')}, "
                      f"R^2 {_fmt(r2)}")
        else:
            result = f"test acc {_fmt(s.get('test_acc'))}"
        print(f"final {result}, test loss {_fmt(s.get('test_loss'))}")
    elif run["status"] != "running":
        print(f"no final results: the run is {run['status']}"
              + (f" after {len(epochs)} epochs" if epochs else " before its first epoch ended"))


def _deletion_line(d: dict[str, Any], dry_run: bool) -> str:
    what = f"run {d['id']} ({d['status']}, {d['method']} on {d['dataset']}, {d['epochs']} epochs)"
    if d["held_by"] is not None:
        return f"skipped {what}: process {d['held_by']} is training it"
    folder = {"removed": f"folder {d['run_dir']} {'would be ' if dry_run else ''}removed",
              "missing": f"its folder {d['run_dir']} was already gone",
              "none": "it had no run folder",
              "kept": f"folder {d['run_dir']} kept: {d['kept_because']}"}[d["folder"]]
    return f"{'would delete' if dry_run else 'deleted'} {what}; {folder}"


def _delete_runs(store: Any, ids: list[int], dry_run: bool) -> tuple[int, int]:
    """Delete (or list, ``dry_run``) runs ``ids``, one line each; (deleted, skipped)."""
    from .run import delete_run

    done = skipped = 0
    for run_id in ids:
        d = delete_run(store, run_id, dry_run=dry_run)
        print(_deletion_line(d, dry_run), flush=True)
        if d["held_by"] is not None:
            skipped += 1
        else:
            done += 1
    verb = "would delete" if dry_run else "deleted"
    print(f"{verb} {done} run{'s' if done != 1 else ''}" + (f", skipped {skipped} held by a live process"
                                                            if skipped else ""))
    return done, skipped


def cmd_runs(ns: argparse.Namespace) -> int:
    store = _store(ns)
    ids = ns.run_ids
    if ns.action != "prune" and (ns.status is not None or ns.yes):
        raise LowRankError(f"--status and --yes belong to `lowrank runs prune`, not `lowrank runs {ns.action}`")
    if ns.action not in ("rm", "prune") and ns.dry_run:
        raise LowRankError(f"--dry-run belongs to `lowrank runs rm` and `prune`, not `lowrank runs {ns.action}`")
    if ns.action == "show":
        if len(ids) != 1:
            raise LowRankError("`lowrank runs show` needs one run id (see `lowrank runs`)")
        run = store.run(ids[0])
        if run is None:
            raise LowRankError(f"no run {ids[0]} in {store.path}; `lowrank runs` lists the runs")
        run["epochs"] = store.epochs(ids[0])
        run["ranks"] = store.ranks(ids[0])
        run["held_by"] = _held_by(run)
        if ns.json:
            print(json.dumps(run, default=float))
            return 0
        _show_run(run, run["ranks"])
        return 0
    if ns.action == "rm":
        if not ids:
            raise LowRankError("`lowrank runs rm` needs the ids of the runs to delete (see `lowrank runs`)")
        ids = list(dict.fromkeys(ids))
        missing = [i for i in ids if store.run(i) is None]
        if missing:
            raise LowRankError(f"no run {', '.join(map(str, missing))} in {store.path}; nothing was deleted "
                               f"(`lowrank runs` lists the runs)")
        _, skipped = _delete_runs(store, ids, ns.dry_run)
        return 1 if skipped else 0
    if ns.action == "prune":
        if ids:
            raise LowRankError("`lowrank runs prune` takes no run ids (delete runs by id with `lowrank runs rm ID`)")
        if ns.status is None:
            raise LowRankError(f"`lowrank runs prune` needs --status ({'|'.join(PRUNE_STATUSES)})")
        runs = store.runs(status=ns.status)
        if ns.status == "finished" and not ns.yes and not ns.dry_run:
            raise LowRankError(f"`prune --status finished` would delete the results of "
                               f"{'all ' + str(len(runs)) + ' finished runs' if len(runs) != 1 else 'the finished run'}"
                               f"; add --yes to do it (--dry-run lists them)")
        if not runs:
            print(f"no {ns.status} runs in {store.path}; nothing to delete")
            return 0
        _delete_runs(store, [r["id"] for r in runs], ns.dry_run)
        return 0
    if ids:
        raise LowRankError("`lowrank runs` lists every run; `lowrank runs show ID` shows one")
    runs = store.runs()
    if ns.json:
        print(json.dumps(runs, default=float))
        return 0
    print(f"{'id':>4}  {'status':11s} {'method':10s} {'dataset':14s} {'epochs':>6}  {'test acc':>8}  name")
    dead = []
    for r in runs:
        if r["status"] == "running" and _held_by(r) is None:
            dead.append(r["id"])
        print(f"{r['id']:>4}  {r['status']:11s} {r['method']:10s} {r['dataset']:14s} "
              f"{r['epochs_done']:>6}  {_test_result(r['summary']):>8}  {r['name'] or ''}".rstrip())
    if dead:
        listed = ", ".join(map(str, dead))
        print(f"(run{'s' if len(dead) > 1 else ''} {listed}: marked running, but no process is training "
              f"{'them' if len(dead) > 1 else 'it'}; `lowrank train --resume ID` continues one, "
              f"`lowrank runs prune --status running` deletes them)")
    return 0


def cmd_inspect(ns: argparse.Namespace) -> int:
    from .convert import plan
    from .registry import get_method

    if ns.checkpoint is not None:
        given = [k for k, v in vars(ns).items() if "." in k and v is not None]
        if given:
            raise LowRankError(f"inspect CHECKPOINT shows the stored model as it is; "
                               f"{', '.join(_flag(k.split('.', 1)[1]) for k in given)} cannot change it")
        cfg, model = _model_of_checkpoint(ns.checkpoint)
    else:
        cfg = config_from_args(ns)
        model = _dense_model_of(cfg)
    method = cfg.method if get_method(cfg.method.method).layers else "vanilla"  # dense: the default factorization
    rows = plan(model, method)
    if ns.json:
        print(json.dumps(rows, default=float))
        return 0
    width = max([12] + [len(r["name"]) for r in rows])
    print(f"{'layer':{width}s} {'type':>14s} {'shape (n x m)':>14s} {'rank':>5s} {'params':>9s} {'after':>9s} "
          f"{'break-even':>10s}")
    for r in rows:
        shape = f"{r['out_features']}x{r['in_features']}"
        notes = []
        if r["kind"] == "conv":
            kh, kw = r["kernel_size"]
            notes.append(f"conv {r['out_channels']}x{r['in_channels']}x{kh}x{kw}")
        if r.get("note"):
            notes.append(r["note"])
        if r["convert"]:
            notes.append(f"-> {r['becomes']}")
        elif r["rank"] is None:
            notes.append("kept dense")
        note = f"  ({'; '.join(notes)})" if notes else ""
        print(f"{r['name']:{width}s} {r['type']:>14s} {shape:>14s} {str(r['rank'] or '-'):>5s} {r['params_before']:>9d} "
              f"{r['params_after']:>9d} {r['break_even_rank']:>10.1f}{note}")
    attention = dict.fromkeys(r["attention"] for r in rows if r.get("attention") is not None)
    for name in attention:
        projs = [r for r in rows if r.get("attention") == name]
        what = ", ".join(f"{r['projection']}: " + (f"{r['becomes']} r{r['rank']}" if r["rank"] else "dense")
                         for r in projs)
        becomes = " -> LowRankMultiheadAttention" if any(r["convert"] and r["type"] == "MultiheadAttention"
                                                         for r in projs) else ""
        print(f"attention {name or '(model)'}{becomes}: {what}")
    return 0


def _dense_model_of(cfg: TrainConfig) -> Any:
    """The dense model ``cfg`` describes; the data is loaded only when the model needs its shapes."""
    from .run import build_dense_model

    if cfg.model == "mlp":
        return build_dense_model(cfg, (cfg.layers[0],), cfg.layers[-1])
    from .data import load_dataset

    data = load_dataset(cfg.data, seed=cfg.seed)
    return build_dense_model(cfg, tuple(data.sample_shape), data.num_classes or 1)


def _model_of_checkpoint(path: str) -> tuple[TrainConfig, Any]:
    """The config and model stored in a run folder or checkpoint file."""
    from .checkpoint import damaged, load_model, read_checkpoint
    from .run import build_dense_model

    ckpt = read_checkpoint(path)
    with damaged(f"checkpoint {path}"):
        cfg = TrainConfig.from_dict(ckpt["config"])
        shape = ckpt.get("data_shape") or {}
        if not shape:
            raise LowRankError(f"checkpoint {path} does not record its data's shape; inspect it with the flags of "
                               f"its run")
        model = build_dense_model(cfg, tuple(shape["sample_shape"]), shape["num_outputs"])
    return cfg, load_model(model, ckpt)


def cmd_stopped_flow_generate(ns: argparse.Namespace) -> int:
    import dataclasses

    from .kinetics.generate import GeneratorConfig, generate

    given = {f.name: getattr(ns, f"gen.{f.name}") for f in dataclasses.fields(GeneratorConfig)}
    cfg = GeneratorConfig(**{k: v for k, v in given.items() if v is not None})
    traces = generate(ns.out, cfg, overwrite=ns.force)
    ks = [t.k for t in traces]
    print(f"wrote {cfg.experiments} experiments, {len(traces)} .bka traces of {cfg.rows} rows into {ns.out} "
          f"(k {min(ks):.1f}-{max(ks):.1f} s^-1; true parameters in {Path(ns.out) / 'truth.csv'})")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    import time

    from .compare import default_config_path, experiment_tag, outcome_notes, run_experiment
    from .experiment import load_experiment
    from .report import load_runs, write_report

    path = Path(ns.config) if ns.config else default_config_path()
    exp = load_experiment(path, dataset=ns.dataset)
    out_dir = Path(ns.out or Path("report") / exp.name)
    store = _store(ns)
    t0 = time.perf_counter()
    print(f"compare {exp.name}: {len(exp.runs)} runs from {path} into {store.path}", flush=True)

    def start(i: int, spec: Any) -> None:
        print(f"[{i + 1}/{len(exp.runs)}] {spec.label} ({spec.config.method.method}, "
              f"{spec.config.epochs} epochs)", flush=True)

    def epoch(spec: Any, e: int, row: dict[str, Any]) -> None:
        if not ns.quiet:
            print("    ", end="")
            _print_epoch(e, row)

    def done(o: Any) -> None:
        extra = f" ({o.error})" if o.error else ""
        print(f"    -> {o.status}{extra} in {o.wall_time:.1f} s" + (f", run {o.run_id}" if o.run_id else ""),
              flush=True)

    try:
        outcomes = run_experiment(exp, store=store, runs_dir=ns.runs_dir, on_start=start, on_epoch=epoch,
                                  on_done=done)
    except KeyboardInterrupt:
        print("\nlowrank: interrupted; the current run keeps its checkpoint (`lowrank train --resume <id>`); "
              "finished runs are stored", file=sys.stderr)
        return 130
    ids = [o.run_id for o in outcomes if o.run_id is not None]
    wall = time.perf_counter() - t0
    if not ids:
        raise LowRankError(f"no run of {path} could be trained: " + "; ".join(outcome_notes(outcomes)))
    files = write_report(load_runs(store, ids), out_dir, title=exp.title,
                         subtitle=f"{exp.description} Config {path}; runs {', '.join(map(str, ids))} "
                                  f"(sweep tag {experiment_tag(exp)}); whole comparison {wall / 60:.1f} min.".strip(),
                         notes=outcome_notes(outcomes))
    _print_summary_table(store, ids)
    print(f"wall time {wall:.1f} s; report: {files.html} and {files.markdown}")
    print(f"rebuild with: lowrank report {' '.join(map(str, ids))} --out {out_dir}")
    unfinished = [o for o in outcomes if o.status != "finished"]
    if unfinished:  # the report shows them; the exit code says the comparison is not whole
        print(f"lowrank: {len(unfinished)} of {len(outcomes)} runs did not finish: "
              + "; ".join(f"{o.label} ({o.status})" for o in unfinished), file=sys.stderr)
        return 1
    return 0


def _print_summary_table(store: Any, ids: list[int]) -> None:
    from .report import load_runs, results_table

    t = results_table(load_runs(store, ids))
    wanted = ("run", "status", "test accuracy", "test MAE", "test R^2", "hidden weights kept", "parameters",
              "epoch time", "total time")
    keep = [t.columns.index(c) for c in wanted if c in t.columns]
    rows = [[t.columns[i] for i in keep]] + [[r[i] for i in keep] for r in t.rows]
    widths = [max(len(r[j]) for r in rows) for j in range(len(keep))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_report(ns: argparse.Namespace) -> int:
    from .report import parse_query, select_runs, write_report

    store = _store(ns)
    runs = select_runs(store, ns.run_ids, parse_query(ns.query))
    if not runs:
        raise LowRankError("no run matches; `lowrank runs` lists the runs")
    out_dir = Path(ns.out or Path("report") / "custom")
    what = f"runs {', '.join(str(r.id) for r in runs)}" + (f" (query {ns.query})" if ns.query else "")
    files = write_report(runs, out_dir, title=ns.title, subtitle=f"{what}, from {store.path}")
    print(f"report of {len(runs)} runs: {files.html} and {files.markdown}")
    return 0


def cmd_sweep(ns: argparse.Namespace) -> int:
    import signal

    from .sweep_matrix import load_matrix
    from .sweep import plan_sweep, run_sweep
    from .sweep_report import write_sweep_report

    if ns.workers < 1:
        raise LowRankError(f"--workers must be at least 1, got {ns.workers}")
    matrix = load_matrix(ns.matrix)
    shard = None
    if ns.shard is not None:
        from .sweep_shard import parse_shard, shard_matrix

        shard = parse_shard(ns.shard)
        matrix = shard_matrix(matrix, shard)
    store = _store(ns)
    plan = plan_sweep(matrix, store)
    print(f"sweep {matrix.name}{f' shard {shard}' if shard else ''}: {len(plan.states)} grid points: "
          f"{plan.count('done')} done, "
          f"{plan.count('resume')} to resume, {plan.count('start')} to start"
          , flush=True)
    for st in plan.states:
        if ns.dry_run:
            print(f"  {st.action:11s} {st.point.key}" + (f"  ({st.reason})" if st.reason else ""))
    if ns.dry_run:
        return 0
    total = plan.count("resume") + plan.count("start")
    counter = {"n": 0}

    def result(r: dict[str, Any]) -> None:
        counter["n"] += 1
        acc = f" test acc {r['test_acc']:.4f}" if r.get("test_acc") is not None else ""
        err = f" ({r['error']})" if r.get("error") else ""
        print(f"[{counter['n']}/{total}] {r['status']}{' (resumed)' if r['resumed'] else ''} run {r['run_id']}:"
              f" {r['key']}{acc}{err} {r['seconds']:.1f} s", flush=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        run_sweep(matrix, db_path=store.path, runs_dir=ns.runs_dir, workers=ns.workers, on_result=result)
    except KeyboardInterrupt:
        print("\nlowrank: sweep interrupted; run the same command again to resume it", file=sys.stderr)
        return 130
    after = plan_sweep(matrix, store)
    out_dir = Path(ns.out or Path("report") / f"sweep-{matrix.name}")
    files = write_sweep_report(matrix, store, out_dir)
    print(f"sweep {matrix.name}: {after.count('done')} of {len(after.states)} grid points done"
          + (f", {after.count('resume')} left unfinished" if after.count("resume") else "")
          + f"; report: {files.html}")
    return 0 if after.count("resume") == 0 else 1


def cmd_finetune(ns: argparse.Namespace) -> int:
    from .finetune import FinetuneConfig, plan_finetune, run_finetune
    from .finetune_report import finetune_lines
    from .report import select_runs, write_report

    options = {k.split(".", 1)[1]: v for k, v in vars(ns).items() if k.startswith("finetune.") and v is not None}
    plan = plan_finetune(FinetuneConfig(checkpoint=ns.checkpoint, **options))
    store = _store(ns)
    if not ns.json:
        print(f"finetune {plan.group}: {len(plan.rows)} runs on {plan.data.name} from {plan.pretrained.path} "
              f"({plan.config.epochs} epochs each) into {store.path}", flush=True)
    result = run_finetune(plan, store=store, runs_dir=ns.runs_dir, on_start=None if ns.json else (
        lambda row: print(f"  training {row.config.name} ...", flush=True)))
    out_dir = Path(ns.out or Path("report") / plan.group.replace("/", "-"))
    files = write_report(select_runs(store, [r.run_id for r in result.rows]), out_dir,
                         title=f"Fine-tuning {plan.pretrained.config.data.dataset} -> {plan.data.name}",
                         subtitle=f"group {plan.group}, checkpoint {plan.pretrained.path}")
    if ns.json:
        c = result.choice
        print(json.dumps({"group": result.group, "pretrained_test_acc": result.pretrained_test_acc,
                          "rows": [r.to_dict() for r in result.rows], "report": str(files.html),
                          "choice": None if c is None else dataclasses.asdict(c)}, default=float))
        return 0
    for line in finetune_lines(result):
        print(line)
    print(f"report: {files.html}")
    return 0


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.9,0.99, got {text!r}")


def cmd_compress(ns: argparse.Namespace) -> int:
    from .compress import CompressConfig, run_compress

    given = {k.split(".", 1)[1]: v for k, v in vars(ns).items() if k.startswith("compress.") and v is not None}
    cfg = CompressConfig(checkpoint=ns.checkpoint, out=ns.out, energies=ns.energies, **given)

    def point(row: dict[str, Any]) -> None:
        if not ns.json:
            print(_compress_line(row), flush=True)

    if not ns.json:
        print(f"{'point':>8s} {'acc before':>10s} {'acc after':>9s} {'params':>9s} {'bytes':>9s} {'FLOPs':>9s} "
              f"{'torch b1':>9s} {'torch/s':>10s} {'ort b1':>9s} {'ort/s':>10s} {'retrain':>8s}")
    result = run_compress(cfg, store=_store(ns), on_point=point)
    c = result.choice
    if ns.json:
        print(json.dumps({"compression_id": result.compression_id, "run_id": result.run_id, "dense": result.dense,
                          "points": result.points, "chosen": c.row["label"], "rule": c.rule,
                          "within_tolerance": c.within_tolerance, "knee": result.knee_label,
                          "chosen_dir": str(result.chosen_dir),
                          "merged_dir": str(result.merged_dir) if result.merged_dir else None}, default=float))
        return 0
    print(f"chosen {c.row['label']}: {c.rule}")
    print(f"knee of accuracy against PyTorch batch-1 latency: {result.knee_label}")
    print(f"saved {result.chosen_dir}" + (f" and {result.merged_dir} (merged)" if result.merged_dir else "")
          + f"; every point under {result.out / 'points'}; database job {result.compression_id}"
          + (f" of run {result.run_id}" if result.run_id is not None else " (its run is not in this database)"))
    return 0


def _compress_line(row: dict[str, Any]) -> str:
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    def us(v: Any) -> str:
        return "-" if v is None else f"{1e6 * v:.0f} us"

    def per_s(v: Any) -> str:
        return "-" if v is None else f"{v:,.0f}"

    return (f"{row['label']:>8s} {pct(row['acc_before']):>10s} {pct(row['acc_after']):>9s} {row['params']:>9d} "
            f"{row['bytes']:>9d} {row['flops']:>9d} {us(row.get('torch_latency_b1')):>9s} "
            f"{per_s(row.get('torch_throughput')):>10s} {us(row.get('ort_latency_b1')):>9s} "
            f"{per_s(row.get('ort_throughput')):>10s} "
            f"{'-' if row['retrain_time'] is None else format(row['retrain_time'], '.1f') + ' s':>8s}")


def cmd_export(ns: argparse.Namespace) -> int:
    from .compress.onnx_export import export_onnx
    from .compress.source import load_any

    if Path(ns.onnx).exists():
        raise LowRankError(f"--onnx {ns.onnx} already exists: name a new .onnx file (nothing is overwritten)")
    model, shape = load_any(ns.model, trust_factory=ns.trust_factory)
    result = export_onnx(model, ns.onnx, shape, tolerance=ns.tolerance)
    weights = sum(math.prod(d) for d in result.initializers.values())
    print(f"wrote {result.path}: onnxruntime matches PyTorch to {result.max_abs_diff:.2g} (max abs difference on "
          f"{result.check_batch} samples, outputs up to {result.output_scale:.3g}; tolerance {ns.tolerance:g} x "
          f"max(1, {result.output_scale:.3g})); {len(result.initializers)} initializers, {weights} weights")
    return 0


def cmd_merge(ns: argparse.Namespace) -> int:
    from .store_merge import merge_databases

    r = merge_databases(ns.out, ns.inputs)
    print(f"merged {len(r.per_input)} databases ({', '.join(f'{p}: {n} runs' for p, n in r.per_input.items())}) "
          f"into {r.out}: {r.runs} runs, {r.duplicates} duplicates left out"
          + (f"; {r.missing_folders} run folders are not on this machine" if r.missing_folders else ""))
    return 0


# -- parser -------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2
        self.exit(EXIT_USAGE, f"lowrank: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lowrank", description="Train and compress neural networks with low-rank weights.")
    db_help = "results database (default: $LOWRANK_DB or runs/lowrank.db)"
    p.add_argument("--db", default=None, help=db_help)
    # Global options are accepted after the sub-command too (`lowrank runs --db x.db`).
    common = _Parser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add = functools.partial(sub.add_parser, parents=[common])

    t = add("train", help="train one model and store its results")
    t.add_argument("--resume", type=int, metavar="RUN_ID", help="continue an interrupted run")
    t.add_argument("--runs-dir", default="runs", help="folder for run folders (default: runs)")
    t.add_argument("--json", action="store_true", help="print machine-readable results")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bar")
    t.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard logs to DIR/<run id>-<method>")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training in N local processes (torchrun; each takes 1/N of every batch)")
    t.add_argument("--check-replicas", type=int, default=0, metavar="K",
                   help="data-parallel: every K steps verify the processes' models are identical (0: never)")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    d = add("datasets", help="list datasets and where they were found")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_datasets)

    r = add("runs", help="list runs, show one, delete some",
            description="lowrank runs [list]: every run; runs show ID: one run (config, epochs, results); "
                        "runs rm ID [ID ...]: delete runs (their rows, and their folders when these hold only "
                        "lowrank's files); runs prune --status STATUS: delete every run of that status. A run "
                        "a live process is training is never deleted.")
    r.add_argument("action", nargs="?", choices=("list", "show", "rm", "prune"), default="list")
    r.add_argument("run_ids", nargs="*", type=int, metavar="ID", help="run ids (show: one; rm: one or more)")
    r.add_argument("--json", action="store_true", help="list/show: print JSON")
    r.add_argument("--status", choices=PRUNE_STATUSES, default=None, help="prune: the status of the runs to delete")
    r.add_argument("--dry-run", action="store_true", help="rm/prune: list what would be deleted, delete nothing")
    r.add_argument("--yes", action="store_true", help="prune: confirm `--status finished`")
    r.set_defaults(func=cmd_runs)

    i = add("inspect", help="show the layers of a checkpoint, or what a conversion of a --model would do")
    i.add_argument("checkpoint", nargs="?", default=None, help="a run folder or checkpoint file (default: build "
                                                              "the model the flags describe)")
    i.add_argument("--json", action="store_true")
    _add_config_flags(i)
    i.set_defaults(func=cmd_inspect)

    c = add("compare", help="train every method of a config file and write the comparison report")
    c.add_argument("--config", default=None, help="experiment TOML file (default: configs/compare-default.toml)")
    c.add_argument("--out", default=None, help="report folder (default: report/<config name>)")
    c.add_argument("--runs-dir", default="runs", help="folder for run folders (default: runs)")
    c.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    c.add_argument("--dataset", default=None, help="replace every run's dataset (e.g. stopped-flow:PATH, PATH "
                                                   "relative to the working folder)")
    c.set_defaults(func=cmd_compare)

    sf = add("stopped-flow", help="stopped-flow kinetics data: write a generated data set")
    sf_sub = sf.add_subparsers(dest="sf_command", required=True, parser_class=_Parser)
    g = sf_sub.add_parser("generate", help="write experiment folders of .bka traces and .xlsx sheets")
    g.add_argument("out", help="folder to write (new or empty)")
    g.add_argument("--force", action="store_true", help="write into a non-empty OUT (same-named files replaced)")
    from .kinetics.generate import GeneratorConfig
    _add_fields(g, GeneratorConfig, "gen", set(), {"start_sheet": ("xlsx", "csv")})
    g.set_defaults(func=cmd_stopped_flow_generate)

    rp = add("report", help="rebuild the comparison report from the database for any runs")
    rp.add_argument("run_ids", nargs="*", type=int, metavar="RUN_ID", help="runs to include (default: by --query)")
    rp.add_argument("--query", default=None,
                    help="filter: key=value[,key=value], keys method, dataset, status, sweep, name or a "
                         "config path (optim.lr, method.adaptive); value alternatives with | "
                         "(default: every finished run)")
    rp.add_argument("--out", default=None, help="report folder (default: report/custom)")
    rp.add_argument("--title", default="lowrank comparison", help="report heading")
    rp.set_defaults(func=cmd_report)

    ft = add("finetune", help="fine-tune a pretrained dense checkpoint on another dataset: LoRA ranks, full, scratch")
    ft.add_argument("checkpoint", help="pretrained dense model: a run folder or its checkpoint.pt")
    ft.add_argument("--runs-dir", default="runs", help="folder for run folders (default: runs)")
    ft.add_argument("--out", default=None, help="report folder (default: report/<group>)")
    ft.add_argument("--json", action="store_true", help="print machine-readable results")
    from .finetune import FinetuneConfig
    _add_fields(ft.add_argument_group("finetune"), FinetuneConfig, "finetune", {"checkpoint"}, {})
    ft.set_defaults(func=cmd_finetune)

    sw = add("sweep", help="run a test matrix (resumable, parallel) and write its summary report")
    sw.add_argument("matrix", help="matrix TOML file (see configs/sweep-small.toml)")
    sw.add_argument("--workers", type=int, default=1, help="parallel processes (default: 1)")
    sw.add_argument("--out", default=None, help="report folder (default: report/sweep-<name>)")
    sw.add_argument("--runs-dir", default="runs", help="folder for run folders (default: runs)")
    sw.add_argument("--dry-run", action="store_true", help="list the grid points and what would be done")
    sw.add_argument("--shard", default=None, metavar="I/N",
                    help="run only share I of N of the grid (1 <= I <= N; by sorted point keys), e.g. into "
                         "its own --db; `lowrank merge` combines the databases")
    sw.set_defaults(func=cmd_sweep)

    mg = add("merge", help="combine results databases (e.g. a sweep's shards) into a new one, every run once")
    mg.add_argument("out", help="the database to write (must not exist)")
    mg.add_argument("inputs", nargs="+", metavar="IN", help="databases to read (never changed)")
    mg.set_defaults(func=cmd_merge)

    cp = add("compress", help="truncate a trained model to each rank (or energy), measure, retrain, choose k, save")
    cp.add_argument("checkpoint", help="the trained run: its folder or checkpoint.pt")
    cp.add_argument("--out", required=True, help="results folder (new or empty): points/<k>/, chosen/, compress.json")
    cp.add_argument("--energies", type=_float_list, default=None, metavar="E,E,...",
                    help="energy thresholds in (0, 1] to sweep instead of --ranks (per-layer ranks)")
    cp.add_argument("--json", action="store_true", help="print machine-readable results")
    from .compress import RETRAIN_METHODS, CompressConfig
    from .compress.truncate import ENERGY_SCOPES

    _add_fields(cp.add_argument_group("compress"), CompressConfig, "compress", {"checkpoint", "out", "energies"},
                {"retrain_method": RETRAIN_METHODS, "energy_scope": ENERGY_SCOPES})
    cp.set_defaults(func=cmd_compress)

    ex = add("export", help="write a saved (compressed) model as ONNX, checked in onnxruntime against PyTorch")
    ex.add_argument("model", help="a folder written by lowrank.save (e.g. a compress job's out/chosen) or a run folder")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write (must not exist)")
    ex.add_argument("--tolerance", type=float, default=1e-5,
                    help="largest max abs difference to PyTorch accepted, times max(1, largest output); above it "
                         "nothing is written (default: 1e-5)")
    ex.add_argument("--trust-factory", action="store_true",
                    help="rebuild a model whose spec names a package.module:factory (imports and calls it)")
    ex.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()   # imports the methods, plugins included
        ns = parser.parse_args(argv)
        ns.argv = list(sys.argv[1:] if argv is None else argv)
        if ns.db is None:
            from .store import default_db_path
            ns.db = str(default_db_path())
        return int(ns.func(ns) or 0)
    except LowRankError as e:
        print(f"lowrank: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever it quotes
        return EXIT_USAGE
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
