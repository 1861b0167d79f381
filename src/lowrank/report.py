"""The comparison report of a set of stored runs: results table, curves, confusion
matrices, rank evolution, accuracy against parameters, and optional sections.

Everything is read back from the results database (:class:`~lowrank.store.Store`),
so a report can be rebuilt at any time for any set of runs (``lowrank report``).
Optional sections are built by functions registered with :func:`register_section`;
each returns ``None`` when its data is absent and the section is then left out.
Two are built in:

- *accuracy against k* (post-training SVD compression): drawn from the ``lowrank compress``
  jobs of the runs (the database's ``compressions`` and ``compression_points`` tables):
  test accuracy against ``k`` before and after retraining, latency at batch 1 and
  throughput against ``k`` in PyTorch and onnxruntime, and a table per job; also from any
  run whose summary holds ``"compression": [{"k": int, "test_acc": float,
  "retrained_acc": float | None}, ...]``;
- *LoRA rank curves*: for the rows of ``lowrank finetune`` (summary key ``finetune``),
  accuracy, trainable parameters, time and memory against the LoRA rank with full
  fine-tuning and scratch as references; otherwise test accuracy against the adapter
  rank, when the runs contain LoRA runs of at least two ranks on the same dataset;
- *accuracy and time against k*: fixed-rank runs of one method at two or more ranks, with the
  dense runs of the same data as reference lines (:mod:`lowrank.rank_sweep_report`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plots
from .document import Document, Image, ReportFiles, Section, Table, write_document
from .errors import ConfigError, LowRankError
from .experiment import config_paths
from .store import Store

__all__ = ["RunData", "load_runs", "select_runs", "parse_query", "build_report", "write_report",
           "register_section", "SectionBuilder", "run_label", "results_table"]

SectionBuilder = Callable[[list["RunData"]], "Section | None"]

_STORE_COLUMNS = ("method", "dataset", "status", "sweep", "sweep_key", "name")


@dataclass
class RunData:
    """One stored run with its epoch and rank rows."""

    id: int
    label: str
    status: str
    method: str
    dataset: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    epochs: list[dict[str, Any]]
    ranks: list[dict[str, Any]]
    sweep: str | None = None
    sweep_key: str | None = None
    compressions: list[dict[str, Any]] = field(default_factory=list)
    """Its ``lowrank compress`` jobs (:meth:`~lowrank.store.Store.compressions`), each with its ``points``."""


# -- selecting runs -------------------------------------------------------------------------------

def run_label(config: dict[str, Any]) -> str:
    """A short human label of a run: its name, else method and the options that tell it apart."""
    if config.get("name"):
        return str(config["name"])
    from .registry import get_method, method_names

    m = config["method"]
    method = m["method"]
    if method in method_names() and get_method(method).label is not None:
        return get_method(method).label(config)
    return f"{method} r{m['rank']}" if m.get("rank") else method


def load_runs(store: Store, ids: Sequence[int]) -> list[RunData]:
    """The runs ``ids`` (in that order); an unknown id is an error naming it."""
    rows = {r["id"]: r for r in store.runs(ids=list(ids))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise LowRankError(f"no run {', '.join(map(str, missing))} in {store.path}; `lowrank runs` lists the runs")
    return _with_labels([_run_data(store, rows[i]) for i in ids])


def parse_query(text: str | None) -> dict[str, str]:
    """``"method=dlrt,dataset=mnist"`` as a dict; keys are run columns or dotted config paths.

    A value may list alternatives separated by ``|`` (``method=dlrt|vanilla``).
    """
    if not text:
        return {}
    out: dict[str, str] = {}
    known = set(_STORE_COLUMNS) | config_paths()
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"query term {part!r} is not key=value (e.g. method=dlrt,dataset=mnist)")
        if key not in known:
            raise ConfigError(f"unknown query key {key!r}; use one of {', '.join(_STORE_COLUMNS)} "
                              f"or a config path such as optim.lr or method.adaptive")
        out[key] = value.strip()
    return out


def select_runs(store: Store, ids: Sequence[int] | None = None, query: dict[str, str] | None = None) -> list[RunData]:
    """Runs by id and/or query; with neither, every finished run."""
    query = dict(query or {})
    if ids:
        runs = load_runs(store, ids)
    else:
        if not query:
            query = {"status": "finished"}
        direct = {k: v for k, v in query.items() if k in ("method", "dataset", "status", "sweep") and "|" not in v}
        runs = _with_labels([_run_data(store, r) for r in store.runs(**direct)])
    return [r for r in runs if all(_matches(r, k, v) for k, v in query.items())]


def _matches(run: RunData, key: str, wanted: str) -> bool:
    if key in _STORE_COLUMNS:
        value: Any = {"method": run.method, "dataset": run.dataset, "status": run.status, "sweep": run.sweep,
                      "sweep_key": run.sweep_key, "name": run.config.get("name")}[key]
    else:
        value = run.config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return any(_same(value, alt.strip()) for alt in wanted.split("|"))


def _same(value: Any, text: str) -> bool:
    if value is None:
        return text.lower() in ("none", "null", "")
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, list):
        return text.replace(" ", "") in (",".join(map(str, value)), "-".join(map(str, value)))
    return str(value) == text


def _run_data(store: Store, row: dict[str, Any]) -> RunData:
    return RunData(id=row["id"], label=run_label(row["config"]), status=row["status"], method=row["method"],
                   dataset=row["dataset"], config=row["config"], summary=row["summary"],
                   epochs=store.epochs(row["id"]), ranks=store.ranks(row["id"]),
                   sweep=row.get("sweep"), sweep_key=row.get("sweep_key"),
                   compressions=[c for c in store.compressions(row["id"]) if c["status"] == "finished"])


def _with_labels(runs: list[RunData]) -> list[RunData]:
    """Make labels unique by appending the run id where two runs share one."""
    count: dict[str, int] = defaultdict(int)
    for r in runs:
        count[r.label] += 1
    for r in runs:
        if count[r.label] > 1:
            r.label = f"{r.label} #{r.id}"
    return runs


# -- formatting -------------------------------------------------------------------------------------

def _pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None, fmt: str = "{:.4f}") -> str:
    return "–" if v is None else fmt.format(v)


def _secs(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f} s" if v < 100 else f"{v:.0f} s"


def _mib(v: float | None) -> str:
    return "–" if v is None else f"{v / 2**20:.1f} MiB"


def _count(v: float | None) -> str:
    if v is None:
        return "–"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:.0f}"


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if d is None or not isinstance(d, dict):
            return None
        d = d.get(k)  # type: ignore[assignment]
    return d


def _acct(s: dict[str, Any], name: str) -> Any:
    """A figure of the summary's accounting dict, flat (``inference_count``) or nested
    (``{"inference": {"count": ...}}``)."""
    acct = s.get("accounting") or {}
    if name in acct:
        return acct[name]
    head, _, rest = name.partition("_")
    return acct[head].get(rest) if isinstance(acct.get(head), dict) else None


def _hidden(s: dict[str, Any]) -> tuple[float | None, float | None]:
    """(ratio, count) of hidden-layer weights kept."""
    h = s.get("hidden_weights")
    if isinstance(h, dict):
        return h.get("ratio"), h.get("count")
    return _acct(s, "hidden_ratio"), _acct(s, "hidden_count")


def results_table(runs: Sequence[RunData]) -> Table:
    """One row per run: the figures of the report's headline table."""
    regression = any((r.summary or {}).get("test_mae") is not None for r in runs)
    classes = any((r.summary or {}).get("test_acc") is not None for r in runs)
    scores = (["test accuracy"] if classes or not regression else []) + (
        ["test MAE", "test RMSE", "test R^2"] if regression else [])
    cols = ["run", "method", "status", "epochs", *scores, "test loss", "hidden weights kept",
            "parameters", "FLOPs/sample", "epoch time", "total time", "peak memory"]
    rows = []
    for r in runs:
        s = r.summary or {}
        ratio, hcount = _hidden(s)
        score = ([_pct(s.get("test_acc"))] if "test accuracy" in scores else []) + (
            [_num(s.get("test_mae")), _num(s.get("test_rmse")), _num(s.get("test_r2"))] if regression else [])
        rows.append([
            r.label, r.method, r.status, str(s.get("epochs", len(r.epochs))), *score, _num(s.get("test_loss")),
            "–" if ratio is None else f"{100 * ratio:.1f}% ({_count(hcount)})",
            _count(_acct(s, "inference_count")), _count(_acct(s, "flops_per_sample")),
            _secs(s.get("epoch_time")), _secs(s.get("train_time")), _mib(s.get("peak_mem")),
        ])
    return Table(cols, rows, numeric=set(range(3, len(cols))))


