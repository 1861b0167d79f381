"""Results in SQLite: one row per run, one per epoch, one per layer rank per epoch; and the
``lowrank compress`` jobs of a run (``compressions``), one row per measured point (``compression_points``).

Every write is a transaction (``with self.conn``), every query parameterized.
WAL mode and a busy timeout let parallel sweep processes share one database.
Every SQLite failure (a damaged or foreign file, a read-only file or folder, a lock held
too long) is a :class:`~lowrank.errors.StoreError` naming the database and the fix.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError, StoreError

__all__ = ["Store", "default_db_path", "EPOCH_COLUMNS", "POINT_COLUMNS"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT,
    created     REAL NOT NULL,
    finished    REAL,
    status      TEXT NOT NULL,
    method      TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    run_dir     TEXT NOT NULL,
    config      TEXT NOT NULL,
    sweep       TEXT,
    sweep_key   TEXT,
    summary     TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch         INTEGER NOT NULL,
    train_loss    REAL,
    train_acc     REAL,
    val_loss      REAL,
    val_acc       REAL,
    test_loss     REAL,
    test_acc      REAL,
    epoch_time    REAL,
    samples_per_s REAL,
    peak_mem      REAL,
    extra         TEXT,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS ranks (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch    INTEGER NOT NULL,
    layer    TEXT NOT NULL,
    rank     INTEGER NOT NULL,
    min_rank INTEGER,
    max_rank INTEGER,
    PRIMARY KEY (run_id, epoch, layer)
);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep, sweep_key);
CREATE TABLE IF NOT EXISTS compressions (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id    INTEGER REFERENCES runs(id) ON DELETE CASCADE,
    source    TEXT NOT NULL,
    created   REAL NOT NULL,
    status    TEXT NOT NULL,
    config    TEXT NOT NULL,
    out_dir   TEXT NOT NULL,
    chosen    TEXT
);
CREATE TABLE IF NOT EXISTS compression_points (
    compression_id      INTEGER NOT NULL REFERENCES compressions(id) ON DELETE CASCADE,
    point               INTEGER NOT NULL,
    label               TEXT NOT NULL,
    k                   INTEGER,
    energy              REAL,
    params              INTEGER,
    bytes               INTEGER,
    flops               INTEGER,
    acc_before          REAL,
    acc_after           REAL,
    retrain_time        REAL,
    torch_latency_b1    REAL,
    torch_throughput    REAL,
    ort_latency_b1      REAL,
    ort_throughput      REAL,
    onnx_max_diff       REAL,
    extra               TEXT,
    PRIMARY KEY (compression_id, point)
);
CREATE INDEX IF NOT EXISTS compressions_run ON compressions(run_id);
"""

EPOCH_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "epoch_time", "samples_per_s", "peak_mem")

#: Columns of a ``compression_points`` row besides its job, index and ``extra`` (``lowrank compress``):
#: ``label`` ("dense", "k=8", "e=0.99"), uniform rank ``k`` or ``energy``, inference ``params``,
#: ``bytes`` of the saved model on disk, ``flops`` per sample, test accuracy before / after
#: retraining, ``retrain_time`` (s), latency at batch 1 (s) and throughput at the large batch
#: (samples/s) in PyTorch and onnxruntime, and the ONNX export's max abs difference to PyTorch.
POINT_COLUMNS = ("label", "k", "energy", "params", "bytes", "flops", "acc_before", "acc_after", "retrain_time",
                 "torch_latency_b1", "torch_throughput", "ort_latency_b1", "ort_throughput", "onnx_max_diff")


def default_db_path() -> Path:
    """``$LOWRANK_DB`` or ``runs/lowrank.db`` under the current directory."""
    return Path(os.environ.get("LOWRANK_DB", "runs/lowrank.db"))


