"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common.metrics import (
    accuracy,
    agreement,
    count_flops,
    count_parameters,
    expected_calibration_error,
    gap_closure,
    mean_std,
    measure_model_speed,
    measure_speed,
    model_size_bytes,
)


def test_accuracy_and_agreement():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75)
    other = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert agreement(logits, other) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="labels"):
        accuracy(logits, torch.tensor([0]))


def test_ece_by_hand():
    # Two samples at confidence 0.9 (one right), two at 0.6 (both right), 15 bins:
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    p_hi, p_lo = math.log(0.9 / 0.1), math.log(0.6 / 0.4)
    logits = torch.tensor([[p_hi, 0.0], [p_hi, 0.0], [p_lo, 0.0], [p_lo, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4, abs=1e-5)
    # A perfectly confident, always-right model is perfectly calibrated.
    sure = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    assert expected_calibration_error(sure, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-6)


def test_parameter_count_and_size_count_shared_tensors_once():
    lin = nn.Linear(4, 3)  # 12 + 3
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.BatchNorm1d(3))  # + 6 params, 7 buffers
    assert count_parameters(model) == 15 + 6
    model[3].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 15 + 3
    # BatchNorm buffers: running_mean (3) + running_var (3) float32, num_batches_tracked int64.
    assert model_size_bytes(model) == (15 + 6 + 6) * 4 + 8
    assert model_size_bytes(model.half()) == (15 + 6 + 6) * 2 + 8


def test_measure_speed_reports_median_and_throughput():
    calls = []
    result = measure_speed(lambda: calls.append(1), batch_size=32, warmup=2, repeats=5)
    assert len(calls) == 7
    assert result.repeats == 5 and result.batch_size == 32 and result.median_s >= 0
    model = nn.Linear(8, 2).train()
    speed = measure_model_speed(model, torch.randn(16, 8), warmup=1, repeats=3)
    assert speed.items_per_s == pytest.approx(16 / speed.median_s)
    assert model.training  # mode restored


def test_flops_of_a_linear_layer():
    # A [B, in] @ [in, out] matmul is 2 * B * in * out FLOPs.
    assert count_flops(nn.Linear(8, 4, bias=False), torch.randn(3, 8)) == 2 * 3 * 8 * 4
    assert count_flops(nn.ReLU(), torch.randn(3, 8)) is None  # nothing countable


def test_gap_closure():
    assert gap_closure(0.85, 0.80, 0.90) == pytest.approx(0.5)
    assert gap_closure(0.80, 0.80, 0.90) == pytest.approx(0.0)
    assert gap_closure(0.95, 0.80, 0.90) == pytest.approx(1.5)  # beyond the teacher
    assert math.isnan(gap_closure(0.9, 0.8, 0.8))


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])
