"""Inference speed of a model in PyTorch and in onnxruntime: latency at batch 1, throughput at a large batch.

Each figure is the median time of one call over blocks of repeated calls, by
:class:`torch.utils.benchmark.Timer` (``blocked_autorange``: warm-up, then as many blocks as fit
in ``min_run_time`` seconds), PyTorch under ``torch.inference_mode`` in eval mode, onnxruntime's
CPU provider with as many intra-op threads as PyTorch uses. Inputs are random normal tensors of
one sample's shape. On a shared machine these times are inflated by other processes: compare
figures measured in one run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.benchmark import Timer

__all__ = ["Speed", "torch_seconds", "ort_session", "ort_seconds", "measure_torch", "measure_ort"]


@dataclass(frozen=True)
class Speed:
    """``latency_b1``: seconds per call at batch 1; ``throughput``: samples per second at ``batch``."""

    latency_b1: float
    throughput: float
    batch: int


def _inputs(sample_shape: Sequence[int], batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *sample_shape), generator=g)


def torch_seconds(model: nn.Module, x: torch.Tensor, min_run_time: float = 0.2) -> float:
    """Median seconds of one ``model(x)`` call (eval mode, inference mode; the mode is restored)."""
    was = model.training
    model.eval()

    def call() -> None:
        with torch.inference_mode():
            model(x)

    try:
        call()
        return float(Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
                     .blocked_autorange(min_run_time=min_run_time).median)
    finally:
        model.train(was)


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session of the ONNX file ``path`` with ``threads`` intra-op threads
    (default: PyTorch's thread count) and one inter-op thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_seconds(session, x: torch.Tensor, min_run_time: float = 0.2) -> float:
    """Median seconds of one ``session.run`` on ``x`` (the session's single input)."""
    feed = {session.get_inputs()[0].name: x.numpy()}

    def call() -> None:
        session.run(None, feed)

    call()
    return float(Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
                 .blocked_autorange(min_run_time=min_run_time).median)


def measure_torch(model: nn.Module, sample_shape: Sequence[int], *, batch: int = 1024,
                  min_run_time: float = 0.2) -> Speed:
    """PyTorch latency at batch 1 and throughput at ``batch``."""
    one = torch_seconds(model, _inputs(sample_shape, 1), min_run_time)
    many = torch_seconds(model, _inputs(sample_shape, batch), min_run_time)
    return Speed(one, batch / many, batch)


def measure_ort(path: str | os.PathLike, sample_shape: Sequence[int], *, batch: int = 1024,
                min_run_time: float = 0.2) -> Speed:
    """onnxruntime latency at batch 1 and throughput at ``batch`` of the ONNX file ``path``."""
    session = ort_session(path)
    one = ort_seconds(session, _inputs(sample_shape, 1), min_run_time)
    many = ort_seconds(session, _inputs(sample_shape, batch), min_run_time)
    return Speed(one, batch / many, batch)
