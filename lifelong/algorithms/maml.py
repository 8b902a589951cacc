"""MAML and its variants as options of one mechanism.

- MAML (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks"):
  inner steps ``theta'_i = theta - alpha grad L_support_i(theta)`` (eq. 1), outer objective
  ``sum_i L_query_i(theta'_i)``, with the true second-order meta-gradient (the inner gradients
  are differentiated, ``torch.autograd.grad(create_graph=True)``).
- ``first_order=True``: FOMAML (same paper, section 5.2): the inner gradients are constants, so
  the meta-gradient is the query gradient at the adapted parameters.
- ``adapt="head"``: ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): the inner loop
  adapts only ``model.head``; the body is meta-learned through the outer loop.
- ``meta_sgd=True``: Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
  Learning"): a learned inner rate per parameter entry, ``theta' = theta - alpha o grad``,
  initialised to ``inner_lr`` and meta-trained with the initialisation.
- MAML++ (Antoniou et al. 2019, "How to train your MAML", section 4): ``per_step_lr``, a
  learned rate per step and parameter tensor (LSLR); ``multi_step_loss``, the query loss after
  every inner step weighted by ``step_weights`` (MSL: uniform, then, over
  ``step_weight_annealing`` iterations, moved to the last step, :func:`step_weights`);
  ``first_order_steps``, first-order meta-gradients for the first iterations, then second
  order (derivative-order annealing, DA). The schedules follow the iteration the Trainer
  gives :meth:`MAML.at_iteration`. ``per_step_bn``: batch-norm weights and biases of their own
  after each inner step (BNWB), meta-learned and not adapted by the inner loop; step 0 keeps
  the model's. Per-step running statistics (BNRS) change no output here: batch norm
  normalises each task with its own batch statistics, as MAML++'s code does in every pass
  (``F.batch_norm(..., training=True)``; so does learn2learn's ``MetaBatchNorm``), where the
  per-step running statistics it keeps are never read.

Batch norm uses per-task batch statistics (models built with ``track_running_stats=False``),
as in the MAML paper; this is transductive: a query's prediction depends on the other queries
of its task. The fast path (:class:`~lifelong.algorithms.functional.TaskForward`, Conv-4 and
MLP; other models fall back to the reference loop over tasks, ``fast=False``) gives the same
losses and meta-gradients as the loop to float tolerance (``tests/test_maml.py``); on Omniglot
5-way 1-shot with a meta-batch of 32 it needs about half the loop's CPU time and a twentieth
of its memory (``benchmarks/maml_speed.py``).

:class:`FOMAML`, :class:`ANIL` and :class:`MetaSGD` are MAML with one option fixed, so that
each algorithm name is one class.

Example:
    >>> model = Conv4(1, 28, out_features=5, track_running_stats=False)
    >>> maml = MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3)
    >>> optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    >>> out = maml.meta_loss(sampler.sample(32).to("cpu"))
    >>> out.loss.backward(); optimizer.step()
    >>> maml.evaluate(test_batch)           # per-episode query accuracy [B]
    >>> anil = ANIL(model, inner_lr=0.1, inner_steps=5)    # MAML(model, adapt="head", ...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lifelong.algorithms.base import ModelFactory
from lifelong.algorithms.inner_loop import Adaptation, InnerLoopLearner
from lifelong.algorithms.inner_update import inner_update
from lifelong.algorithms.precision import Precision
from lifelong.data.episodes import EpisodeBatch

if TYPE_CHECKING:
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts


class MAML(InnerLoopLearner):
    """Model-Agnostic Meta-Learning and its variants (module doc).

    With ``inner_steps=0`` the meta-loss is the query loss at theta itself: plain training on
    all tasks jointly, the "pretrained" baseline of Finn et al. 2017 (section 5.1), which then
    adapts with ``eval_inner_steps`` gradient steps at test time.

    Args:
        model: the network (see :class:`~lifelong.algorithms.inner_loop.InnerLoopLearner`).
        inner_lr: inner learning rate alpha (Omniglot: 0.4; sinusoids: 0.01).
        inner_steps: inner steps while meta-training (0: none, joint training).
        eval_inner_steps: inner steps at test time (default ``inner_steps``); with
            ``per_step_lr`` the steps past the trained ones reuse the last step's rates.
        first_order: FOMAML.
        adapt: ``"all"`` (MAML) or ``"head"`` (ANIL).
        meta_sgd: learned per-parameter inner rates (Meta-SGD).
        per_step_lr: learned inner rates per step (MAML++ LSLR); with ``meta_sgd`` per step and
            per parameter entry.
        multi_step_loss: outer loss summed over the inner steps with ``step_weights``.
        step_weight_annealing: iterations over which :func:`step_weights` moves the
            multi-step loss to the last step (0: uniform weights throughout).
        first_order_steps: iterations of first-order meta-gradients before second order.
        per_step_bn: batch-norm weights and biases per inner step (MAML++ BNWB, module doc);
            the steps at test past the trained ones keep the last step's.
        regression: MSE instead of cross-entropy.
        fast: see :class:`~lifelong.algorithms.inner_loop.InnerLoopLearner` (``False``: the
            reference loop over tasks).
        task_chunk, workers: tasks run side by side on the fast path, and threads sharing
            out the tasks on the CPU (``None``: the measured defaults).
        inner_optimizer, inner_batch, eval_inner_batch, inner_optimizer_state: the inner
            update rule, mini-batches and whether Adam's state is carried from task to task
            (see :class:`~lifelong.algorithms.inner_loop.InnerLoopLearner`); Adam only with
            ``first_order``.
        precision: mixed precision of the task computations (see
            :class:`~lifelong.algorithms.inner_loop.InnerLoopLearner`); ``"bfloat16"`` on a
            CPU with AVX-512-BF16 is about 2.9x as fast as the plain loop
            (``benchmarks/maml_speed.py``, variant ``fast_bf16``), but its meta-gradient is
            not float32's (on Omniglot tasks at initialisation it differs by about 15% of its
            norm).
    """

    min_inner_steps = 0
    defaults: ClassVar[dict[str, Any]] = {"meta_batch": 32, "inner_lr": 0.4, "inner_steps": 1}
    dataset_defaults: ClassVar[
        dict[str, dict[str, Any]]
    ] = {  # Finn et al. 2017, section 5 and appendix A.1 (5-way settings)
        "omniglot": {"eval_inner_steps": 3},
        "miniimagenet": {
            "meta_batch": 4,
            "inner_lr": 0.01,
            "inner_steps": 5,
            "eval_inner_steps": 10,
        },
        "sinusoid": {"meta_batch": 25, "inner_lr": 0.01},
    }
    own_options = (
        *InnerLoopLearner.own_options, "per_step_lr", "multi_step_loss",
        "step_weight_annealing", "first_order_steps", "per_step_bn",
    )  # fmt: skip

    @classmethod
    def settings(cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory) -> dict[str, Any]:
        return {
            **super().settings(cfg, facts, models),
            "per_step_lr": cfg.per_step_lr,
            "multi_step_loss": cfg.multi_step_loss,
            "step_weight_annealing": cfg.step_weight_annealing,
            "first_order_steps": cfg.first_order_steps,
            "per_step_bn": cfg.per_step_bn,
        }

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        adapt: Literal["all", "head"] = "all",
        meta_sgd: bool = False,
        per_step_lr: bool = False,
        multi_step_loss: bool = False,
        step_weight_annealing: int = 0,
        first_order_steps: int = 0,
        per_step_bn: bool = False,
        regression: bool = False,
        fast: bool = True,
        task_chunk: int | None = None,
        workers: int | None = None,
        precision: Precision = "float32",
        inner_optimizer: str = "sgd",
        inner_batch: int | None = None,
        eval_inner_batch: int | None = None,
        inner_optimizer_state: str = "fresh",
    ) -> None:
        if not first_order and not inner_update(inner_optimizer).second_order:
            raise ValueError(
                f"inner_optimizer {inner_optimizer} takes first-order steps, but second-order "
                "MAML differentiates them: use sgd, or first-order MAML (fomaml)"
            )
        if inner_steps == 0 and (per_step_lr or multi_step_loss or per_step_bn):
            raise ValueError(
                "per_step_lr, multi_step_loss and per_step_bn need inner steps while "
                "meta-training; inner_steps is 0"
            )
        if per_step_bn and adapt == "head":
            raise ValueError(
                "per_step_bn makes the body depend on the inner step, but ANIL (adapt='head') "
                "computes the body's features once: use one or the other"
            )
        if step_weight_annealing and not multi_step_loss:
            raise ValueError("step_weight_annealing anneals the multi_step_loss: turn it on")
        params = dict(model.named_parameters())
        norms: list[str] = []
        if per_step_bn:
            layers = _batch_norms(model)
            norms = [n for n in params if n.rsplit(".", 1)[0] in layers]
            if not norms:
                raise ValueError("per_step_bn needs a model with affine batch norm layers")
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            adapt=adapt,
            regression=regression,
            fast=fast,
            task_chunk=task_chunk,
            workers=workers,
            precision=precision,
            inner_optimizer=inner_optimizer,
            inner_batch=inner_batch,
            eval_inner_batch=eval_inner_batch,
            inner_optimizer_state=inner_optimizer_state,
            fixed=tuple(norms),
        )
        self.first_order = first_order
        self.meta_sgd, self.per_step_lr = meta_sgd, per_step_lr
        self.multi_step_loss = multi_step_loss
        self.step_weight_annealing = step_weight_annealing
        self.first_order_steps = first_order_steps
        self.iteration = 0
        self.step_norms: nn.ParameterDict | None = None
        if per_step_bn:
            self.step_norms = nn.ParameterDict(
                {
                    _key(n): nn.Parameter(
                        params[n].detach().expand(inner_steps, *params[n].shape).clone()
                    )
                    for n in norms
                }
            )
        self.inner_lrs: nn.ParameterDict | None = None
        if meta_sgd or per_step_lr:
            rows = inner_steps if per_step_lr else 1
            self.inner_lrs = nn.ParameterDict(
                {
                    _key(n): nn.Parameter(
                        params[n].new_full((rows, *(params[n].shape if meta_sgd else ())), inner_lr)
                    )
                    for n in self.adapted
                }
            )
        self.step_weights: Tensor
        self.register_buffer("step_weights", torch.full((inner_steps,), 1.0 / max(inner_steps, 1)))

    def at_iteration(self, iteration: int) -> None:
        """MAML++'s schedules at ``iteration`` (module doc)."""
        self.iteration = iteration
        if self.step_weight_annealing:
            self.step_weights.copy_(
                step_weights(self.inner_steps, iteration, self.step_weight_annealing)
            )

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient differentiates through the inner gradients now."""
        return not self.first_order and self.iteration >= self.first_order_steps

    def inner_rate(self, name: str, step: int) -> float | Tensor:
        if self.inner_lrs is None:
            return self.inner_lr
        rates = self.inner_lrs[_key(name)]
        return rates[min(step, rates.shape[0] - 1)]

    def step_parameters(self, step: int) -> dict[str, Tensor]:
        if self.step_norms is None:
            return {}
        row = min(step, self.inner_steps) - 1
        return {name.replace(":", "."): rows[row] for name, rows in self.step_norms.items()}

    def outer_loss(
        self, batch: EpisodeBatch, task: int | slice, adapted: Adaptation
    ) -> tuple[Tensor, Tensor]:
        """Query loss at the adapted parameters (with ``multi_step_loss``: weighted over the
        inner steps) and query accuracy (or MSE) after the last step, summed over the tasks."""
        steps = self.inner_steps
        query_y = batch.query_y[task]
        features = adapted.features(batch.query_x[task])
        loss = 0.0
        for step in range(1, steps + 1) if self.multi_step_loss else [steps]:
            out = adapted.predict(adapted.trajectory[step], features)
            weight = self.step_weights[step - 1] if self.multi_step_loss else 1.0
            loss = loss + weight * self.task_losses(out, query_y, batch.ways).sum()
        return loss, self.task_metrics(out.detach(), query_y, batch.ways).sum()


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, section 5.2): ``MAML(first_order=True)``."""

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__(model, **{**options, "first_order": True})


