"""Stopped-flow data sets (thesis §3.3.2, §4.6): a root of experiment folders -> regression on ``Rate``.

Written ``--dataset stopped-flow:PATH``. Layout::

    PATH/<experiment>/*.bka              traces (:mod:`lowrank.data.bka`)
    PATH/<experiment>/<sheet>.xlsx|.csv  two sheets keyed by Filename (:mod:`lowrank.data.kinetics_sheet`):
                                         one with column X_start (start times, ms), one with Rate (s^-1)

or ``PATH/train/<experiment>/...`` and ``PATH/test/<experiment>/...`` for a split
given by the folders (the thesis kept 42 experiments for training, 3 for testing).
An experiment folder is any sub-folder holding ``.bka`` files; its sheets are told
apart by their columns (the one with ``X_start``, the one with ``Rate``; a sheet
holding both serves as both). Two start-time sheets (say an ``.xlsx`` and a CSV
export), a sheet with neither column, and a trace missing from a sheet are errors
naming the files.

Features of one trace (the thesis' pre-processing): rows with ``time_ms < X_start``
are dropped; of the rest every ``trace_stride``-th row is kept (down-sampling, 1 =
all); the (t, v) pairs are interleaved ``t0, v0, t1, v1, ...`` and padded with
zeros or truncated to ``trace_pairs`` pairs (the thesis: 14,000 pairs = 28,000
inputs). The label is the fit sheet's ``Rate``. ``trace_scaling = "amplitude"``
first rescales each trace's volts to ``(v - end) / (start - end)``
(:func:`amplitude_scaled`), removing the offset, amplitude and sign that vary
between traces and carry nothing about ``k``; the thesis used raw volts
(``"none"``, the default).

Split: by experiment folder, never by file. Without ``train/`` and ``test/``,
``round(test_fraction * folders)`` folders (at least one, seeded) are the test
set. Decoded arrays are cached like the other file datasets (keyed by every
trace's and sheet's path, size and modification time, and by the two options).
A folder of more than :data:`PROGRESS_MIN_FILES` traces shows a tqdm progress bar
while decoding when stderr is a terminal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, CorruptFileError
from .bka import read_bka
from .cache import cached_arrays
from .config import TRACE_SCALINGS, DataConfig
from .files import dataset_path, searched_paths
from .kinetics_sheet import FILENAME_COLUMN, SHEET_SUFFIXES, Sheet, read_sheet, trace_key
from .labels import encode_targets
from .prepare import Prepared

__all__ = ["PREFIX", "START_COLUMN", "RATE_COLUMN", "TraceEntry", "ExperimentFolder", "StoppedFlowLayout",
           "is_stopped_flow", "stopped_flow_root", "scan_stopped_flow", "split_experiments", "trace_features",
           "load_stopped_flow", "PROGRESS_MIN_FILES", "amplitude_scaled", "TRACE_SCALINGS"]

PREFIX = "stopped-flow:"
"""``DataConfig.dataset`` values starting with this name a stopped-flow root folder."""
START_COLUMN = "X_start"
RATE_COLUMN = "Rate"
PROGRESS_MIN_FILES = 200
AMPLITUDE_HEAD = 5
"""Rows averaged for a trace's starting value (``trace_scaling = "amplitude"``)."""
AMPLITUDE_TAIL = 200
"""Rows averaged for a trace's final value (``trace_scaling = "amplitude"``)."""
_SPLIT_STREAM = 0x5F10


@dataclass
class TraceEntry:
    """One ``.bka`` file with its sheet values."""

    path: Path
    x_start: float
    """ms; rows before it are the mixing artefact."""
    rate: float
    """The label, s^-1."""


@dataclass
class ExperimentFolder:
    name: str
    """Folder name (``train/`` or ``test/`` prefixed for a given split)."""
    folder: Path
    traces: list[TraceEntry]
    sheets: list[Path]
    given_test: bool | None = None
    """True / False under ``test/`` / ``train/``; None without a given split."""


@dataclass
class StoppedFlowLayout:
    root: Path
    experiments: list[ExperimentFolder] = field(default_factory=list)

    @property
    def given_split(self) -> bool:
        return any(e.given_test is not None for e in self.experiments)

    def sources(self) -> list[Path]:
        """Every file read: traces and sheets."""
        return [t.path for e in self.experiments for t in e.traces] + [s for e in self.experiments for s in e.sheets]


def is_stopped_flow(dataset: str) -> bool:
    """True when ``dataset`` is written ``stopped-flow:PATH``."""
    return isinstance(dataset, str) and dataset.startswith(PREFIX)


