"""Model builders: the thesis MLP, the DLRT paper's LeNet-5, and users' own factories.

Every model takes FLAT input (N, D), as the datasets give it (``Splits.train.x``),
and returns (N, num_outputs): logits for classification, or one value for
regression. Models that need an image shape restore it with ``nn.Unflatten`` from
the data's ``sample_shape`` (e.g. (1, 28, 28)).

How a checkpoint rebuilds a model: a run's config records ``model`` (a built-in
name of :data:`MODELS`, such as ``"mlp"`` or ``"lenet5"``, or the
``"package.module:factory"`` string of a user's factory) and ``model_args`` (a
JSON-serialisable dict of keyword arguments, checked by :func:`check_model_args`).
``build_model(model, model_args, sample_shape=..., num_outputs=...)`` with the
data's ``sample_shape`` and number of outputs then builds the same architecture
again, and the checkpoint's state dict is loaded into it. A user factory must
therefore be importable (installed or on ``PYTHONPATH``) wherever the checkpoint
is loaded, and must build the same model from the same arguments.
"""

from __future__ import annotations

from .factory import MODELS, ModelBuilder, ModelSpec, build_model, check_model_args
from .lenet5 import lenet5
from .mlp import ACTIVATIONS, mlp
from .transformer import TransformerClassifier

__all__ = ["mlp", "lenet5", "TransformerClassifier", "ACTIVATIONS", "ModelSpec", "ModelBuilder", "MODELS", "build_model",
           "check_model_args"]