# -- sections -----------------------------------------------------------------------------------------

_BUILDERS: list[SectionBuilder] = []


def register_section(builder: SectionBuilder) -> SectionBuilder:
    """Add an optional section (appended after the standard ones); usable as a decorator."""
    _BUILDERS.append(builder)
    return builder


def _results_section(runs: list[RunData]) -> Section:
    notes = []
    for r in runs:
        notes += [str(n) for n in (r.summary or {}).get("notes", [])]
        if r.status != "finished":
            notes.append(f"{r.label} (run {r.id}) is {r.status}: its figures are those of the epochs it completed.")
    return Section(
        "Results",
        paragraphs=["Test accuracy (regression: MAE, RMSE and R^2, in the target's units) and loss after the "
                    "last epoch (after any end-of-training step such as "
                    "energy pruning). Hidden weights kept: weights of every layer but the output layer, "
                    "relative to the dense network. Parameters: weights needed at inference. FLOPs: "
                    "multiply-adds of the linear layers per sample. Epoch time: mean wall time of a "
                    "training epoch (without evaluation); total time: the sum over epochs. Peak memory: "
                    "growth of the process' resident memory during training (CPU) or peak allocated "
                    "memory (CUDA)."],
        table=results_table(runs), notes=notes)


def _curves_section(runs: list[RunData]) -> Section | None:
    data = [(r.label, _columns(r.epochs)) for r in runs if r.epochs]
    if not data:
        return None
    images = [Image("loss_curves", plots.to_png(plots.curves(
        data, keys=[("train_loss", "train (running mean over the epoch)"), ("test_loss", "test")],
        ylabel=_loss_name(runs), title="Loss per epoch")),
        alt="train and test loss per epoch for every run")]
    if any(v is not None for _, cols in data for v in cols["test_acc"]):
        pct = [(label, {**cols, "train_acc": _scale(cols["train_acc"]), "test_acc": _scale(cols["test_acc"])})
               for label, cols in data]
        images.append(Image("accuracy_curves", plots.to_png(plots.curves(
            pct, keys=[("train_acc", "train (after the epoch)"), ("test_acc", "test")], ylabel="accuracy (%)",
            title="Accuracy per epoch")),
            alt="train and test accuracy per epoch for every run"))
    return Section("Loss and accuracy curves", images=images,
                   paragraphs=["Train loss is the running mean over each epoch's steps; train accuracy is "
                               "measured after the epoch on up to 10,000 training samples."])


