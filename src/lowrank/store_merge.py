"""``lowrank merge OUT.db IN.db ...``: results databases combined, every run once.

Identity of a run (what "the same run" means when two inputs hold it):

- a sweep's run: its grid point, ``(sweep name, sweep key)``. Of several rows of one point
  (in one database or across shards) the one the sweep itself would take is kept: a
  finished or diverged one (the newest of them), else the newest with a run folder (so a
  sweep over the merged database resumes it), else the newest;
- any other run: ``(sha256 of its config JSON, creation time, run folder)``: the same row
  found in two inputs (a database merged twice, a copy) is kept once; two runs of one
  config trained separately are two runs.

Every input is validated first (it opens read-only, SQLite's ``quick_check`` passes, the
tables and columns are lowrank's, every run's config is JSON); a damaged input is a
one-line :class:`~lowrank.errors.StoreError` and nothing is written. ``OUT`` must not
exist; it is written to a temporary file beside it and renamed into place when complete.
Runs get new ids in ``OUT`` in creation order; their epochs, ranks and compression jobs
follow them. A row's run folder is kept as recorded (an absolute path): copy the shards'
run folders to the same paths on the machine that reads ``OUT`` (the result counts the
folders missing here).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError
from .store import Store
from .sweep import TERMINAL

__all__ = ["merge_databases", "MergeResult", "run_identity"]

_TABLES = ("runs", "epochs", "ranks", "compressions", "compression_points")


@dataclass
class MergeResult:
    """What :func:`merge_databases` did."""

    out: Path
    runs: int
    """Runs written to ``OUT``."""
    duplicates: int
    """Rows left out because a run of the same identity was kept."""
    per_input: dict[str, int]
    """Input path -> rows of runs it held."""
    missing_folders: int
    """Kept runs whose recorded run folder does not exist on this machine."""


def run_identity(row: dict[str, Any]) -> tuple[str, ...]:
    """The identity of a run row (see the module docstring)."""
    if row["sweep"] is not None and row["sweep_key"] is not None:
        return ("sweep", row["sweep"], row["sweep_key"])
    digest = hashlib.sha256(json.dumps(json.loads(row["config"]), sort_keys=True).encode()).hexdigest()
    return ("run", digest, repr(float(row["created"])), row["run_dir"] or "")


def _read(path: Path, expected: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the lowrank database at ``path`` (``expected``: the columns of
    each table, :func:`_columns`), read-only; damage is a StoreError."""
    if not path.is_file():
        raise StoreError(f"merge input {path} is not a file; give existing results databases")
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"merge input {path} cannot be opened (sqlite: {e}); nothing was written") from None
    conn.row_factory = sqlite3.Row
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"merge input {path} is damaged (sqlite quick_check: {check}); nothing was written")
        tables: dict[str, list[dict[str, Any]]] = {}
        for table in _TABLES:
            have = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            if not have and table.startswith("compression"):
                tables[table] = []           # written before lowrank compress existed
                continue
            missing = [c for c in expected[table] if c not in have]
            if missing:
                raise StoreError(f"merge input {path} is not a lowrank results database (table {table} "
                                 f"lacks {', '.join(missing)}); nothing was written")
            cols = ", ".join(expected[table])
            tables[table] = [dict(r) for r in conn.execute(f"SELECT {cols} FROM {table}")]
        for r in tables["runs"]:
            try:
                config = json.loads(r["config"])
                if not isinstance(config, dict) or not isinstance(r["created"], (int, float)):
                    raise ValueError
            except (TypeError, ValueError):
                raise StoreError(f"merge input {path}: the row of run {r['id']} is damaged (its config is not a "
                                 f"JSON table); `lowrank runs rm {r['id']} --db {path}` deletes it; nothing "
                                 f"was written") from None
    except sqlite3.Error as e:
        raise StoreError(f"merge input {path} is damaged or is not a lowrank database (sqlite: {e}); "
                         f"nothing was written") from None
    except UnicodeDecodeError:
        raise StoreError(f"merge input {path} is damaged (a text value is not UTF-8); nothing was written") from None
    finally:
        conn.close()
    return tables