def stopped_flow_root(cfg: DataConfig) -> Path:
    """The existing root folder of ``cfg.dataset`` (``stopped-flow:PATH``), else a ConfigError naming where it
    was looked for."""
    rel = cfg.dataset[len(PREFIX):].strip()
    if not rel:
        raise ConfigError(f"dataset {cfg.dataset!r}: give the folder after the colon, e.g. stopped-flow:data/sf")
    p = dataset_path(rel, cfg.data_dir)
    if p is None:
        looked = ", ".join(str(c) for c in searched_paths(rel, cfg.data_dir))
        raise ConfigError(f"stopped-flow folder {rel!r} not found (looked for {looked}); write one with "
                          f"`lowrank stopped-flow generate {rel}`")
    if not p.is_dir():
        raise ConfigError(f"{p}: a stopped-flow dataset is a folder of experiment folders, not a file")
    return p


def _experiment_dirs(parent: Path) -> list[Path]:
    return sorted((d for d in parent.iterdir() if d.is_dir() and any(d.glob("*.bka"))), key=lambda d: d.name)


def _role_sheets(folder: Path) -> tuple[Sheet, Sheet, list[Path]]:
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SHEET_SUFFIXES)
                   and not p.name.startswith((".", "~$")))
    sheets = [read_sheet(p) for p in paths]
    for s in sheets:
        if START_COLUMN not in s.header and RATE_COLUMN not in s.header:
            raise CorruptFileError(f"{s.path}: the header has neither {START_COLUMN!r} (start-time sheet) nor "
                                   f"{RATE_COLUMN!r} (fitted-parameter sheet); its columns: "
                                   f"{', '.join(repr(h) for h in s.header)}")
        s.column(FILENAME_COLUMN)
    found = []
    for col, what in ((START_COLUMN, "start times"), (RATE_COLUMN, "fitted rates")):
        hits = [s for s in sheets if col in s.header]
        if not hits:
            listed = ", ".join(p.name for p in paths) or "no .xlsx or .csv file"
            raise CorruptFileError(f"{folder}: no sheet with a column {col!r} ({what}); found {listed}; expected "
                                   f"two sheets keyed by {FILENAME_COLUMN!r}, one with {START_COLUMN!r} and one "
                                   f"with {RATE_COLUMN!r}")
        if len(hits) > 1:
            raise CorruptFileError(f"{folder}: {len(hits)} sheets have a column {col!r} ({what}): "
                                   f"{', '.join(s.path.name for s in hits)}; keep one of them (say the .xlsx or "
                                   f"the CSV export, not both)")
        found.append(hits[0])
    return found[0], found[1], paths


def _experiment(folder: Path, name: str, given_test: bool | None) -> ExperimentFolder:
    bkas = sorted((p for p in folder.glob("*.bka") if p.is_file()), key=lambda p: p.name)
    start_sheet, rate_sheet, paths = _role_sheets(folder)
    starts, rates = start_sheet.values(START_COLUMN), rate_sheet.values(RATE_COLUMN)
    traces = []
    for b in bkas:
        key = trace_key(b.name)
        for table, sheet in ((starts, start_sheet), (rates, rate_sheet)):
            if key not in table:
                raise CorruptFileError(f"{b}: not listed in {sheet.path} (no row with {FILENAME_COLUMN} "
                                       f"{b.name!r}); add its row or remove the file")
        traces.append(TraceEntry(b, starts[key][0], rates[key][0]))
    return ExperimentFolder(name, folder, traces, paths, given_test)


def scan_stopped_flow(root: str | os.PathLike[str]) -> StoppedFlowLayout:
    """The experiment folders under ``root`` with every trace's start time and rate (sheets read, traces not)."""
    root = Path(root)
    layout = StoppedFlowLayout(root)
    train, test = root / "train", root / "test"
    if train.is_dir() and test.is_dir() and _experiment_dirs(train) and _experiment_dirs(test):
        for part, is_test in ((train, False), (test, True)):
            layout.experiments += [_experiment(d, f"{part.name}/{d.name}", is_test) for d in _experiment_dirs(part)]
    else:
        layout.experiments = [_experiment(d, d.name, None) for d in _experiment_dirs(root)]
    if not layout.experiments:
        raise ConfigError(f"{root}: no experiment folders (sub-folders holding .bka files); expected "
                          f"{root}/<experiment>/<trace>.bka with two sheets per folder, or train/ and test/ "
                          f"folders of those")
    return layout


def split_experiments(layout: StoppedFlowLayout, test_fraction: float, seed: int) -> np.ndarray:
    """bool (E,): which experiment folders are the test set (given by ``test/``, else a seeded draw of
    ``round(test_fraction * E)`` folders, at least one)."""
    if layout.given_split:
        return np.array([bool(e.given_test) for e in layout.experiments])
    n = len(layout.experiments)
    n_test = max(1, int(round(test_fraction * n)))
    if n_test >= n:
        raise ConfigError(f"{layout.root}: {n} experiment folder(s); splitting by folder needs at least 2 "
                          f"(test_fraction {test_fraction} leaves {n - n_test} for training)")
    chosen = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)[:n_test]
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