class ANIL(MAML):
    """ANIL (Raghu et al. 2020): ``MAML(adapt="head")``, only the head adapts."""

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__(model, **{**options, "adapt": "head"})


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): ``MAML(meta_sgd=True)``, a learned rate per parameter."""

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__(model, **{**options, "meta_sgd": True})


MIN_STEP_WEIGHT = 0.03
"""The share of ``1 / steps`` that every step but the last keeps after the annealing (MAML++)."""


def step_weights(steps: int, iteration: int, annealing: int) -> Tensor:
    """The multi-step loss weights of MAML++ (Antoniou et al. 2019, section 4, MSL) at
    ``iteration``: uniform ``1 / steps`` at first; every step but the last loses ``1 / steps``
    over ``annealing`` iterations, down to ``MIN_STEP_WEIGHT / steps``, and the last gains
    what they lose (the weights sum to 1 throughout).

    Example:
        >>> step_weights(5, 0, 100)       # tensor([0.2, 0.2, 0.2, 0.2, 0.2])
        >>> step_weights(5, 100, 100)     # tensor([0.006, 0.006, 0.006, 0.006, 0.976])
    """
    uniform = 1.0 / steps
    floor = MIN_STEP_WEIGHT * uniform
    early = max(uniform - uniform * iteration / annealing, floor)
    weights = torch.full((steps,), early)
    weights[-1] = 1.0 - (steps - 1) * early
    return weights


def _batch_norms(model: nn.Module) -> set[str]:
    """Names of the affine batch-norm layers of ``model``."""
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
    }


def _key(name: str) -> str:
    """A parameter name as a ParameterDict key (no dots)."""
    return name.replace(".", ":")
