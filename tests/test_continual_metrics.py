"""Continual-learning metrics on hand-made matrices."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.continual.metrics import (
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    forgetting,
    seen_accuracy,
)

nan = math.nan
R3 = torch.tensor(
    [
        [0.9, nan, nan],
        [0.6, 0.8, nan],
        [0.7, 0.5, 1.0],
    ]
)


def test_average_accuracy():
    assert average_accuracy(R3) == pytest.approx((0.7 + 0.5 + 1.0) / 3)


def test_backward_transfer():
    # (R[2,0] - R[0,0] + R[2,1] - R[1,1]) / 2 = (-0.2 - 0.3) / 2
    assert backward_transfer(R3) == pytest.approx(-0.25)


def test_forgetting_uses_best_earlier_value():
    # group 0: best of R[0,0], R[1,0] = 0.9 -> 0.2; group 1: 0.8 -> 0.3
    assert forgetting(R3) == pytest.approx(0.25)
    R = torch.tensor([[0.5, nan], [0.9, 0.4]])  # improved: negative forgetting
    assert forgetting(R) == pytest.approx(-0.4)
    assert backward_transfer(R) == pytest.approx(0.4)


def test_forgetting_of_an_error_metric():
    mse = torch.tensor([[0.1, nan, nan], [0.3, 0.2, nan], [0.5, 0.1, 0.0]])
    # group 0: 0.5 - min(0.1, 0.3) = 0.4; group 1: 0.1 - 0.2 = -0.1
    assert forgetting(mse, higher_is_better=False) == pytest.approx(0.15)
    assert backward_transfer(mse) == pytest.approx(((0.5 - 0.1) + (0.1 - 0.2)) / 2)


def test_single_group():
    R = torch.tensor([[0.8]])
    assert average_accuracy(R) == pytest.approx(0.8)
    assert math.isnan(backward_transfer(R)) and math.isnan(forgetting(R))


def test_accuracy_matrix_from_per_class():
    per_class = torch.tensor(
        [
            [1.0, 0.5, nan, nan, nan],
            [1.0, 0.0, 0.5, 0.5, 1.0],
        ]
    )
    R = accuracy_matrix(per_class, [2, 5])
    assert R[0, 0] == pytest.approx(0.75) and math.isnan(R[0, 1])
    assert R[1, 0] == pytest.approx(0.5) and R[1, 1] == pytest.approx(2 / 3)
    # every class counts once in the accuracy on all seen classes
    assert seen_accuracy(per_class).tolist() == pytest.approx([0.75, 0.6])
    with pytest.raises(ValueError, match="boundaries must increase"):
        accuracy_matrix(per_class, [2, 2])
    with pytest.raises(ValueError, match="3 boundaries for 2 evaluation points"):
        accuracy_matrix(per_class, [1, 2, 5])


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="must be square"):
        average_accuracy(torch.zeros(2, 3))