def _confusion_section(runs: list[RunData]) -> Section | None:
    mats = [(r.label, r.summary["confusion"]) for r in runs if r.summary and r.summary.get("confusion")]
    if not mats:
        return None
    return Section("Confusion matrices", images=[Image(
        "confusion", plots.to_png(plots.confusion_grid(mats)), alt="confusion matrix of every run",
        caption="Row-normalized: each row is a true class, each cell the % of it predicted as the column.")])


def _scatter_section(runs: list[RunData]) -> Section | None:
    panels = [(r.label, r.summary["scatter"]["true"], r.summary["scatter"]["predicted"])
              for r in runs if r.summary and isinstance(r.summary.get("scatter"), dict)]
    if not panels:
        return None
    return Section("Predicted against true", images=[Image(
        "predicted_vs_true", plots.to_png(plots.predicted_vs_true(panels)),
        alt="predicted against true target of every test sample, one panel per run",
        caption="Test set (up to the first 5,000 samples); the dashed line is a perfect prediction.")])


def _rank_section(runs: list[RunData]) -> Section | None:
    panels = []
    for r in runs:
        by_layer: dict[str, list[tuple[int, int]]] = defaultdict(list)
        start = _get(r.config, "method", "rank")
        for row in r.ranks:
            if start and not by_layer[row["layer"]]:
                by_layer[row["layer"]].append((0, int(start)))
            by_layer[row["layer"]].append((row["epoch"] + 1, row["rank"]))
        varies = any(len({rk for e, rk in pts if e > 0}) > 1 for pts in by_layer.values())
        if by_layer and (_get(r.config, "method", "adaptive") or varies):
            panels.append((r.label, [plots.Series(layer, [e for e, _ in pts], [k for _, k in pts])
                                     for layer, pts in sorted(by_layer.items())]))
    if not panels:
        return None
    return Section("Rank evolution", images=[Image(
        "rank_evolution", plots.to_png(plots.rank_evolution(panels)),
        alt="rank of each layer per epoch for the rank-adaptive runs",
        caption="From the database's ranks table: one line per low-rank layer.")])