class Store:
    """A results database. Open it once per process; it is cheap."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder of results database {self.path}: {e.strerror}; "
                             f"pass another --db") from None
        if self.path.is_dir():
            raise StoreError(f"results database {self.path} is a folder; pass a file path to --db")
        with self._translated():
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn = _Connection(conn, self._translated)
        conn.row_factory = sqlite3.Row
        self._enable_wal()
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=60000")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """SQLite's exceptions as a :class:`StoreError` naming this database and the fix."""
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(_store_message(self.path, e)) from None
        except UnicodeDecodeError:  # a damaged page under a text column
            raise StoreError(f"results database {self.path} is damaged (a text value is not UTF-8); move it away "
                             f"or pass another --db") from None

    def _enable_wal(self, attempts: int = 100) -> None:
        """Switch to write-ahead logging. SQLite answers "database is locked" at once, without
        waiting for the busy timeout, while another process is creating the same database;
        so retry for a while, then fail with the path named."""
        with self._translated():  # damaged files fail here already (sqlite errors, undecodable text)
            for _ in range(attempts):
                try:
                    self.conn.raw.execute("PRAGMA journal_mode=WAL")
                    return
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e):
                        raise
                time.sleep(0.05)
        raise StoreError(f"results database {self.path} stayed locked by another process; "
                         f"wait for it or pass another --db")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.raw.close()

    # -- writing ---------------------------------------------------------------------------

    def create_run(self, config: dict[str, Any], run_dir: str, *, name: str | None = None,
                   sweep: str | None = None, sweep_key: str | None = None) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO runs (name, created, status, method, dataset, run_dir, config, sweep, sweep_key)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (name, time.time(), config["method"]["method"], config["data"]["dataset"], run_dir,
                 json.dumps(config), sweep, sweep_key))
            return int(cur.lastrowid)

    def set_run_dir(self, run_id: int, run_dir: str) -> None:
        with self.transaction() as c:
            cur = c.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (run_dir, run_id))
        if cur.rowcount == 0:
            raise ConfigError(f"run {run_id} was deleted from {self.path} while it was being started "
                              f"(`lowrank runs rm` or `prune` in another process?)")

    def log_epoch(self, run_id: int, epoch: int, metrics: dict[str, Any], extra: dict[str, Any],
                  ranks: dict[str, dict[str, int]] | None = None) -> None:
        """Store one epoch (replacing a row of the same epoch left by an interrupted attempt)."""
        cols = [metrics.get(k) for k in EPOCH_COLUMNS]
        with self.transaction() as c:
            c.execute(f"INSERT OR REPLACE INTO epochs (run_id, epoch, {', '.join(EPOCH_COLUMNS)}, extra)"
                      f" VALUES (?, ?, {', '.join('?' * len(EPOCH_COLUMNS))}, ?)",
                      (run_id, epoch, *cols, json.dumps(extra, default=float)))
            for layer, r in (ranks or {}).items():
                c.execute("INSERT OR REPLACE INTO ranks (run_id, epoch, layer, rank, min_rank, max_rank)"
                          " VALUES (?, ?, ?, ?, ?, ?)",
                          (run_id, epoch, layer, int(r["rank"]), r.get("min"), r.get("max")))

    def set_status(self, run_id: int, status: str, summary: dict[str, Any] | None = None) -> None:
        with self.transaction() as c:
            if summary is None:
                c.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))
            else:
                c.execute("UPDATE runs SET status = ?, summary = ?, finished = ? WHERE id = ?",
                          (status, json.dumps(summary, default=float), time.time(), run_id))

    def delete_epochs_from(self, run_id: int, epoch: int) -> None:
        """Drop epochs >= ``epoch`` (a resumed run rewrites them)."""
        with self.transaction() as c:
            c.execute("DELETE FROM epochs WHERE run_id = ? AND epoch >= ?", (run_id, epoch))
            c.execute("DELETE FROM ranks WHERE run_id = ? AND epoch >= ?", (run_id, epoch))

    def delete_run(self, run_id: int) -> dict[str, int]:
        """Delete run ``run_id``'s rows from every table in one transaction; the rows deleted per table."""
        with self.transaction() as c:
            c.execute("DELETE FROM compression_points WHERE compression_id IN "
                      "(SELECT id FROM compressions WHERE run_id = ?)", (run_id,))
            counts = {table: c.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,)).rowcount
                      for table in ("ranks", "epochs", "compressions")}
            counts["runs"] = c.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount
        return counts

    def create_compression(self, run_id: int | None, source: str, config: dict[str, Any], out_dir: str) -> int:
        """A new ``lowrank compress`` job of run ``run_id`` (None: its checkpoint's run is not in this database)."""
        with self.transaction() as c:
            cur = c.execute("INSERT INTO compressions (run_id, source, created, status, config, out_dir)"
                            " VALUES (?, ?, ?, 'running', ?, ?)",
                            (run_id, source, time.time(), json.dumps(config, default=str), out_dir))
            return int(cur.lastrowid)

    def log_compression_point(self, compression_id: int, point: int, row: dict[str, Any]) -> None:
        """Store one measured point of a compression job (:data:`POINT_COLUMNS`; other keys go to ``extra``)."""
        extra = {k: v for k, v in row.items() if k not in POINT_COLUMNS}
        with self.transaction() as c:
            c.execute(f"INSERT OR REPLACE INTO compression_points (compression_id, point, {', '.join(POINT_COLUMNS)},"
                      f" extra) VALUES (?, ?, {', '.join('?' * len(POINT_COLUMNS))}, ?)",
                      (compression_id, point, *[row.get(k) for k in POINT_COLUMNS], json.dumps(extra, default=float)))

    def finish_compression(self, compression_id: int, status: str, chosen: dict[str, Any] | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE compressions SET status = ?, chosen = ? WHERE id = ?",
                      (status, json.dumps(chosen, default=float) if chosen is not None else None, compression_id))

    def compressions(self, run_id: int | None = None) -> list[dict[str, Any]]:
        """Compression jobs (of run ``run_id``, or all), oldest first, each with its ``points`` (in order)."""
        sql = "SELECT * FROM compressions" + (" WHERE run_id = ?" if run_id is not None else "") + " ORDER BY id"
        jobs = [dict(r) for r in self.conn.execute(sql, () if run_id is None else (run_id,))]
        for job in jobs:
            job["config"] = json.loads(job["config"])
            job["chosen"] = json.loads(job["chosen"]) if job["chosen"] else None
            points = []
            for r in self.conn.execute("SELECT * FROM compression_points WHERE compression_id = ? ORDER BY point",
                                       (job["id"],)):
                d = dict(r)
                d.update(json.loads(d.pop("extra") or "{}"))
                points.append(d)
            job["points"] = points
        return jobs

    def run_of_dir(self, run_dir: str | os.PathLike) -> int | None:
        """The id of the run whose folder is ``run_dir`` (resolved), or None."""
        row = self.conn.execute("SELECT id FROM runs WHERE run_dir = ? ORDER BY id DESC LIMIT 1",
                                (str(Path(run_dir).resolve()),)).fetchone()
        return int(row["id"]) if row else None

    # -- reading ---------------------------------------------------------------------------

    def run(self, run_id: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run_dict(row) if row else None

    def runs(self, *, status: str | None = None, method: str | None = None, dataset: str | None = None,
             sweep: str | None = None, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        for col, val in (("status", status), ("method", method), ("dataset", dataset), ("sweep", sweep)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if ids:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            args.extend(int(i) for i in ids)
        # epochs_done: counted by SQLite in the same query (no per-run round trip for listings).
        sql = ("SELECT runs.*, (SELECT COUNT(*) FROM epochs WHERE epochs.run_id = runs.id) AS epochs_done"
               " FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id")
        return [_run_dict(r) for r in self.conn.execute(sql, args)]

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
        out = []
        for r in rows:
            d = dict(r)
            d["extra"] = json.loads(d["extra"]) if d["extra"] else {}
            out.append(d)
        return out

    def ranks(self, run_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM ranks WHERE run_id = ? ORDER BY epoch, layer", (run_id,))
        return [dict(r) for r in rows]


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    try:
        d["config"] = json.loads(d["config"])
        d["summary"] = json.loads(d["summary"]) if d["summary"] else None
    except (TypeError, ValueError):
        raise StoreError(f"the row of run {d.get('id')} in the results database is damaged (its config or "
                         f"summary is not JSON); `lowrank runs rm {d.get('id')}` deletes it") from None
    if not isinstance(d["config"], dict) or not isinstance(d["summary"], (dict, type(None))):
        raise StoreError(f"the row of run {d.get('id')} in the results database is damaged (its config is not "
                         f"a table); `lowrank runs rm {d.get('id')}` deletes it")
    return d


class _Connection:
    """A ``sqlite3.Connection`` whose ``execute`` raises :class:`StoreError` (``raw``: the connection)."""

    def __init__(self, raw: sqlite3.Connection, translated: Any):
        self.raw, self._translated = raw, translated

    def execute(self, sql: str, args: Sequence[Any] = ()) -> "_Cursor":
        with self._translated():
            return _Cursor(self.raw.execute(sql, args), self._translated)


class _Cursor:
    """Rows of a query, fetched with SQLite's errors translated (a damaged page shows up while reading)."""

    def __init__(self, cursor: sqlite3.Cursor, translated: Any):
        self.cursor, self._translated = cursor, translated

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self.cursor.lastrowid

    def fetchone(self) -> Any:
        with self._translated():
            return self.cursor.fetchone()

    def fetchall(self) -> list[Any]:
        with self._translated():
            return self.cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _store_message(path: Path, e: sqlite3.Error) -> str:
    """One line: what is wrong with results database ``path`` and what to do."""
    text = str(e) or type(e).__name__
    low = text.lower()
    if "not a database" in low or "malformed" in low or "no such column" in low or "no such table" in low \
            or "file is encrypted" in low:
        return (f"results database {path} is damaged or is not a lowrank database (sqlite: {text}); move it "
                f"away or pass another --db")
    if "readonly" in low or "read-only" in low or "unable to open" in low or "disk i/o" in low \
            or "permission" in low:
        return (f"cannot write results database {path} (sqlite: {text}); make it and its folder writable, "
                f"or pass another --db")
    if "locked" in low or "busy" in low:
        return f"results database {path} stayed locked by another process (sqlite: {text}); wait or pass another --db"
    if "full" in low:
        return f"results database {path}: the disk is full (sqlite: {text}); free space or pass another --db"
    return f"results database {path}: sqlite: {text}; pass another --db"
