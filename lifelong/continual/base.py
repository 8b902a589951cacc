"""The protocol of every continual learner: learn from a stream, answer about all of it.

A :class:`ContinualLearner` is shown examples once (or as often as the stream repeats them)
through :meth:`~ContinualLearner.observe` and can be asked at any time to
:meth:`~ContinualLearner.predict` the label of any input among all the classes it has met.
Labels are global, ``0..num_classes-1`` in order of arrival (see
:mod:`lifelong.continual.streams`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


class ContinualLearner(ABC):
    """Base class of continual learners.

    Args:
        num_classes: the outputs of :meth:`predict` (classification); 1 for regression.
        regression: predict real values (``[n, 1]``) instead of class logits.

    Classification learners record the classes they have seen (:attr:`seen`); their logits of
    classes not seen yet are ``-inf``, so no prediction ever names an unseen class.
    """

    def __init__(self, num_classes: int, regression: bool = False) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.regression = num_classes, regression
        self.seen = torch.zeros(num_classes, dtype=torch.bool)

    def record(self, y: Tensor) -> None:
        """Mark the labels ``y`` as seen (classification)."""
        if self.regression:
            return
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, got {int(y.min())}..{int(y.max())}"
            )
        self.seen = self.seen.to(y.device)  # kept where the data is: no copy per prediction
        self.seen[y] = True

    def mask_unseen(self, logits: Tensor) -> Tensor:
        """``logits [n, num_classes]`` with the classes not seen yet at ``-inf``."""
        return logits.masked_fill(~self.seen.to(logits.device), -math.inf)

    @abstractmethod
    def observe(self, x: Tensor, y: Tensor) -> None:
        """Learn from the examples ``x [n, ...]`` with labels (or targets) ``y``, in order."""

    @abstractmethod
    def predict(self, x: Tensor) -> Tensor:
        """Logits ``[n, num_classes]`` (unseen classes ``-inf``), or predictions ``[n, 1]``."""
