"""A compression job: truncate a trained model to every point of a sweep, measure, retrain, choose, save.

:func:`run_compress` does, in this order:

1. every check that needs no writing: the config, the checkpoint (rebuilt in this process),
   the output folder (new or empty), the layer selection and every point's per-layer ranks,
   onnxruntime when ONNX is asked for, the data;
2. the dense model (point 0, label ``dense``) and then each point (``k=8``, ``e=0.99``):
   test accuracy of the truncated model, then, with ``retrain_epochs``, after retraining
   (:mod:`.retrain`); the kept model (retrained if any) is saved with :func:`lowrank.save` in
   ``out/points/<label>/`` (its bytes on disk: both files), exported to
   ``out/points/<label>/model.onnx`` (checked against PyTorch on 64 test samples: the max abs
   difference is recorded, ``onnx_ok`` False above 1e-5 x max(1, max |output|), the sweep goes on); its inference parameters and
   FLOPs per sample (:func:`lowrank.accounting.count`), and its latency at batch 1 and
   throughput at ``batch`` in PyTorch and onnxruntime (:mod:`.measure`) are measured;
   each point is a row of the results database as soon as it is measured
   (``compression_points``, under a ``compressions`` job linked to the checkpoint's run);
3. the rank rule (:func:`.rank_rule.choose_rank`, tolerance to the dense accuracy; the knee of
   accuracy against PyTorch batch-1 latency is reported too); the chosen model reloaded
   from its folder is saved as ``out/chosen/`` (factorized) and with ``merge`` as
   ``out/chosen-merged/`` (plain dense layers); ``out/chosen.onnx``; ``out/compress.json``
   holds the table and the choice.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..accounting import count
from ..convert import merge
from ..data import ArrayDataset, Splits, load_dataset
from ..data.registry import is_text_dataset
from ..errors import ConfigError
from ..losses import resolve_loss
from ..saving import load, save
from ..store import Store
from ..train import evaluate
from .config import CompressConfig, check_out_dir
from .measure import measure_ort, measure_torch
from .onnx_export import export_onnx, require_onnx
from .rank_rule import Choice, accuracy_key, choose_rank, knee
from .retrain import retrain
from .source import Source, load_source, model_spec
from .truncate import energy_ranks, selected_layers, truncate, uniform_ranks

__all__ = ["CompressResult", "run_compress", "plan_points", "PointFn"]

PointFn = Callable[[dict[str, Any]], None]


@dataclass
class CompressResult:
    """What a finished job returns."""

    compression_id: int
    run_id: int | None
    """The source run's id in the database (None: its checkpoint's run is not in this database)."""
    out: Path
    dense: dict[str, Any]
    """The dense model's row."""
    points: list[dict[str, Any]]
    """One row per point, in sweep order."""
    choice: Choice
    knee_label: str | None
    chosen_dir: Path
    merged_dir: Path | None
    layers: list[str]


def plan_points(model: nn.Module, cfg: CompressConfig, layers: list[str]) -> list[dict[str, Any]]:
    """``[{"label", "k", "energy", "ranks": {layer: rank}}]`` of every point, all ranks validated."""
    out = []
    for kind, value in cfg.points:
        if kind == "k":
            ranks = uniform_ranks(model, layers, int(value))
            out.append({"label": f"k={value}", "k": int(value), "energy": None, "ranks": ranks})
        else:
            ranks = energy_ranks(model, layers, float(value), cfg.energy_scope)
            out.append({"label": f"e={value:g}", "k": None, "energy": float(value), "ranks": ranks})
    return out


def _slice(data: Splits, cfg: CompressConfig) -> Splits:
    """The run's data, its training / test split cut to ``train_size`` / ``test_size`` (normalization unchanged)."""
    def cut(ds: ArrayDataset, n: int | None) -> ArrayDataset:
        return ds if n is None or n >= len(ds) else ArrayDataset(ds.x[:n], ds.y[:n])

    return dataclasses.replace(data, train=cut(data.train, cfg.train_size), test=cut(data.test, cfg.test_size))


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.suffix != ".onnx")


def _folder_name(label: str) -> str:
    return label.replace("=", "")


