"""The one protocol every few-shot learner follows.

An :class:`Algorithm` is an ``nn.Module`` holding the meta-learned state (an initialisation, an
embedding, learned inner rates...). It is trained by minimising :meth:`Algorithm.meta_loss` over
batches of episodes and used on a new task through :meth:`Algorithm.adapt`, which turns a
support set into a predictor for the task's queries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lifelong.data.episodes import EpisodeBatch

Predictor = Callable[[Tensor], Tensor]
"""Maps query inputs ``[n, ...]`` to logits ``[n, ways]`` (classification) or predictions
``[n, out]`` (regression)."""


@dataclass
class MetaLoss:
    """What one meta-training step produces: the scalar to back-propagate and the detached
    mean query metric of the batch (accuracy as a fraction, or MSE for regression)."""

    loss: Tensor
    metric: Tensor


class Algorithm(nn.Module, ABC):
    """Base class of all few-shot learners.

    Subclasses (or instances) set ``regression = True`` when they solve regression tasks, and
    implement
    :meth:`meta_loss` and :meth:`adapt`.
    """

    regression: bool = False

    @abstractmethod
    def meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        """The meta-training objective on a batch of episodes (floats, on this module's
        device)."""

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int) -> Predictor:
        """Learn one task from its support set; return the task's predictor."""

    def query_metric(self, output: Tensor, query_y: Tensor) -> Tensor:
        """Accuracy (fraction correct) of logits, or MSE of regression predictions."""
        if self.regression:
            return F.mse_loss(output, query_y)
        return (output.argmax(-1) == query_y).float().mean()

    def evaluate(self, batch: EpisodeBatch) -> Tensor:
        """Per-episode query metric ``[B]``: adapt to each support set, score its queries."""
        results = []
        for episode in batch:
            predictor = self.adapt(episode.support_x, episode.support_y, episode.ways)
            with torch.no_grad():
                results.append(self.query_metric(predictor(episode.query_x), episode.query_y))
        return torch.stack(results).detach()
