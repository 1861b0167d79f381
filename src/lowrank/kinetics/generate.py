"""A generator of stopped-flow data sets in the real layout (thesis §3.3.2; DESIGN.md §3).

``generate(out, GeneratorConfig(experiments=45))`` writes::

    out/
      exp_01/                       one folder per experiment (15-45 traces each)
        <substrate>_<conc>uM_ch1_<rep>.bka   18 metadata lines (the 18th is _DATA), then
                                             15,001 rows time_ms<TAB>volts
        start_times.xlsx            Filename, X_start (ms)           (or start_times.csv)
        fit_parameters.xlsx         Filename, Concentration, Slope, Intercept, Amplitude, Rate
      exp_02/ ...
      truth.csv                     every trace's true a, b, c, k, X_start, noise (one row per file)
      generator.json                the GeneratorConfig that wrote the folder

Each trace follows :func:`~lowrank.kinetics.signal.exponential_signal` for
times after ``X_start`` (``t`` in seconds since ``X_start``), with Gaussian
measurement noise of ``noise`` volts; before ``X_start`` (15-20 ms) a mixing
artefact (a decaying oscillation around the reaction's starting value) replaces
the signal. Per experiment, a substrate is measured at 5-9 concentrations, one
trace per shot, the shots spread over the concentrations; the rate rises
linearly with the concentration, ``k = k0 + slope * conc`` (times a 3% shot-to-shot
scatter), and the experiment's top rate is drawn log-uniformly between 10 s^-1 and
``k_max`` (325 s^-1 by default: the thesis' labels reach about 325, most below 100).
The fit sheet holds the true parameters, so its ``Rate`` is the exact label.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .signal import MS_PER_S, exponential_signal

__all__ = ["GeneratorConfig", "GeneratedTrace", "generate", "START_SHEET", "FIT_SHEET", "TRUTH_FILE",
           "SUBSTRATES"]

START_SHEET = "start_times"
"""File stem of each experiment's start-time sheet (``.xlsx`` or ``.csv``)."""
FIT_SHEET = "fit_parameters"
"""File stem of each experiment's fitted-parameter sheet (``.xlsx``)."""
TRUTH_FILE = "truth.csv"
"""The root file listing every trace's true parameters."""
SUBSTRATES = ("glucose", "cellobiose", "lactose", "xylose", "maltose", "chitobiose")
"""Substrate names written into the metadata and file names."""

_METADATA_LINES = 18


