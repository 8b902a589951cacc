"""Continual-learning metrics from an accuracy matrix.

A stream is evaluated at ``T`` points; at point ``i`` the learner is tested on the held-out
examples of every class seen so far, giving ``per_class[i, c]`` (accuracy, or mean squared error
for regression; NaN for a class not seen yet). The classes that arrived between two evaluation
points form a *group* (a task of a task sequence, or the classes learned since the previous
report), and the accuracy matrix ``R[i, j]`` is the mean of ``per_class[i]`` over group ``j``
(NaN for ``j > i``). From ``R`` (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for
Continual Learning", section 4; Chaudhry et al. 2018, "Riemannian Walk for Incremental
Learning", section 4.1):

* average accuracy ``ACC = mean_j R[T-1, j]``;
* backward transfer ``BWT = mean_{j<T-1} (R[T-1, j] - R[j, j])`` (negative: forgetting);
* forgetting ``F = mean_{j<T-1} (max_{j<=l<T-1} R[l, j] - R[T-1, j])``, the drop of each group
  from its best earlier value.

For an error metric (MSE) lower is better: forgetting is then ``R[T-1, j] - min_l R[l, j]``
(still positive when the learner got worse) and BWT keeps its formula (positive: worse).

In class-incremental learning the accuracy on old classes also drops because new classes
compete with them, so forgetting measured this way is not zero even for a learner that keeps
everything (e.g. prototype memory): it counts both effects.

Example:
    >>> R = torch.tensor([[0.9, nan], [0.7, 0.8]])
    >>> average_accuracy(R), backward_transfer(R), forgetting(R)
    (0.75, -0.2, 0.2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def seen_accuracy(per_class: Tensor) -> Tensor:
    """Mean over the classes seen so far at each evaluation point ``[T]`` (every class counts
    once, whatever its group): accuracy (or MSE) against the number of classes learned."""
    return per_class.nanmean(dim=1)


def accuracy_matrix(per_class: Tensor, boundaries: Sequence[int]) -> Tensor:
    """``R [T, T]`` from ``per_class [T, C]``: group ``j`` is the classes
    ``boundaries[j-1] <= c < boundaries[j]`` (labels are in order of arrival), the classes
    learned between evaluation points ``j-1`` and ``j``; ``boundaries[i]`` is the number of
    classes seen at point ``i``."""
    T = per_class.shape[0]
    if len(boundaries) != T:
        raise ValueError(f"{len(boundaries)} boundaries for {T} evaluation points")
    R = torch.full((T, T), math.nan, dtype=torch.float64)
    start = 0
    for j, stop in enumerate(boundaries):
        if stop <= start:
            raise ValueError(f"boundaries must increase, got {list(boundaries)}")
        R[j:, j] = per_class[j:, start:stop].double().nanmean(dim=1)
        start = stop
    return R


def _check(R: Tensor) -> int:
    if R.dim() != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"an accuracy matrix must be square and non-empty, got {tuple(R.shape)}")
    return R.shape[0]


def average_accuracy(R: Tensor) -> float:
    """``mean_j R[T-1, j]``: the mean over groups after the last step (Lopez-Paz & Ranzato
    2017, ACC)."""
    _check(R)
    return float(R[-1].double().mean())


def backward_transfer(R: Tensor) -> float:
    """``mean_{j<T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato 2017, BWT); NaN when there is
    one group only."""
    T = _check(R)
    if T < 2:
        return math.nan
    R = R.double()
    return float((R[-1, :-1] - R.diagonal()[:-1]).mean())


def forgetting(R: Tensor, higher_is_better: bool = True) -> float:
    """``mean_{j<T-1} (max_{j<=l<T-1} R[l, j] - R[T-1, j])`` (Chaudhry et al. 2018, eq. 3;
    for an error metric ``R[T-1, j] - min_l R[l, j]``); NaN when there is one group only."""
    T = _check(R)
    if T < 2:
        return math.nan
    earlier = R[:-1, :-1].double()  # rows l < T-1; NaN above the diagonal (l < j) is skipped
    if higher_is_better:
        best = earlier.nan_to_num(nan=-math.inf).amax(dim=0)
        return float((best - R[-1, :-1].double()).mean())
    best = earlier.nan_to_num(nan=math.inf).amin(dim=0)
    return float((R[-1, :-1].double() - best).mean())
