"""The inner loop of gradient-based meta-learning, shared by the MAML family and Reptile.

:func:`inner_loop` takes gradient steps on a support set from given parameters (Finn et al.
2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", eq. 1):

    theta_{k+1} = theta_k - alpha_k * grad_theta L_support(theta_k)

or another update rule's direction in place of the gradient (:mod:`inner_update`: Adam for
Reptile), on the whole support set or, with ``inner_batch``, on mini-batches of it
(:func:`support_batches`: consecutive batches of a per-task shuffle, reshuffled every epoch,
as Nichol et al. 2018's code samples them, from the task's own key, so that one process and
many draw the same), with parameters as a dict of tensors and a functional forward
(:mod:`lifelong.algorithms.functional`), keeping the graph of the steps (``create_graph``)
for second-order meta-gradients. :class:`InnerLoopLearner` is the base of
:class:`~lifelong.algorithms.maml.MAML` and :class:`~lifelong.algorithms.reptile.Reptile`: it
holds the model, picks the forward (the fast :class:`~lifelong.algorithms.functional.TaskForward`
for Conv-4 and MLP, the reference one task at a time for other models or with ``fast=False``)
and implements :meth:`~InnerLoopLearner.adapt` and :meth:`~InnerLoopLearner.evaluate`;
subclasses give the meta-loss of the adapted parameters (:meth:`~InnerLoopLearner.outer_loss`).
The update rule's state starts at zero in every inner loop, or, ``inner_optimizer_state``
carried, from Adam's state carried from task to task (:mod:`carried_state`), which
:meth:`~InnerLoopLearner.meta_loss` advances and test adaptations leave as it is.

Batch norm uses each task's own batch statistics (``track_running_stats=False``, as in the MAML
paper): the support set is normalised with its own statistics, and so is the query set, so
predictions are *transductive* (a query's output depends on the other queries of its batch).

On the fast path, :meth:`InnerLoopLearner.meta_loss` differentiates each task group as soon
as its loss is computed and adds up the meta-gradient ``g``: only one task group's graph is
alive at a time (about 100 MB instead of 2 GB for 32 Omniglot tasks) and its activations are
still in cache. It returns ``value + sum(p * g) - sum(p * g).detach()``, which has the exact
value and gradient for ``loss.backward()`` (only second derivatives *of the meta-loss* are
lost). On the CPU the tasks are shared out to ``workers`` threads (by default as many as
``torch.get_num_threads()``), each with one intra-op thread: tasks are independent, so the
threads never wait for each other, where intra-op parallelism synchronises the cores at every
one of the thousands of small operations of an inner loop (and stalls whenever other processes
share the cores). The reference path keeps the plain graph of the whole batch.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lifelong.algorithms.base import Algorithm, MetaLoss, ModelFactory, Predictor
from lifelong.algorithms.carried_state import Block, CarriedState
from lifelong.algorithms.functional import Forward, ModuleForward, Params, TaskForward
from lifelong.algorithms.inner_update import (
    INNER_OPTIMIZER_STATES,
    SGD,
    Adam,
    InnerUpdate,
    UpdateState,
    inner_update,
)
from lifelong.algorithms.precision import Precision, check_precision
from lifelong.data.episodes import FIXED_STREAM, EpisodeBatch, task_keys

if TYPE_CHECKING:
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts

GROUP_ACTIVATIONS = 2**22
"""The first convolution's output values of one task group on the CPU (fast path, default
``task_chunk``). Measured on 2 CPU cores, one thread, second-order Omniglot meta-iterations of
32 tasks: strided Conv-4, 10 images a task, 0.68 s one task at a time, 0.34 s 16 at a time;
80 images a task, 1.48 s and 1.09 s 8 at a time; Conv-4 with pooling (4x the values), 80
images a task: one at a time is fastest."""

PLAIN_SGD = SGD()
"""The update rule of :func:`inner_loop` unless it is given another."""

TEST_ORDER_SEED = 0
"""The seed of the fixed set whose :func:`~lifelong.data.episodes.task_keys` order the
``eval_inner_batch`` mini-batches of test episodes without keys of their own
(:meth:`InnerLoopLearner.order_keys`)."""

LearningRate = Callable[[str, int], "float | Tensor"]
"""``lr(name, step)``: the inner learning rate of parameter ``name`` at step ``step``."""


def inner_loop(
    forward: Forward,
    params: Params,
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    lr: LearningRate,
    create_graph: bool,
    at_step: Callable[[Params, int], Params] = lambda params, step: params,
    update: InnerUpdate = PLAIN_SGD,
    batches: Tensor | None = None,
    state: UpdateState | None = None,
) -> list[Params]:
    """``steps`` gradient steps on the parameters ``names`` (the others stay fixed).

    Args:
        forward: ``forward(params, x)`` -> outputs.
        params: the start, ``theta_0`` (tensors that require grad where ``names`` says).
        names: the parameters to adapt (all for MAML, the head's for ANIL).
        x, y: the support set (one task, or ``G`` tasks with a leading task dim).
        loss: ``loss(outputs, y)`` -> the loss of each task (summed: each task's parameters
            get the gradient of their own task's loss).
        steps: number of steps.
        lr: the learning rate of each parameter and step (a float, or a learned tensor).
        create_graph: keep the graph of the gradients (second-order meta-gradients); without it
            the steps' gradients are constants (first order).
        at_step: ``at_step(theta_k, k)`` -> ``theta_k`` with the parameters that belong to step
            ``k`` put in (MAML++'s per-step batch norm); applied after each step.
        update: the update rule (plain SGD, or Adam).
        batches: the support examples of each step, indices ``[steps, k]`` (one task) or
            ``[G, steps, k]`` (a task group), from :func:`support_batches`; ``None``: all.
        state: the rule's state at the start (Adam's, carried from earlier tasks:
            :mod:`~lifelong.algorithms.carried_state`), updated in place; ``None``: empty.

    Returns:
        ``[theta_0, theta_1, ..., theta_steps]``.

    Example:
        >>> params = dict(model.named_parameters())
        >>> trajectory = inner_loop(ModuleForward(model), params, list(params), x, y,
        ...                         F.cross_entropy, steps=1, lr=lambda n, k: 0.4,
        ...                         create_graph=True)
        >>> F.cross_entropy(model_forward(trajectory[-1], query_x), query_y).backward()
    """
    if create_graph and not update.second_order:
        raise ValueError(f"{type(update).__name__} inner steps cannot be differentiated")
    trajectory, state = [params], UpdateState() if state is None else state
    for step in range(steps):
        step_x, step_y = _step_batch(x, y, batches, step)
        value = loss(forward(params, step_x), step_y).sum()
        grads = torch.autograd.grad(value, [params[n] for n in names], create_graph=create_graph)
        directions = update.directions(dict(zip(names, grads, strict=True)), state)
        updated = {n: params[n] - lr(n, step) * directions[n] for n in names}
        params = at_step({**params, **updated}, step + 1)
        trajectory.append(params)
    return trajectory


def support_batches(
    keys: Tensor, support: int, steps: int, batch: int, device: torch.device
) -> Tensor | None:
    """The mini-batches of ``steps`` inner steps on the support sets of ``support`` examples
    of the tasks of ``keys``, as indices ``[tasks, steps, batch]``: each task's own shuffle,
    drawn from a generator seeded with its key (:attr:`EpisodeBatch.keys`), cut into
    consecutive batches and drawn afresh when it is used up, a batch running on into the next
    shuffle (the ``_mini_batches`` of Nichol et al. 2018's code, without replacement). ``None``
    (all of the support set at every step) when ``batch`` is 0 or at least ``support``.

    Example:
        >>> batches = support_batches(torch.tensor([7]), 50, 5, 10, torch.device("cpu"))
        >>> sorted(batches.flatten().tolist()) == list(range(50))  # one epoch: each once
        True
    """
    if not batch or batch >= support:
        return None
    epochs = -(-steps * batch // support)
    draws = torch.stack(
        [
            torch.rand(epochs, support, generator=torch.Generator().manual_seed(int(key)))
            for key in keys
        ]
    )
    order = draws.argsort(-1).flatten(1)[:, : steps * batch]
    return order.view(len(keys), steps, batch).to(device)


def _step_batch(x: Tensor, y: Tensor, batches: Tensor | None, step: int) -> tuple[Tensor, Tensor]:
    """The support examples of ``step``: all, or the batch of ``batches`` (one task's
    ``[steps, k]`` or, for a group, ``[G, steps, k]``, each task its own)."""
    if batches is None:
        return x, y
    index = batches[..., step, :]
    if index.dim() == 1:
        return x[index], y[index]
    rows = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
    return x[rows, index], y[rows, index]


@dataclass
class OrderedBatch(EpisodeBatch):
    """Episodes with the mini-batches an inner loop reads from each support set:
    :func:`support_batches` ``[B, steps, k]`` (drawn before the tasks are shared out, so that
    they do not depend on the threads or on the task groups)."""

    batches: Tensor | None = None

    def __getitem__(self, index: int | slice) -> Any:
        part = super().__getitem__(index)
        if not isinstance(index, slice) or self.batches is None:
            return part
        values = {f.name: getattr(part, f.name) for f in fields(part)}
        return OrderedBatch(**values, batches=self.batches[index])


@dataclass
class Adaptation:
    """The inner loop's result on a support set: ``trajectory`` ``[theta_0..theta_S]``;
    ``outputs(x, step)`` are the model's outputs on ``x`` with ``theta_step`` (for ANIL the
    body's features are computed once, by ``features``, and only the head is re-run);
    ``state``: the update rule's state at the end."""

    trajectory: list[Params]
    predict: Forward
    features: Callable[[Tensor], Tensor]
    state: UpdateState

    def outputs(self, x: Tensor, step: int = -1) -> Tensor:
        return self.predict(self.trajectory[step], self.features(x))


class InnerLoopLearner(Algorithm):
    """Base of the algorithms that adapt a model's parameters by gradient steps on the support
    set (MAML family, Reptile); see the module doc.

    Args:
        model: the network, ending in a head with at least ``ways`` outputs (classification) or
            the regression output. Batch norm layers must have ``track_running_stats=False``.
        inner_lr: inner learning rate alpha.
        inner_steps: inner steps while meta-training.
        eval_inner_steps: inner steps in :meth:`adapt` and :meth:`evaluate` (default:
            ``inner_steps``).
        adapt: ``"all"`` parameters, or only those of ``model.head`` (ANIL).
        regression: MSE loss and metric instead of cross-entropy and accuracy.
        fast: use :class:`~lifelong.algorithms.functional.TaskForward` when the model is a
            Conv-4 or MLP (same results, faster); ``False`` runs the reference path: one task at
            a time through ``functional_call`` on the model.
        task_chunk: tasks run side by side by the fast path; ``None``: for convolutional
            models on the CPU, as many as keep the first convolution's outputs of a group
            within :data:`GROUP_ACTIVATIONS` values (small tasks share the per-operation
            overhead, large ones keep their activations in cache), all of the batch otherwise.
        workers: threads that share out the tasks on the CPU on the fast path (module doc);
            ``None``: ``torch.get_num_threads()``; ``1``: everything in the calling thread.
        precision: ``"bfloat16"`` or ``"float16"`` run the task computations (inner steps,
            query losses, evaluation) under ``torch.autocast`` (mixed precision: matrix
            products and convolutions in that dtype, parameters and their updates float32);
            ``"float32"``: as the caller runs them.
        inner_optimizer: the inner update rule, ``"sgd"`` or ``"adam"`` (first order only;
            :mod:`~lifelong.algorithms.inner_update`), with ``inner_beta1``.
        inner_optimizer_state: Adam's state at the start of each inner loop: ``"fresh"``
            (zero), or ``"carried"`` from task to task, as Nichol et al. 2018's code keeps it
            (:mod:`~lifelong.algorithms.carried_state`: buffers advanced by each meta-batch of
            :meth:`meta_loss`, read and left unchanged by test adaptations).
        inner_batch: support examples per inner step while meta-training
            (:func:`support_batches`; ``None`` or 0: all of them); batch norm then normalises
            each mini-batch with its own statistics.
        eval_inner_batch: the same at test time.
        fixed: parameters the inner loop leaves as they are (besides the body, for ANIL).

    Subclasses implement :meth:`outer_loss`.
    """

    own_options: ClassVar[tuple[str, ...]] = (
        "inner_optimizer",
        "inner_optimizer_state",
        "inner_batch",
        "eval_inner_batch",
        "precision",
    )
    min_inner_steps = 1
    """The fewest inner steps meta-training may take (MAML: 0, joint training)."""
    fixed_head = True
    task_batch_norm = True
    solves_regression = True
    through_adaptation: ClassVar[bool] = True
    """The meta-loss is differentiated through the adapted parameters (the MAML family), so
    the inner loop starts from the model's parameters; else from a detached copy (Reptile)."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float,
        inner_steps: int,
        eval_inner_steps: int | None = None,
        adapt: str = "all",
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
        fixed: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        check_precision(precision)
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {inner_lr}")
        if not isinstance(inner_steps, int) or inner_steps < self.min_inner_steps:
            raise ValueError(
                f"inner_steps must be an integer >= {self.min_inner_steps} for "
                f"{type(self).__name__}, got {inner_steps!r}"
            )
        eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        if not isinstance(eval_inner_steps, int) or eval_inner_steps < 0:
            raise ValueError(
                f"eval_inner_steps must be a non-negative integer, got {eval_inner_steps!r}"
            )
        for what, value in (("task_chunk", task_chunk), ("workers", workers)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{what} must be a positive integer or None, got {value!r}")
        for what, value in (("inner_batch", inner_batch), ("eval_inner_batch", eval_inner_batch)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{what} must be a non-negative integer or None, got {value!r}")
        if adapt == "head" and (inner_batch or eval_inner_batch):
            raise ValueError(
                "inner_batch needs the body run on each mini-batch, but adapt='head' (ANIL) "
                "computes the support set's features once: use one or the other"
            )
        if adapt not in ("all", "head"):
            raise ValueError(f"adapt must be 'all' or 'head', got {adapt!r}")
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                raise ValueError(
                    f"batch norm {name!r} tracks running statistics, but inner-loop learners "
                    "normalise each task with its own batch statistics: build the model with "
                    "track_running_stats=False"
                )
        params = dict(model.named_parameters())
        names = [n for n in params if (adapt == "all" or n.startswith("head.")) and n not in fixed]
        if not names:
            raise ValueError(f"adapt={adapt!r} needs a model with a `head` that has parameters")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.scope = adapt
        self.adapted = tuple(names)
        self.regression = regression
        self.task_chunk = task_chunk
        self.workers = workers
        self.precision: Precision = precision
        self.update = inner_update(inner_optimizer, inner_beta1)
        if inner_optimizer_state not in INNER_OPTIMIZER_STATES:
            raise ValueError(
                "inner_optimizer_state must be one of "
                f"{', '.join(INNER_OPTIMIZER_STATES)}, got {inner_optimizer_state!r}"
            )
        self.carried: CarriedState | None = None
        if inner_optimizer_state == "carried":
            if not isinstance(self.update, Adam):
                raise ValueError(
                    f"inner_optimizer_state carried keeps Adam's state from task to task, but "
                    f"inner_optimizer {inner_optimizer} has none: use adam, or "
                    "inner_optimizer_state fresh"
                )
            first = params[names[0]]
            shapes = {n: params[n].shape for n in names}
            self.carried = CarriedState(shapes, self.update, first.dtype, first.device)
        self.gather: Callable[[Any], list[Any]] = _alone
        self.inner_batch, self.eval_inner_batch = inner_batch, eval_inner_batch
        self.reference = ModuleForward(model)
        self.fast_forward = TaskForward.of(model) if fast else None

    @classmethod
    def settings(cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory) -> dict[str, Any]:
        """The constructor arguments of a run: a model ending in a ``ways``-output head (one
        output for regression) and the config's inner loop."""
        inner = {
            "inner_lr": cfg.inner_lr,
            "inner_steps": cfg.inner_steps,
            "eval_inner_steps": cfg.eval_inner_steps,
            "inner_optimizer": cfg.inner_optimizer,
            "inner_optimizer_state": cfg.inner_optimizer_state,
            "inner_batch": cfg.inner_batch,
            "eval_inner_batch": cfg.eval_inner_batch,
            "precision": cfg.precision,
        }
        return {
            "model": models(1 if facts.regression else cfg.ways),
            "regression": facts.regression,
            **{k: v for k, v in inner.items() if v is not None},
        }

    @classmethod
    def from_config(
        cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory
    ) -> InnerLoopLearner:
        return cls(**cls.settings(cfg, facts, models))

    def body(self) -> nn.Module:
        return ModelEmbedding(self.model)

    @property
    def test_steps(self) -> int:
        return self.eval_inner_steps

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient differentiates through the inner gradients now (MAML's
        second-order meta-gradient)."""
        return False

    def share_meta_batches(self, gather: Callable[[Any], list[Any]]) -> None:
        """The carried state sums up the tasks of every process (:meth:`carry`)."""
        self.gather = gather

    def precision_scope(self, device: torch.device) -> AbstractContextManager[Any]:
        """Autocast to :attr:`precision` on ``device`` (float32: the caller's autocast holds)."""
        if self.precision == "float32":
            return nullcontext()
        return torch.autocast(device.type, getattr(torch, self.precision))

    # ------------------------------------------------------------------ hooks
    def inner_rate(self, name: str, step: int) -> float | Tensor:
        """The inner learning rate of parameter ``name`` at ``step`` (learned in Meta-SGD)."""
        return self.inner_lr

    def step_parameters(self, step: int) -> Params:
        """Parameters that replace the model's own after ``step`` >= 1 inner steps (MAML++'s
        per-step batch-norm weights); none by default."""
        return {}

    # ------------------------------------------------------------------ losses and metrics
    def outputs_for(self, outputs: Tensor, ways: int) -> Tensor:
        """Regression outputs as they are; logits of the first ``ways`` classes."""
        if self.regression:
            return outputs
        if ways > outputs.shape[-1]:
            raise ValueError(
                f"{ways}-way tasks need {ways} outputs, but the model's head has "
                f"{outputs.shape[-1]}: build it with out_features={ways} (or test with "
                f"ways <= {outputs.shape[-1]})"
            )
        return outputs[..., :ways]

    def task_losses(self, outputs: Tensor, y: Tensor, ways: int) -> Tensor:
        """Mean loss of each task (a scalar for one task, ``[G]`` for a task group)."""
        outputs = self.outputs_for(outputs, ways)
        if self.regression:
            return F.mse_loss(outputs, y, reduction="none").flatten(y.dim() - 2).mean(-1)
        flat = F.cross_entropy(outputs.flatten(0, -2), y.flatten(), reduction="none")
        return flat.view(y.shape).mean(-1)

    def task_metrics(self, outputs: Tensor, y: Tensor, ways: int) -> Tensor:
        """Accuracy (or MSE) of each task, detached."""
        if self.regression:
            return self.task_losses(outputs, y, ways).detach()
        hits = self.outputs_for(outputs, ways).argmax(-1) == y
        return hits.to(outputs.dtype).mean(-1)

    # ------------------------------------------------------------------ the inner loop
    def task_groups(self, batch: EpisodeBatch) -> Iterator[int | slice]:
        """Index of each task (reference path) or slice of each task group (fast path)."""
        if self.fast_forward is None:
            yield from range(len(batch))
            return
        chunk = self.task_chunk or self._default_chunk(batch)
        for start in range(0, len(batch), chunk):
            yield slice(start, start + chunk)

    def _default_chunk(self, batch: EpisodeBatch) -> int:
        first = self.fast_forward.layers[0]
        if first.kind != "conv" or batch.support_x.device.type != "cpu":
            return len(batch)
        conv = first.module
        height, width = batch.support_x.shape[-2:]
        outputs = conv.out_channels * (height // conv.stride[0]) * (width // conv.stride[1])
        images = batch.support_x.shape[1] + batch.query_x.shape[1]
        return max(1, min(len(batch), GROUP_ACTIVATIONS // (outputs * images)))

    def adaptation(
        self,
        support_x: Tensor,
        support_y: Tensor,
        ways: int,
        steps: int,
        create_graph: bool,
        detach: bool,
        batches: Tensor | None = None,
    ) -> Adaptation:
        """Run the inner loop from the model's parameters on one task (reference path:
        ``support_x [n, ...]``) or a task group (fast path: ``[G, n, ...]``), with the update
        rule's state from the carried state (or fresh).

        ``detach``: start from a copy of the parameters outside the graph (evaluation,
        Reptile); else the trajectory stays differentiable in the model's parameters.
        ``batches``: each step's support examples (:func:`inner_loop`)."""
        with torch.enable_grad():
            params = dict(self.model.named_parameters())
            if detach:
                params = {
                    n: p.detach().requires_grad_(n in self.adapted) for n, p in params.items()
                }
            state = UpdateState() if self.carried is None else self.carried.start()
            inner: Forward = self.reference
            predict, features = inner, _identity
            fast = self.fast_forward
            if fast is not None and self.scope == "head":  # ANIL: the body's features, once
                params = {n: p.expand(support_x.shape[0], *p.shape) for n, p in params.items()}
                inner = predict = fast.head
                features = partial(fast.embed, params)
            elif fast is not None:
                params = {n: p.expand(support_x.shape[0], *p.shape) for n, p in params.items()}
                inner = predict = fast
            trajectory = inner_loop(
                inner,
                params,
                self.adapted,
                features(support_x),
                support_y,
                partial(self.task_losses, ways=ways),
                steps,
                self.inner_rate,
                create_graph,
                partial(
                    self._at_step,
                    tasks=support_x.shape[0] if fast is not None else None,
                    detach=detach,
                ),
                self.update,
                batches,
                state,
            )
        return Adaptation(trajectory, predict, features, state)

    def _at_step(self, params: Params, step: int, tasks: int | None, detach: bool) -> Params:
        """``params`` with :meth:`step_parameters` of ``step`` put in (expanded to ``tasks``
        on the fast path; detached for evaluation)."""
        extra = self.step_parameters(step)
        if not extra:
            return params
        if detach:
            extra = {n: p.detach() for n, p in extra.items()}
        if tasks is not None:
            extra = {n: p.expand(tasks, *p.shape) for n, p in extra.items()}
        return {**params, **extra}

    def adapt_tasks(
        self, batch: EpisodeBatch, task: int | slice, steps: int, create_graph: bool, detach: bool
    ) -> Adaptation:
        """:meth:`adaptation` on the support sets of ``batch[task]`` (one task or a group), on
        the mini-batches of an :class:`OrderedBatch`."""
        return self.adaptation(
            batch.support_x[task],
            batch.support_y[task],
            batch.ways,
            steps,
            create_graph=create_graph,
            detach=detach,
            batches=batch.batches[task] if isinstance(batch, OrderedBatch) else None,
        )

    def ordered(
        self, batch: EpisodeBatch, steps: int, size: int | None, test: bool
    ) -> EpisodeBatch:
        """``batch`` with the :func:`support_batches` of ``size`` examples for ``steps`` inner
        steps, ordered by :meth:`order_keys` (as it is when each step reads all of the support
        set)."""
        batches = support_batches(
            self.order_keys(batch.keys, len(batch), test),
            batch.support_x.shape[1],
            steps,
            size or 0,
            batch.support_x.device,
        )
        if batches is None:
            return batch
        values = {f.name: getattr(batch, f.name) for f in fields(EpisodeBatch)}
        return OrderedBatch(**values, batches=batches)

    def order_keys(self, keys: Tensor | None, tasks: int, test: bool) -> Tensor:
        """The keys of the mini-batch orders of ``tasks`` tasks: their own ``keys`` (their
        places in their streams: the same whichever process or batch has them); without
        them, drawn from the global random state while meta-training, and at ``test`` those of
        the first episodes of the fixed set of seed :data:`TEST_ORDER_SEED`, so that a test
        does not depend on, or change, the global random state."""
        if keys is not None:
            return keys
        if test:
            return task_keys(TEST_ORDER_SEED, FIXED_STREAM, 0, tasks)
        return torch.randint(2**62, (tasks,))

    # ------------------------------------------------------------------ meta-testing
    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int) -> Predictor:
        """``eval_inner_steps`` steps on one task's support set; the predictor maps query
        inputs ``[n, ...]`` to outputs with the adapted parameters (no graph kept).

        Example:
            >>> predict = maml.adapt(episode.support_x, episode.support_y, episode.ways)
            >>> predict(episode.query_x).argmax(-1)   # predicted labels
        """
        fast = self.fast_forward is not None
        steps = self.eval_inner_steps
        batches = support_batches(
            self.order_keys(None, 1, test=True), len(support_x), steps,
            self.eval_inner_batch or 0, support_x.device,
        )  # fmt: skip
        if fast:
            support_x, support_y = support_x.unsqueeze(0), support_y.unsqueeze(0)
        elif batches is not None:
            batches = batches[0]
        with self.precision_scope(support_x.device):
            adapted = self.adaptation(support_x, support_y, ways, steps, False, True, batches)
        adapted.trajectory = [{n: p.detach() for n, p in adapted.trajectory[-1].items()}]

        def predictor(x: Tensor) -> Tensor:
            with torch.no_grad(), self.precision_scope(x.device):
                out = adapted.outputs(x.unsqueeze(0) if fast else x)
            return self.outputs_for(out[0] if fast else out, ways)

        return predictor

    def evaluate(self, batch: EpisodeBatch) -> Tensor:
        """Per-episode query metric ``[B]`` after ``eval_inner_steps`` steps (task groups at a
        time on the fast path, shared out to the workers on the CPU)."""
        batch = self.ordered(batch, self.eval_inner_steps, self.eval_inner_batch, test=True)
        return torch.cat(self.in_parallel(self.serial_evaluate, self.shares(batch)))

    def serial_evaluate(self, batch: EpisodeBatch) -> Tensor:
        results = []
        for task in self.task_groups(batch):
            with self.precision_scope(batch.query_x.device):
                adapted = self.adapt_tasks(batch, task, self.eval_inner_steps, False, detach=True)
                with torch.no_grad():
                    out = adapted.outputs(batch.query_x[task])
                    metric = self.task_metrics(out, batch.query_y[task], batch.ways)
            results.append(metric.reshape(-1))
        return torch.cat(results)

    # ------------------------------------------------------------------ meta-training
    def meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        """Mean over tasks of :meth:`group_loss`. On the fast path (with grad enabled) each
        task group is differentiated as soon as its loss is computed, in the workers' threads,
        and the result is a surrogate with the same value and gradient (module doc). The
        ``inner_batch`` mini-batches follow the tasks' keys (:meth:`order_keys`); a carried
        inner state advances by the batch's tasks (:meth:`carry`)."""
        batch = self.ordered(batch, self.inner_steps, self.inner_batch, test=False)
        params = [p for p in self.parameters() if p.requires_grad]
        if self.fast_forward is None or not torch.is_grad_enabled() or not params:
            sums = [self.group_loss(batch, task) for task in self.task_groups(batch)]
            self.carry([s[2] for s in sums])
            return MetaLoss(
                sum(s[0] for s in sums) / len(batch), sum(s[1] for s in sums) / len(batch)
            )

        def differentiate(share: EpisodeBatch) -> tuple[Any, ...]:
            value, metric, grads, blocks = 0.0, 0.0, [None] * len(params), []
            for task in self.task_groups(share):
                loss, hits, block = self.group_loss(share, task)
                step = torch.autograd.grad(loss / len(batch), params, allow_unused=True)
                grads = [_add(a, b) for a, b in zip(grads, step, strict=True)]
                value, metric = value + loss.detach(), metric + hits
                blocks.append(block)
            return value, metric, grads, blocks

        results = self.in_parallel(differentiate, self.shares(batch))
        self.carry([block for r in results for block in r[3]])
        value = sum(r[0] for r in results) / len(batch)
        surrogate = sum(
            (
                (p * g).sum()
                for r in results
                for p, g in zip(params, r[2], strict=True)
                if g is not None
            ),
            value.new_zeros(()),
        )
        loss = value + (surrogate - surrogate.detach())
        return MetaLoss(loss, sum(r[1] for r in results) / len(batch))

    def group_loss(
        self, batch: EpisodeBatch, task: int | slice
    ) -> tuple[Tensor, Tensor, Block | None]:
        """The sums over the tasks ``task`` of the batch (one task, or a task group: see
        :meth:`task_groups`) of the differentiable meta-loss and of the detached metric
        (:meth:`outer_loss` after ``inner_steps`` steps), and their share of the carried state
        (``None``: fresh)."""
        with self.precision_scope(batch.query_x.device):
            adapted = self.adapt_tasks(
                batch, task, self.inner_steps, self.second_order, not self.through_adaptation
            )
            loss, metric = self.outer_loss(batch, task, adapted)
        if self.carried is None:
            return loss, metric, None
        tasks = len(batch.support_x[task]) if isinstance(task, slice) else 1
        return loss, metric, self.carried.block(adapted.state, tasks, self.inner_steps)

    @abstractmethod
    def outer_loss(
        self, batch: EpisodeBatch, task: int | slice, adapted: Adaptation
    ) -> tuple[Tensor, Tensor]:
        """The sums over the tasks ``task`` of the batch of the differentiable meta-loss and
        of the detached metric, from their ``adapted`` parameters."""

    def carry(self, blocks: list[Block | None]) -> None:
        """Advance the carried state by the blocks of a meta-batch's tasks, in their order,
        after those of the processes before this one (:meth:`share_meta_batches`) and before
        those after it (:mod:`~lifelong.algorithms.carried_state`); nothing when fresh."""
        if self.carried is None:
            return
        steps = self.inner_steps
        mine = self.carried.fold(cast(list[Block], blocks), steps)
        self.carried.advance(self.carried.fold(self.gather(mine), steps), steps)

    # ------------------------------------------------------------------ threads
    def shares(self, batch: EpisodeBatch) -> list[EpisodeBatch]:
        """The batch split into one contiguous share of tasks per worker: on the CPU, on the
        fast path (``functional_call`` swaps the module's parameters, so the reference cannot
        run in two threads at once)."""
        if batch.support_x.device.type != "cpu" or self.fast_forward is None:
            return [batch]
        workers = min(self.workers or torch.get_num_threads(), len(batch))
        bounds = [len(batch) * i // workers for i in range(workers + 1)]
        return [batch[a:b] for a, b in pairwise(bounds)]  # type: ignore[misc]

    def in_parallel(
        self, fn: Callable[[EpisodeBatch], Any], shares: list[EpisodeBatch]
    ) -> list[Any]:
        """``[fn(share) for share in shares]``, one thread per share, each with one intra-op
        thread and the caller's grad mode and CPU autocast (both are per thread)."""
        if len(shares) == 1:
            return [fn(shares[0])]
        grad_mode = torch.is_grad_enabled()
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")

        def run(share: EpisodeBatch) -> Any:
            with torch.set_grad_enabled(grad_mode), torch.autocast("cpu", dtype, autocast):
                return fn(share)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(len(shares)) as pool:
                return list(pool.map(run, shares))
        finally:
            torch.set_num_threads(threads)


class ModelEmbedding(nn.Module):
    """A model's ``embed`` method as a module: the body of a network whose head is not used."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(model, "embed", None)):
            raise ValueError(f"the model {type(model).__name__} has no embed method")
        self.model = model
        self.embedding_dim = getattr(model, "embedding_dim", None)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.embed(x).flatten(1)


def _identity(x: Tensor) -> Tensor:
    return x


def _alone(value: Any) -> list[Any]:
    """Every process's ``value`` when this process is the only one."""
    return [value]


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Sum of two gradients, either of which may be ``None`` (unused)."""
    return a if b is None else b if a is None else a + b
