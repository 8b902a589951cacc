"""Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms").

For each task of the batch, ``inner_steps`` plain SGD steps on its support set from theta give
``theta'_i`` (the same :func:`~lifelong.algorithms.inner_loop.inner_loop` as MAML, first
order); the outer update moves theta towards their mean (the batched version, Algorithm 2):

    theta <- theta + epsilon * (mean_i theta'_i - theta)

To fit the trainer's ``loss.backward(); optimizer.step()``, :meth:`Reptile.meta_loss` returns a
*surrogate* whose gradient is ``theta - mean_i theta'_i``: plain SGD with learning rate epsilon
then makes exactly the update above (Adam, as in the paper's experiments, uses it as a
gradient). The surrogate's value is the mean query loss after adaptation, for logging.
The paper's inner loop uses Adam on mini-batches; this one takes full-batch SGD steps on the
support set. Batch norm uses per-task batch statistics, as in MAML.

Example:
    >>> reptile = Reptile(model, inner_lr=0.1, inner_steps=5)
    >>> optimizer = torch.optim.SGD(reptile.parameters(), lr=1.0)   # epsilon = 1
    >>> reptile.meta_loss(batch).loss.backward(); optimizer.step()
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lifelong.algorithms.inner_loop import InnerLoopLearner
from lifelong.data.episodes import EpisodeBatch


class Reptile(InnerLoopLearner):
    """Reptile: meta-learns an initialisation by moving it towards the tasks' adapted
    parameters (module doc).

    Args:
        model: the network (see :class:`~lifelong.algorithms.inner_loop.InnerLoopLearner`).
        inner_lr: inner SGD learning rate.
        inner_steps: inner steps while meta-training.
        eval_inner_steps: inner steps at test time (default ``inner_steps``).
        regression: MSE instead of cross-entropy.
        fast, task_chunk, workers: as in :class:`~lifelong.algorithms.maml.MAML`.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "meta_batch": 5,
        "inner_lr": 0.1,
        "inner_steps": 5,
    }  # Nichol et al., table 3
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "omniglot": {"eval_inner_steps": 50},
        "sinusoid": {"inner_lr": 0.01},
    }

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        eval_inner_steps: int | None = None,
        regression: bool = False,
        fast: bool = True,
        task_chunk: int | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            regression=regression,
            fast=fast,
            task_chunk=task_chunk,
            workers=workers,
        )

    def group_loss(self, batch: EpisodeBatch, task: int | slice) -> tuple[Tensor, Tensor]:
        """Sums over the tasks of the query loss after adaptation (the value) plus a term of
        value zero and gradient ``theta - theta'_i``; and of the query accuracy (or MSE)."""
        adapted = self.adapt_tasks(batch, task, self.inner_steps, False, detach=True)
        final = adapted.trajectory[-1]
        moves = 0.0
        for name, theta in self.model.named_parameters():
            # sum over the tasks of theta - theta'_i, a constant
            move = (theta.detach() - final[name].detach()).reshape(-1, *theta.shape).sum(0)
            moves = moves + (theta * move).sum()
        with torch.no_grad():
            out = adapted.outputs(batch.query_x[task])
            query_y = batch.query_y[task]
            loss = self.task_losses(out, query_y, batch.ways).sum()
            metric = self.task_metrics(out, query_y, batch.ways).sum()
        return loss + (moves - moves.detach()), metric
