"""Accounting on hand-computed examples."""

from __future__ import annotations

import json
import pickle

import torch
from torch import nn

from lowrank import convert, mlp
from lowrank.accounting import Quantity, count, hidden_weights


def example() -> nn.Sequential:
    """fc0: 10 -> 8 vanilla rank 2; fc1: 8 -> 6 svd rank 3; fc2: 6 -> 3 dense."""
    torch.manual_seed(0)
    model = mlp([10, 8, 6, 3])
    model = convert(model, "vanilla", rank=2, target=["fc0"])
    return convert(model, "svd", rank=3, target=["fc1"])


def test_hand_computed_counts() -> None:
    model = example()
    # fc0: r(m+n) + r^2 + n = 2*18 + 4 + 8 = 48; fc1: 3*14 + 3 + 6 = 51; fc2: 6*3 + 3 = 21.
    # Dense: (80 + 8) + (48 + 6) + 21 = 163.
    a = count(model)
    assert a.inference == Quantity(120, 480, 120 / 163)
    assert a.trainable == Quantity(120, 480, 120 / 163)
    assert a.dense_params == 163 and a.dense_flops == 163
    assert a.flops_per_sample == 120 and a.flops_ratio == 120 / 163
    # Hidden weights: fc0 2*18 + 4 = 40, fc1 3*14 + 3 = 45; dense 80 + 48.
    assert hidden_weights(model) == Quantity(85, 340, 85 / 128)
    assert a.hidden == hidden_weights(model)
    assert a.optimizer_state is None


def test_optimizer_state_and_bytes_by_dtype() -> None:
    model = example().double()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 10, dtype=torch.float64)).sum().backward()
    opt.step()
    a = count(model, opt)
    # Adam: exp_avg + exp_avg_sq per element (2 * 120) + one 'step' scalar per tensor (10 tensors).
    # The moments are float64 (8 bytes), the step counters float32 (4 bytes).
    assert a.optimizer_state.count == 250
    assert a.optimizer_state.bytes == 240 * 8 + 10 * 4
    assert a.optimizer_state.ratio == 250 / 163
    assert a.inference.bytes == 120 * 8


def test_lora_counts_merged_for_inference_and_adapter_for_training() -> None:
    model = mlp([10, 8, 6, 3])
    model.requires_grad_(False)
    model = convert(model, "lora", rank=2)
    a = count(model)
    assert a.inference.count == 163 and a.inference.ratio == 1.0
    # Adapters only: fc0 2*(10+8) = 36, fc1 2*(8+6) = 28.
    assert a.trainable.count == 64
    assert a.hidden.count == 128 and a.flops_per_sample == 163


def test_dense_reference_and_training_params_hook() -> None:
    model = example()
    fc0 = model.fc0
    fc0.training_params = lambda: 1000  # e.g. DLRT's K, L and 2r bases
    a = count(model, dense_reference=mlp([10, 8, 6, 3]))
    assert a.trainable.count == 1000 + 51 + 21
    assert a.dense_params == 163


def test_quantities_are_plain_data() -> None:
    a = count(example())
    d = a.to_dict()
    assert json.loads(json.dumps(d))["inference"]["count"] == 120
    assert type(pickle.loads(pickle.dumps(a.hidden))) is dict
    assert hidden_weights(example())["ratio"] == 85 / 128