def amplitude_scaled(v: np.ndarray, head: int = AMPLITUDE_HEAD, tail: int = AMPLITUDE_TAIL) -> np.ndarray:
    """``(v - end) / (start - end)`` for one trace's volts (R,): ``start`` the mean of the first ``head``
    rows, ``end`` of the last ``tail`` rows, so a decay ``b + c exp(-k t)`` becomes about ``exp(-k t)`` whatever
    its offset, amplitude and sign (a flat trace, ``start == end``, is only shifted)."""
    start = float(v[:head].mean())
    end = float(v[-tail:].mean())
    span = start - end
    return (v - end) / span if span != 0 else v - end


def trace_features(time_ms: np.ndarray, volts: np.ndarray, x_start: float, pairs: int, stride: int = 1,
                   scaling: str = "none") -> np.ndarray:
    """float32 (2 * pairs,): rows at or after ``x_start``, every ``stride``-th, interleaved t0, v0, t1, v1, ...,
    zero-padded or truncated to ``pairs`` pairs. ``scaling`` ``"amplitude"``: the volts of the kept rows (before
    down-sampling) go through :func:`amplitude_scaled` first. Raises ValueError when no row is left."""
    keep = time_ms >= x_start                                      # (R,)
    t, v = time_ms[keep], volts[keep]                              # (R',)
    if len(t) == 0:
        raise ValueError("no rows at or after X_start")
    if scaling == "amplitude":
        v = amplitude_scaled(v)
    t, v = t[::stride], v[::stride]                                # (R'',)
    n = min(pairs, len(t))
    out = np.zeros(2 * pairs, dtype=np.float32)
    out[0:2 * n:2] = t[:n]
    out[1:2 * n:2] = v[:n]
    return out


def _decode(layout: StoppedFlowLayout, pairs: int, stride: int, scaling: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entries = [(i, t) for i, e in enumerate(layout.experiments) for t in e.traces]
    x = np.zeros((len(entries), 2 * pairs), dtype=np.float32)
    y = np.zeros(len(entries), dtype=np.float64)
    group = np.zeros(len(entries), dtype=np.int64)
    it = entries
    bar = None
    if len(entries) > PROGRESS_MIN_FILES:
        from tqdm import tqdm

        bar = tqdm(entries, desc="reading .bka traces", unit="file", leave=False, disable=None)
        it = bar
    try:
        for r, (i, tr) in enumerate(it):
            trace = read_bka(tr.path)
            try:
                x[r] = trace_features(trace.time_ms, trace.volts, tr.x_start, pairs, stride, scaling)
            except ValueError:
                raise CorruptFileError(f"{tr.path}: no rows at or after its X_start {tr.x_start} ms (the trace "
                                       f"ends at {trace.time_ms.max():g} ms); check its start-time sheet row")
            y[r], group[r] = tr.rate, i
    finally:
        if bar is not None:
            bar.close()
    return x, y, group


def load_stopped_flow(cfg: DataConfig, seed: int = 0, *, use_cache: bool = True) -> Prepared:
    """The stopped-flow data set ``cfg.dataset`` names, split by experiment folder (see the module docstring)."""
    if cfg.task == "classification":
        raise ConfigError(f"{cfg.dataset}: the stopped-flow label Rate is a real number; use task regression "
                          f"(or auto)")
    if cfg.val_fraction > 0:
        raise ConfigError(f"{cfg.dataset}: val_fraction would hold out single traces, but stopped-flow data is "
                          f"split by experiment folder only; leave val_fraction at 0")
    root = stopped_flow_root(cfg)
    layout = scan_stopped_flow(root)
    pairs, stride, scaling = cfg.trace_pairs, cfg.trace_stride, cfg.trace_scaling
    n = sum(len(e.traces) for e in layout.experiments)

    def check(a: tuple[np.ndarray, ...]) -> bool:
        x, y, g = a
        return (x.dtype == np.float32 and x.shape == (n, 2 * pairs) and y.shape == (n,) and g.shape == (n,)
                and np.array_equal(y, [t.rate for e in layout.experiments for t in e.traces]))

    x, y, group = cached_arrays(layout.sources(), f"stopped-flow-v1\0{pairs}\0{stride}\0{scaling}", 3,
                                lambda: _decode(layout, pairs, stride, scaling), use_cache=use_cache, check=check)
    test_exp = split_experiments(layout, cfg.test_fraction, seed)
    is_test = test_exp[group]
    where = str(root)
    t = encode_targets(y[~is_test], y[is_test], task="regression", where=where)
    return Prepared(x[~is_test], t.y_train, x[is_test], t.y_test, name=cfg.dataset, num_classes=0,
                    sample_shape=(2 * pairs,), sources=[where])
