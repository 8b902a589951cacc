"""Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999v3).

For each task of the batch, ``inner_steps`` inner steps on its training images from theta
give ``theta'_i`` (the same first-order
:func:`~lifelong.algorithms.inner_loop.inner_loop` as MAML); the outer update moves theta
towards their mean (the batched version, Algorithm 2):

    theta <- theta + epsilon * (mean_i theta'_i - theta)

To fit the trainer's ``loss.backward(); optimizer.step()``, :meth:`Reptile.meta_loss` returns a
*surrogate* whose gradient is ``theta - mean_i theta'_i``: plain SGD with learning rate epsilon
then makes exactly the update above. The surrogate's value is the mean query loss after
adaptation, for logging. Batch norm uses each (mini-)batch's statistics, as in MAML and the
paper's code.

The paper's experiments (appendix A; :attr:`Reptile.defaults`, Omniglot 5-way): inner Adam
with ``beta1 = 0``, learning rate 0.001, on mini-batches of 10 of the task's 50 training images
(``inner_batch``), 5 steps (one epoch); 5 tasks per meta-update; outer SGD steps of epsilon = 1
annealed linearly to 0 over 100,000 meta-updates (``meta_optimizer`` sgd, ``meta_lr`` 1,
``lr_schedule`` linear); at test 50 Adam steps on batches of 5. As in the paper's code
(github.com/openai/supervised-reptile, which resets only the weights around each task's inner
loop and saves and restores the whole state around a test), Adam's state is carried from task
to task and into every test adaptation, which leaves it unchanged (``inner_optimizer_state``
carried: :mod:`~lifelong.algorithms.carried_state`). One difference remains: the tasks of a
meta-batch run side by side, each from the state the meta-batches before left, and their
steps are then added to the state as if they had run one after another, where the paper's
code starts each task from the state the one before it left.

Example:
    >>> reptile = Reptile(model, inner_lr=1e-3, inner_steps=5, inner_optimizer="adam",
    ...                   inner_optimizer_state="carried", inner_batch=10)
    >>> optimizer = torch.optim.SGD(reptile.parameters(), lr=1.0)   # epsilon = 1
    >>> reptile.meta_loss(batch).loss.backward(); optimizer.step()
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lifelong.algorithms.inner_loop import Adaptation, InnerLoopLearner
from lifelong.algorithms.precision import Precision
from lifelong.data.episodes import EpisodeBatch


class Reptile(InnerLoopLearner):
    """Reptile: meta-learns an initialisation by moving it towards the tasks' adapted
    parameters (module doc).

    Args:
        model: the network (see :class:`~lifelong.algorithms.inner_loop.InnerLoopLearner`).
        inner_lr: inner learning rate.
        inner_steps: inner steps while meta-training.
        eval_inner_steps: inner steps at test time (default ``inner_steps``).
        inner_optimizer: ``"sgd"`` or ``"adam"`` (the paper's, with ``inner_beta1`` 0).
        inner_batch, eval_inner_batch: support examples per inner step while meta-training
            and at test (``None``: all).
        inner_optimizer_state: ``"fresh"`` (Adam's state from zero in every inner loop) or
            ``"carried"`` from task to task (the paper's code; needs ``"adam"``).
        regression: MSE instead of cross-entropy.
        fast, task_chunk, workers, precision: as in :class:`~lifelong.algorithms.maml.MAML`.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "meta_batch": 5,
        "inner_optimizer": "adam",
        "inner_optimizer_state": "carried",
        "inner_lr": 0.001,
        "inner_steps": 5,
        "inner_batch": 10,
        "eval_inner_steps": 50,
        "eval_inner_batch": 5,
        "meta_optimizer": "sgd",
        "meta_lr": 1.0,
        "lr_schedule": "linear",
    }  # Nichol et al. 2018, appendix A, table 3 (Omniglot and Mini-ImageNet, 5-way); the state
    # as their code carries it
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "miniimagenet": {"inner_steps": 8},
        "sinusoid": {  # the sine demo of the paper's blog post: SGD inside, outer step 0.1
            "inner_optimizer": "sgd",
            "inner_optimizer_state": "fresh",
            "inner_lr": 0.01,
            "inner_batch": 0,
            "eval_inner_steps": 5,
            "eval_inner_batch": 0,
            "meta_lr": 0.1,
        },
    }
    through_adaptation = False  # the meta-gradient is the surrogate's

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
        precision: Precision = "float32",
        inner_optimizer: str = "sgd",
        inner_beta1: float = 0.0,
        inner_batch: int | None = None,
        eval_inner_batch: int | None = None,
        inner_optimizer_state: str = "fresh",
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
            precision=precision,
            inner_optimizer=inner_optimizer,
            inner_beta1=inner_beta1,
            inner_batch=inner_batch,
            eval_inner_batch=eval_inner_batch,
            inner_optimizer_state=inner_optimizer_state,
        )

    def outer_loss(
        self, batch: EpisodeBatch, task: int | slice, adapted: Adaptation
    ) -> tuple[Tensor, Tensor]:
        """Sums over the tasks of the query loss after adaptation (the value) plus a term of
        value zero and gradient ``theta - theta'_i``; and of the query accuracy (or MSE)."""
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