@dataclass
class GeneratorConfig:
    experiments: int = 45
    """Number of experiment folders (the thesis had 45)."""
    min_files: int = 15
    """Fewest .bka traces in one experiment folder."""
    max_files: int = 45
    """Most .bka traces in one experiment folder."""
    rows: int = 15001
    """Data rows per trace (the thesis' instrument wrote 15,001)."""
    dt_ms: float = 0.1
    """Sampling interval in milliseconds (15,001 rows at 0.1 ms: 1.5 s per trace)."""
    k_max: float = 325.0
    """Largest rate constant in s^-1 (the thesis' labels reach about 325)."""
    noise: float = 0.004
    """Standard deviation of the measurement noise, in volts."""
    start_min_ms: float = 15.0
    """Earliest end of the mixing artefact (X_start), in ms."""
    start_max_ms: float = 20.0
    """Latest end of the mixing artefact (X_start), in ms."""
    start_sheet: str = "xlsx"
    """Format of the start-time sheets: xlsx, or csv (as the thesis' instrument exported them)."""
    seed: int = 0
    """Seeds every random draw: the same config writes the same files."""

    def __post_init__(self) -> None:
        for name in ("experiments", "min_files", "max_files", "rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.min_files > self.max_files:
            raise ConfigError(f"min_files ({self.min_files}) must not exceed max_files ({self.max_files})")
        for name in ("dt_ms", "k_max", "start_max_ms"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        if not isinstance(self.noise, (int, float)) or not math.isfinite(self.noise) or self.noise < 0:
            raise ConfigError(f"noise must be a number >= 0 (volts), got {self.noise!r}")
        if not 0 <= self.start_min_ms <= self.start_max_ms:
            raise ConfigError(f"start_min_ms ({self.start_min_ms}) must be in [0, start_max_ms = "
                              f"{self.start_max_ms}]")
        if self.start_max_ms >= (self.rows - 2) * self.dt_ms:
            raise ConfigError(f"start_max_ms {self.start_max_ms} leaves no trace: {self.rows} rows of "
                              f"{self.dt_ms} ms last {(self.rows - 1) * self.dt_ms} ms")
        if self.k_max < 10.0:
            raise ConfigError(f"k_max must be at least 10 s^-1, got {self.k_max}")
        if self.start_sheet not in ("xlsx", "csv"):
            raise ConfigError(f"start_sheet must be xlsx or csv, got {self.start_sheet!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")


@dataclass
class GeneratedTrace:
    """One written trace and its true parameters."""

    experiment: str
    filename: str
    substrate: str
    concentration: float
    """Substrate concentration in µM."""
    x_start: float
    """End of the mixing artefact, ms."""
    a: float
    b: float
    c: float
    k: float


def _digits(v: float) -> float:
    """``v`` to 10 significant digits: a value every sheet format stores and reads back exactly."""
    return float(f"{float(v):.10g}")


def _experiment_traces(cfg: GeneratorConfig, rng: np.random.Generator, e: int) -> list[GeneratedTrace]:
    name = f"exp_{e + 1:02d}"
    substrate = SUBSTRATES[int(rng.integers(len(SUBSTRATES)))]
    n_files = int(rng.integers(cfg.min_files, cfg.max_files + 1))
    n_conc = int(rng.integers(5, 10))
    conc_max = float(rng.uniform(20.0, 200.0))
    concs = conc_max * np.arange(1, n_conc + 1) / n_conc          # (n_conc,) µM
    k_top = math.exp(rng.uniform(math.log(10.0), math.log(cfg.k_max)))
    k0 = float(rng.uniform(0.5, 0.2 * k_top))
    slope = (k_top - k0) / conc_max                                 # s^-1 per µM
    amp = float(rng.uniform(0.1, 0.6)) * (1 if rng.random() < 0.5 else -1)
    b = float(rng.uniform(1.0, 5.0))
    out = []
    for i in range(n_files):
        j = i % n_conc
        rep = i // n_conc + 1
        k = min(cfg.k_max, max(0.5, (k0 + slope * concs[j]) * float(1 + 0.03 * rng.standard_normal())))
        x_start = round(float(rng.uniform(cfg.start_min_ms, cfg.start_max_ms)) / cfg.dt_ms) * cfg.dt_ms
        out.append(GeneratedTrace(
            experiment=name, filename=f"{substrate}_{concs[j]:.1f}uM_ch1_{rep:02d}.bka", substrate=substrate,
            concentration=round(float(concs[j]), 3), x_start=round(x_start, 6),
            a=_digits(0.02 * rng.standard_normal()), b=_digits(b + 0.05 * rng.standard_normal()),
            c=_digits(amp * rng.uniform(0.8, 1.2)), k=_digits(k)))
    return out


def _trace_values(cfg: GeneratorConfig, tr: GeneratedTrace, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    t_ms = np.arange(cfg.rows) * cfg.dt_ms                          # (rows,)
    tau = (t_ms - tr.x_start) / MS_PER_S                            # seconds since X_start
    v = exponential_signal(np.maximum(tau, 0.0), tr.a, tr.b, tr.c, tr.k)
    before = t_ms < tr.x_start
    # mixing artefact: a decaying oscillation and a flow spike, around the starting value b + c
    art_amp, period = float(rng.uniform(0.2, 1.0)), float(rng.uniform(2.0, 5.0))
    ta = t_ms[before]
    v[before] = (tr.b + tr.c + art_amp * np.exp(-ta / 6.0) * np.cos(2 * np.pi * ta / period)
                 + 0.3 * art_amp * np.exp(-((ta - 0.6 * tr.x_start) / 1.5) ** 2))
    v = v + cfg.noise * rng.standard_normal(cfg.rows)
    return t_ms, v


def _bka_text(cfg: GeneratorConfig, tr: GeneratedTrace, t_ms: np.ndarray, v: np.ndarray) -> str:
    meta = [
        "BKA biokine analysis file",
        "Instrument\tstopped-flow (lowrank generator)",
        f"Experiment\t{tr.experiment}",
        f"File\t{tr.filename}",
        f"Substrate\t{tr.substrate}",
        f"Concentration_uM\t{tr.concentration}",
        "Channel\t1",
        "Detection\tfluorescence",
        "Excitation_nm\t295",
        "Emission_filter_nm\t320",
        "Temperature_C\t25.0",
        "Drive_volume_ul\t150",
        "Dead_time_ms\t1.5",
        f"Points\t{cfg.rows}",
        f"Sampling_ms\t{cfg.dt_ms}",
        "X_unit\tms",
        "Y_unit\tV",
        "_DATA",
    ]
    assert len(meta) == _METADATA_LINES
    digits = max(1, -math.floor(math.log10(cfg.dt_ms)) + 1) if cfg.dt_ms < 1 else 1
    rows = map(f"{{:.{digits}f}}\t{{:.6f}}".format, t_ms.tolist(), v.tolist())
    return "\n".join(meta) + "\n" + "\n".join(rows) + "\n"


def _write_xlsx(path: Path, header: list[str], rows: list[list[object]]) -> None:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Sheet1")
    ws.append(header)
    for r in rows:
        ws.append(r)
    wb.save(path)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def generate(out: str | os.PathLike[str], cfg: GeneratorConfig | None = None, *, overwrite: bool = False
             ) -> list[GeneratedTrace]:
    """Write a stopped-flow data set of ``cfg`` into the folder ``out`` (see the module docstring).

    ``out`` may not exist yet or be empty; a folder holding anything is refused
    (:class:`~lowrank.errors.ConfigError`) unless ``overwrite``, which writes into
    it, replacing files of the same names and leaving other files alone.
    Returns every trace written, in the order written.
    """
    cfg = cfg or GeneratorConfig()
    cfg.__post_init__()
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file; give a folder to write the stopped-flow data set into")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise ConfigError(f"{root} is not empty; give a new or empty folder, or --force to write into it "
                          f"(files of the same names are replaced)")
    if importlib.util.find_spec("openpyxl") is None:
        raise ConfigError("writing .xlsx sheets needs openpyxl: pip install 'lowrank-train[kinetics]'")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    written: list[GeneratedTrace] = []
    for e in range(cfg.experiments):
        traces = _experiment_traces(cfg, rng, e)
        folder = root / traces[0].experiment
        folder.mkdir(exist_ok=True)
        for tr in traces:
            t_ms, v = _trace_values(cfg, tr, rng)
            (folder / tr.filename).write_text(_bka_text(cfg, tr, t_ms, v), encoding="utf-8")
        start_rows: list[list[object]] = [[tr.filename, tr.x_start] for tr in traces]
        if cfg.start_sheet == "csv":
            _write_csv(folder / f"{START_SHEET}.csv", ["Filename", "X_start"], start_rows)
        else:
            _write_xlsx(folder / f"{START_SHEET}.xlsx", ["Filename", "X_start"], start_rows)
        _write_xlsx(folder / f"{FIT_SHEET}.xlsx", ["Filename", "Concentration", "Slope", "Intercept", "Amplitude",
                                                   "Rate"],
                    [[tr.filename, tr.concentration, tr.a, tr.b, tr.c, tr.k] for tr in traces])
        written += traces
    fields = [f.name for f in dataclasses.fields(GeneratedTrace)]
    _write_csv(root / TRUTH_FILE, fields + ["noise"],
               [[getattr(tr, f) for f in fields] + [cfg.noise] for tr in written])
    (root / "generator.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return written