def _columns() -> dict[str, list[str]]:
    """The columns of each table of a fresh lowrank database."""
    conn = sqlite3.connect(":memory:")
    try:
        from .store import SCHEMA

        conn.executescript(SCHEMA)
        return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in _TABLES}
    finally:
        conn.close()


def _preference(row: dict[str, Any]) -> tuple[Any, ...]:
    """Larger is kept: a terminal status, then a run folder, then the newest."""
    return (row["status"] in TERMINAL, bool(row["run_dir"]), float(row["created"]), float(row["finished"] or 0))


def merge_databases(out: str | os.PathLike, inputs: list[str | os.PathLike]) -> MergeResult:
    """Write ``out``, a new results database holding every run of ``inputs`` once (see the module docstring)."""
    out = Path(out)
    if not inputs:
        raise StoreError("lowrank merge needs at least one input database: lowrank merge OUT.db IN.db ...")
    if out.exists():
        raise StoreError(f"merge output {out} exists; give a new file (a merge never changes a database)")
    paths = [Path(p) for p in inputs]
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            raise StoreError(f"merge input {p} is given twice")
        seen.add(p.resolve())
    cols = _columns()
    data = [(p, _read(p, cols)) for p in paths]             # every input validated before anything is written
    kept: dict[tuple[str, ...], tuple[int, dict[str, Any]]] = {}
    total = 0
    for i, (_, tables) in enumerate(data):
        for row in tables["runs"]:
            total += 1
            ident = run_identity(row)
            if ident not in kept or _preference(row) > _preference(kept[ident][1]):
                kept[ident] = (i, row)
    order = sorted(kept.values(), key=lambda ir: (float(ir[1]["created"]), ir[0], ir[1]["id"]))
    # Per input: the rows of each child table under the id of the row they belong to.
    children = [{(table, key): _grouped(tables[table], key) for table, key in _CHILDREN} for _, tables in data]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        store = Store(tmp)
        try:
            with store.transaction() as c:
                for i, row in order:
                    of = children[i]
                    new = _insert(c, "runs", {k: v for k, v in row.items() if k != "id"}, cols)
                    for table in ("epochs", "ranks"):
                        for r in of[table, "run_id"].get(row["id"], []):
                            _insert(c, table, {**r, "run_id": new}, cols)
                    for comp in of["compressions", "run_id"].get(row["id"], []):
                        _copy_compression(c, comp, new, of, cols)
                done: set[tuple[Any, ...]] = set()      # compression jobs of no stored run: once each
                for of in children:
                    for comp in of["compressions", "run_id"].get(None, []):
                        ident = (comp["created"], comp["out_dir"], comp["source"])
                        if ident not in done:
                            done.add(ident)
                            _copy_compression(c, comp, None, of, cols)
        finally:
            store.close()
        for suffix in ("-wal", "-shm"):
            if Path(f"{tmp}{suffix}").exists():
                raise StoreError(f"merge output {tmp} was not closed cleanly; nothing was written to {out}")
        os.replace(tmp, out)
    except BaseException:
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            if p.exists():
                p.unlink()
        raise
    missing = sum(1 for _, r in order if r["run_dir"] and not Path(r["run_dir"]).is_dir())
    return MergeResult(out, len(order), total - len(order), {str(p): len(t["runs"]) for p, t in data}, missing)


#: Child tables and the column naming their parent row.
_CHILDREN = (("epochs", "run_id"), ("ranks", "run_id"), ("compressions", "run_id"),
             ("compression_points", "compression_id"))


def _grouped(rows: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def _copy_compression(c: Any, comp: dict[str, Any], run_id: int | None,
                      of: dict[tuple[str, str], dict[Any, list[dict[str, Any]]]], cols: dict[str, list[str]]) -> None:
    """Insert compression job ``comp`` (under ``run_id``) and its points."""
    cid = _insert(c, "compressions", {**{k: v for k, v in comp.items() if k != "id"}, "run_id": run_id}, cols)
    for pt in of["compression_points", "compression_id"].get(comp["id"], []):
        _insert(c, "compression_points", {**pt, "compression_id": cid}, cols)


def _insert(c: Any, table: str, row: dict[str, Any], cols: dict[str, list[str]]) -> int:
    names = [k for k in cols[table] if k in row]
    cur = c.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [row[k] for k in names])
    return int(cur.lastrowid or 0)