def _pareto_section(runs: list[RunData]) -> Section | None:
    # classification: accuracy (%), higher is better; regression: MAE (log scale), lower is better
    by_acc = any((r.summary or {}).get("test_acc") is not None for r in runs)
    key, scale, name = ("test_acc", 100.0, "test accuracy (%)") if by_acc else ("test_mae", 1.0,
                                                                              "test MAE (log scale)")
    what = "Accuracy" if by_acc else "MAE"
    style = {} if by_acc else {"higher_is_better": False, "log_y": True}
    pts_params, pts_flops = [], []
    for r in runs:
        s = r.summary or {}
        acc = s.get(key)
        if acc is None:
            continue
        params, flops = _acct(s, "inference_count"), _acct(s, "flops_per_sample")
        if params:
            pts_params.append((r.label, float(params), scale * acc))
        if flops:
            pts_flops.append((r.label, float(flops), scale * acc))
    if len(pts_params) < 2:
        return None
    images = [Image("pareto_params", plots.to_png(plots.pareto(
        pts_params, xlabel="parameters at inference (log scale)", ylabel=name,
        title=f"{what} against parameters", **style)), alt=f"{name} against number of parameters")]
    if len(pts_flops) >= 2:
        images.append(Image("pareto_flops", plots.to_png(plots.pareto(
            pts_flops, xlabel="FLOPs per sample (log scale)", ylabel=name,
            title=f"{what} against FLOPs", **style)), alt=f"{name} against FLOPs per sample"))
    front = plots.pareto_front([(x, y) for _, x, y in pts_params], higher_is_better=by_acc)
    on_front = [label for label, x, y in pts_params if (x, y) in front]
    better = "more accurate" if by_acc else "of lower MAE"
    return Section(f"{what} against parameters (Pareto view)", images=images,
                   notes=[f"On the front (no other run is both smaller and {better}): {', '.join(on_front)}."])


@register_section
def compression_section(runs: list[RunData]) -> Section | None:
    """Post-training SVD compression against the kept rank k: accuracy before / after retraining,
    latency and throughput (from the runs' ``lowrank compress`` jobs, or the summary key ``compression``)."""
    acc, latency, throughput, tables = [], [], [], []
    for r in runs:
        curve = (r.summary or {}).get("compression")
        if curve:
            ks = [c["k"] for c in curve]
            acc.append(plots.Series(f"{r.label}: truncated", ks, _scale([c.get("test_acc") for c in curve])))
            if any(c.get("retrained_acc") is not None for c in curve):
                acc.append(plots.Series(f"{r.label}: retrained", ks,
                                        _scale([c.get("retrained_acc") for c in curve]), {"linestyle": "--"}))
        for job in r.compressions:
            pts = [p for p in job["points"] if p.get("k") is not None]
            name = f"{r.label}, {r.config.get('model', 'model')} (job {job['id']})"
            tables.append(_compression_table(name, job))
            if not pts:
                continue
            ks = [p["k"] for p in pts]
            acc.append(plots.Series(f"{name}: truncated", ks, _scale([p.get("acc_before") for p in pts])))
            if any(p.get("acc_after") is not None for p in pts):
                acc.append(plots.Series(f"{name}: retrained ({job['config'].get('retrain_method')}, "
                                        f"{job['config'].get('retrain_epochs')} ep)", ks,
                                        _scale([p.get("acc_after") for p in pts]), {"linestyle": "--"}))
            for engine, key in (("PyTorch", "torch"), ("onnxruntime", "ort")):
                lat = [None if p.get(f"{key}_latency_b1") is None else 1e6 * p[f"{key}_latency_b1"] for p in pts]
                if any(v is not None for v in lat):
                    latency.append(plots.Series(f"{name}: {engine}", ks, lat))
                    throughput.append(plots.Series(f"{name}: {engine}", ks, [p.get(f"{key}_throughput") for p in pts]))
    if not acc and not tables:
        return None
    images = []
    if acc:
        images.append(Image("compression_k", plots.to_png(plots.xy_lines(
            acc, xlabel="rank k kept in every compressed layer", ylabel="test accuracy (%)",
            title="Accuracy against k", log_x=True)), alt="test accuracy against the truncation rank k"))
    if latency:
        for name, series, ylabel, title, alt in (
                ("compression_latency", latency, "latency at batch 1 (us, log scale)", "Latency against k",
                 "inference latency at batch 1 against k, PyTorch and onnxruntime"),
                ("compression_throughput", throughput, "samples per second (log scale)", "Throughput against k",
                 "inference throughput at a large batch against k, PyTorch and onnxruntime")):
            fig = plots.xy_lines(series, xlabel="rank k", ylabel=ylabel, title=title, log_x=True)
            fig.axes[0].set_yscale("log")
            images.append(Image(name, plots.to_png(fig), alt=alt))
    sec = Section("Accuracy against k (post-training SVD)", images=images,
                  paragraphs=["Each compressed layer is kept as two factors W1 (n x k) W2 (k x m) from the truncated "
                              "SVD (a convolution: a kh x kw convolution to k channels, then a 1 x 1 one). Latency: "
                              "median seconds of one call at batch 1; throughput: samples per second at the job's "
                              "batch; measured on a machine that may be shared, so compare within one job."])
    if tables:
        sec.table = tables[0]   # one table per section: the other jobs' accuracies as a paragraph each
        for job_table in tables[1:]:
            sec.paragraphs.append(_table_text(job_table))
    for r in runs:
        for job in r.compressions:
            chosen = job.get("chosen") or {}
            if chosen:
                sec.notes.append(f"{r.label} (job {job['id']}): chosen {chosen.get('label')}: {chosen.get('rule')}; "
                                 f"knee of accuracy against latency: {chosen.get('knee')}.")
    return sec


