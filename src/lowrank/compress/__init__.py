"""Compress a trained model: post-training SVD truncation swept over ranks or energies, retraining,
a stated rule for the rank, measurements (parameters, bytes, FLOPs, PyTorch and onnxruntime speed),
ONNX export.

``lowrank compress`` runs :func:`run_compress`; ``lowrank export`` runs :func:`export_onnx`. The
rank rules (:func:`choose_rank`, :func:`knee`) are plain functions over a table of rows, for any sweep.
"""

from .config import RETRAIN_METHODS, CompressConfig
from .measure import Speed, measure_ort, measure_torch
from .onnx_export import OnnxExport, export_onnx, initializer_shapes
from .rank_rule import Choice, choose_rank, knee
from .source import Source, load_source, model_spec
from .sweep import CompressResult, plan_points, run_compress
from .truncate import energy_ranks, global_energy_ranks, selected_layers, to_two_factor, truncate, uniform_ranks

__all__ = ["CompressConfig", "RETRAIN_METHODS", "Speed", "measure_torch", "measure_ort", "OnnxExport", "export_onnx",
           "initializer_shapes", "Choice", "choose_rank", "knee", "Source", "load_source", "model_spec",
           "CompressResult", "run_compress", "plan_points", "energy_ranks", "global_energy_ranks", "selected_layers",
           "to_two_factor", "truncate", "uniform_ranks"]
