"""ONNX export of a (compressed) model, checked in onnxruntime against PyTorch.

Exporter: PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17). The torch.export-based default of this torch version needs the ``onnxscript``
package and traces through ``torch.export``; the TorchScript tracer needs neither, exports
every layer of this library, and its deprecation warnings are silenced here.

Low-rank layers are first put in two-factor form (:func:`~.truncate.to_two_factor`), so
every factorized layer is exported as two small products, ``W2 (k, m)`` then ``W1 (n, k)``
(a convolution: a ``kh x kw`` convolution to ``k`` channels, then a ``1 x 1`` one); the
dense ``n x m`` weight is never formed, in the graph or in its initializers. The batch
dimension is dynamic. The file is written only when onnxruntime's outputs on a check batch
match PyTorch's: ``max |ort - torch| <= tolerance * max(1, max |torch|)``, i.e. ``tolerance``
absolute for outputs within +-1 and relative to the largest output beyond (float32 logits
of 50 differ by a few units in the last place, 4e-6 each, between any two correct BLAS
orders; PyTorch's own float32 result is 1e-5 from float64 there). Otherwise an
:class:`~lowrank.errors.ExportError` says by how much, and nothing is left behind.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ExportError
from .truncate import to_two_factor

__all__ = ["OnnxExport", "export_onnx", "initializer_shapes", "check_onnx", "require_onnx", "TOLERANCE", "OPSET"]

#: Largest max-abs difference between onnxruntime and PyTorch outputs accepted by default.
TOLERANCE = 1e-5
OPSET = 17


@dataclass(frozen=True)
class OnnxExport:
    """An exported file and how closely onnxruntime reproduces PyTorch on the check batch."""

    path: Path
    max_abs_diff: float
    output_scale: float
    """``max |torch output|`` on the check batch: the allowed difference is ``tolerance * max(1, output_scale)``."""
    check_batch: int
    initializers: dict[str, list[int]]
    within_tolerance: bool
    """``max_abs_diff <= tolerance * max(1, output_scale)`` (False only for a non-strict export, which keeps
    the file anyway)."""


def require_onnx() -> None:
    """A ConfigError naming the extra to install unless onnx and onnxruntime import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the packages onnx and onnxruntime ({e.name} is missing): "
                          f"pip install 'lowrank-train[onnx]' (or pip install onnx onnxruntime)") from None


def initializer_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """``{name: shape}`` of every initializer (stored weight) of the ONNX file ``path``."""
    import onnx

    graph = onnx.load(str(path)).graph
    return {i.name: list(i.dims) for i in graph.initializer}


def check_onnx(path: str | os.PathLike, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """``(max |ort - torch|, max |torch|)``: onnxruntime's outputs for ``x`` against ``model(x)``."""
    from .measure import ort_session

    session = ort_session(path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    was = model.training
    model.eval()
    with torch.inference_mode():
        want = model(x)
    model.train(was)
    return float((torch.from_numpy(got) - want).abs().max()), float(want.abs().max())


def export_onnx(model: nn.Module, path: str | os.PathLike, sample_shape: Sequence[int], *,
                check_input: torch.Tensor | None = None, tolerance: float = TOLERANCE,
                strict: bool = True) -> OnnxExport:
    """Write ``model`` (a copy in two-factor form, eval mode, CPU float32) to the ONNX file ``path``
    for inputs ``(batch, *sample_shape)``; check it in onnxruntime on ``check_input`` (default: 16
    random normal samples) and keep the file only when the max abs difference is at most
    ``tolerance * max(1, max |output|)`` (module docstring; ``strict=False``: keep it anyway and
    say so in ``within_tolerance``)."""
    require_onnx()
    path = Path(path)
    net = to_two_factor(copy.deepcopy(model)).to("cpu", torch.float32).eval()
    x = check_input if check_input is not None else torch.randn((16, *sample_shape),
                                                                 generator=torch.Generator().manual_seed(0))
    x = x.to("cpu", torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the legacy exporter's deprecation and tracer warnings
            try:
                torch.onnx.export(net, (x[:1],), tmp, dynamo=False, opset_version=OPSET, input_names=["input"],
                                  output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
            except Exception as e:  # the tracer raises many types
                raise ExportError(f"cannot export the model to ONNX: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None
        diff, scale = check_onnx(tmp, net, x)
        allowed = tolerance * max(1.0, scale)
        if strict and not diff <= allowed:
            raise ExportError(f"ONNX export of {path.name} does not match PyTorch: max abs difference {diff:.3g} "
                              f"on {len(x)} samples (outputs up to {scale:.3g}) is above the tolerance "
                              f"{tolerance:g} x max(1, {scale:.3g}) = {allowed:.3g}; not written")
        shapes = initializer_shapes(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return OnnxExport(path, diff, scale, len(x), shapes, bool(diff <= allowed))