def _compression_table(name: str, job: dict[str, Any]) -> Table:
    cols = [name, "acc before", "acc after", "params", "bytes", "FLOPs/sample", "torch b1", "torch samples/s",
            "ort b1", "ort samples/s", "retrain time"]

    def us(v: float | None) -> str:
        return "–" if v is None else f"{1e6 * v:.0f} us"

    rows = [[p["label"], _pct(p.get("acc_before")), _pct(p.get("acc_after")), _count(p.get("params")),
             _count(p.get("bytes")), _count(p.get("flops")), us(p.get("torch_latency_b1")),
             _count(p.get("torch_throughput")), us(p.get("ort_latency_b1")), _count(p.get("ort_throughput")),
             _secs(p.get("retrain_time"))] for p in job["points"]]
    return Table(cols, rows, numeric=set(range(1, len(cols))))


def _table_text(t: Table) -> str:
    return t.columns[0] + ": " + "; ".join(f"{row[0]} {row[2] if row[2] != '–' else row[1]}" for row in t.rows)


@register_section
def lora_section(runs: list[RunData]) -> Section | None:
    """LoRA rank curves: the fine-tuning groups of ``lowrank finetune`` (accuracy, trainable parameters,
    time and memory against rank, full fine-tuning and scratch as references; see
    :mod:`lowrank.finetune_report`), else test accuracy against the rank of plain LoRA runs."""
    from .finetune_report import lora_section as build

    return build(runs)


@register_section
def rank_sweep_section(runs: list[RunData]) -> Section | None:
    """Accuracy and epoch time against ``k`` for fixed-rank runs of one method at several ranks, dense
    as the reference (see :mod:`lowrank.rank_sweep_report`)."""
    from .rank_sweep_report import rank_sweep_section as build

    return build(runs)


def _loss_name(runs: list[RunData]) -> str:
    names = {str(r.config.get("loss", "cross_entropy")) for r in runs}
    return "loss (" + ", ".join(sorted(n.replace("_", "-") for n in names)) + ")"


def _columns(epochs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")
    return {k: [e.get(k) for e in epochs] for k in keys}


def _scale(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else 100 * v for v in values]


def build_report(runs: list[RunData], *, title: str, subtitle: str = "",
                 notes: Sequence[str] = ()) -> Document:
    """The report document of ``runs`` (sections without data are left out)."""
    if not runs:
        raise LowRankError("no runs to report on: check the run ids or the query (`lowrank runs` lists runs)")
    sections = [_results_section(runs)]
    sections[0].notes.extend(notes)
    for build in (_curves_section, _confusion_section, _scatter_section, _rank_section, _pareto_section,
                  *_BUILDERS):
        sec = build(runs)
        if sec is not None:
            sections.append(sec)
    return Document(title, subtitle, sections)


def write_report(runs: list[RunData], out_dir: str | Path, *, title: str, subtitle: str = "",
                 notes: Sequence[str] = ()) -> ReportFiles:
    """Build the report of ``runs`` and write ``report.html``, ``report.md`` and ``figures/``."""
    return write_document(build_report(runs, title=title, subtitle=subtitle, notes=notes), out_dir)