def run_compress(cfg: CompressConfig, *, store: Store, on_point: PointFn | None = None) -> CompressResult:
    """Run the job ``cfg`` (module docstring); rows go to ``store``, files to ``cfg.out``."""
    source = load_source(cfg.checkpoint)
    out = check_out_dir(cfg.out)
    if cfg.onnx:
        require_onnx()
    dense = source.model
    layers = selected_layers(dense, target=cfg.target, exclude=cfg.exclude, include_output=cfg.include_output)
    plans = plan_points(dense, cfg, layers)
    run_cfg = source.config
    if is_text_dataset(run_cfg.data.dataset):
        raise ConfigError(f"{source.path}: compress times the model on random inputs, which are no token ids; "
                          f"runs on text datasets ({run_cfg.data.dataset}) are not supported by compress yet")
    data = _slice(load_dataset(run_cfg.data, seed=run_cfg.seed), cfg)
    if not data.num_classes:
        raise ConfigError(f"{source.path}: compress chooses k by test accuracy, so it needs a classification run "
                          f"(this one regresses)")
    loss = resolve_loss(run_cfg.loss, data.num_classes)

    run_id = store.run_of_dir(source.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = store.create_compression(run_id, str(source.path.resolve()), cfg.to_dict(), str(out.resolve()))
    spec = model_spec(run_cfg, source.sample_shape, source.num_outputs)
    try:
        measure = _Measurer(cfg, source, data, loss, out, spec)
        dense_row = measure.point(dense, {"label": "dense", "k": None, "energy": None, "ranks": {}}, None, None)
        dense_row["dense_acc"] = dense_row["acc_before"]
        store.log_compression_point(job, 0, dense_row)
        if on_point:
            on_point(dense_row)
        rows = []
        for i, plan in enumerate(plans, start=1):
            truncated = truncate(dense, plan["ranks"])
            acc_before = evaluate(truncated, data.test, loss)["acc"]
            after, seconds = None, None
            if cfg.retrain_epochs:
                after, seconds = retrain(dense, truncated, plan["ranks"], data, run_cfg, epochs=cfg.retrain_epochs,
                                         method=cfg.retrain_method, lr=cfg.retrain_lr)
            row = measure.point(after if after is not None else truncated, plan, acc_before, seconds,
                                dense=dense_row)
            store.log_compression_point(job, i, row)
            rows.append(row)
            if on_point:
                on_point(row)
        choice = choose_rank(rows, cfg.tolerance, reference=dense_row["acc_before"], accuracy=accuracy_key(rows))
        knee_i = knee(rows, cost="torch_latency_b1", accuracy=accuracy_key(rows))
        knee_label = rows[knee_i]["label"] if knee_i is not None else None
        chosen_label = choice.row["label"]
        chosen = load(out / "points" / _folder_name(chosen_label), model=copy.deepcopy(dense))
        chosen_dir = save(chosen, out / "chosen", model_spec=spec)
        merged_dir = save(merge(chosen), out / "chosen-merged", model_spec=spec) if cfg.merge else None
        onnx_file = out / "points" / _folder_name(chosen_label) / "model.onnx"
        if onnx_file.exists():
            shutil.copyfile(onnx_file, out / "chosen.onnx")
        summary = {"label": chosen_label, "k": choice.row.get("k"), "energy": choice.row.get("energy"),
                   "ranks": choice.row.get("ranks"), "rule": choice.rule,
                   "within_tolerance": choice.within_tolerance, "tolerance": cfg.tolerance,
                   "accuracy": choice.accuracy, "dense_acc": dense_row["acc_before"],
                   "accuracy_key": accuracy_key(rows), "knee": knee_label,
                   "knee_rule": "farthest above the chord of the Pareto front of accuracy against PyTorch batch-1 "
                                "latency (both scaled to [0, 1])"}
        (out / "compress.json").write_text(json.dumps({"source": str(source.path), "run_id": run_id,
                                                       "layers": layers, "dense": dense_row, "points": rows,
                                                       "chosen": summary, "config": cfg.to_dict()},
                                                      indent=1, default=float))
        store.finish_compression(job, "finished", summary)
    except BaseException:
        store.finish_compression(job, "failed")
        raise
    return CompressResult(job, run_id, out, dense_row, rows, choice, knee_label, chosen_dir, merged_dir, layers)


class _Measurer:
    """Saves, exports and measures one model (a point's row)."""

    def __init__(self, cfg: CompressConfig, source: Source, data: Splits, loss: str, out: Path,
                 spec: dict[str, Any]):
        self.cfg, self.source, self.data, self.loss, self.out, self.spec = cfg, source, data, loss, out, spec
        self.sample = torch.zeros((1, *source.input_shape))

    def point(self, model: nn.Module, plan: dict[str, Any], acc_before: float | None, retrain_time: float | None,
              dense: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg, shape = self.cfg, self.source.input_shape
        model.eval()
        acc = evaluate(model, self.data.test, self.loss)["acc"]
        folder = save(model, self.out / "points" / _folder_name(plan["label"]), model_spec=self.spec)
        acct = count(model, sample=self.sample)
        row: dict[str, Any] = {**plan, "params": acct.inference.count, "bytes": _folder_bytes(folder),
                               "flops": acct.flops_per_sample,
                               "acc_before": acc if acc_before is None else acc_before,
                               "acc_after": acc if retrain_time is not None else None, "retrain_time": retrain_time}
        speed = measure_torch(model, shape, batch=cfg.batch, min_run_time=cfg.min_run_time)
        row.update(torch_latency_b1=speed.latency_b1, torch_throughput=speed.throughput, batch=cfg.batch)
        if cfg.onnx:
            exported = export_onnx(model, folder / "model.onnx", shape, check_input=self.data.test.x[:64],
                                   strict=False)
            ort = measure_ort(exported.path, shape, batch=cfg.batch, min_run_time=cfg.min_run_time)
            row.update(onnx_max_diff=exported.max_abs_diff, onnx_output_scale=exported.output_scale,
                       onnx_ok=exported.within_tolerance,
                       ort_latency_b1=ort.latency_b1, ort_throughput=ort.throughput)
        if dense is not None:
            row["params_ratio"] = row["params"] / dense["params"]
            row["torch_speedup"] = row["torch_throughput"] / dense["torch_throughput"]
            if cfg.onnx:
                row["ort_speedup"] = row["ort_throughput"] / dense["ort_throughput"]
        return row
