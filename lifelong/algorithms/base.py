"""The one protocol every few-shot learner follows.

An :class:`Algorithm` is an ``nn.Module`` holding the meta-learned state (an initialisation, an
embedding, learned inner rates...). It is trained by minimising :meth:`Algorithm.meta_loss` over
batches of episodes and used on a new task through :meth:`Algorithm.adapt`, which turns a
support set into a predictor for the task's queries.

An algorithm also describes itself, so that nothing else keeps lists of algorithm names: its
paper's defaults (:attr:`Algorithm.defaults`, per dataset in
:attr:`Algorithm.dataset_defaults`), what it can do (:attr:`Algorithm.fixed_head`,
:attr:`Algorithm.task_batch_norm`, :attr:`Algorithm.solves_regression`,
:attr:`Algorithm.splittable`, :meth:`Algorithm.can_back_store`), the run options only it reads
(:attr:`Algorithm.own_options`) and how it is built from a run's config
(:meth:`Algorithm.from_config`). :mod:`lifelong.algorithms.registry` maps names to classes.

Example:
    >>> class Toy(Algorithm):
    ...     defaults = {"meta_batch": 4}
    ...     @classmethod
    ...     def from_config(cls, cfg, facts, models):
    ...         return cls(models(None))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lifelong.data.episodes import EpisodeBatch

if TYPE_CHECKING:
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts

Predictor = Callable[[Tensor], Tensor]
"""Maps query inputs ``[n, ...]`` to logits ``[n, ways]`` (classification) or predictions
``[n, out]`` (regression)."""


@dataclass
class MetaLoss:
    """What one meta-training step produces: the scalar to back-propagate and the detached
    mean query metric of the batch (accuracy as a fraction, or MSE for regression)."""

    loss: Tensor
    metric: Tensor


def global_labels(batch: EpisodeBatch, outputs: int, who: str) -> tuple[Tensor, Tensor]:
    """The dataset class ids ``classes[b, y]`` of a batch's support and query labels, for a
    learner with one output per class of the training split (``outputs``); a batch without
    class ids, or with ids outside ``0..outputs-1``, is a ``ValueError`` naming ``who``."""
    if batch.classes is None:
        raise ValueError(f"{who} learns global class ids, but the batch has no `classes`")
    low, high = int(batch.classes.min()), int(batch.classes.max())
    if low < 0 or high >= outputs:
        raise ValueError(
            f"class id {high if high >= outputs else low} outside {who}'s {outputs} outputs "
            "(0..{}): build it with one output per class of the meta-training split".format(
                outputs - 1
            )
        )
    return batch.classes.gather(1, batch.support_y), batch.classes.gather(1, batch.query_y)


class ModelFactory(Protocol):
    """``models(out_features)``: the run's backbone for its data,
    ending in a linear head of ``out_features`` outputs (``None``: an embedding network);
    batch norm tracks running statistics unless the algorithm normalises each task with its
    own (:attr:`Algorithm.task_batch_norm`)."""

    def __call__(self, out_features: int | None) -> nn.Module: ...


class Algorithm(nn.Module, ABC):
    """Base class of all few-shot learners.

    Subclasses implement :meth:`meta_loss`, :meth:`adapt` and :meth:`from_config`, and state
    their facts as class attributes (module doc). Instances set ``regression = True`` when
    they were built for regression tasks.
    """

    regression: bool = False

    defaults: ClassVar[Mapping[str, Any]] = {}
    """Run options (:class:`~lifelong.pipeline.config.RunConfig` fields) as the algorithm's
    paper sets them, used where the user gave no value; e.g. ProtoNet's one episode per
    step, ``{"meta_batch": 1}``."""
    dataset_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    """Defaults for one dataset (a name of :mod:`lifelong.data.registry`), over
    :attr:`defaults`: MAML's inner rate is 0.4 on Omniglot and 0.01 on sinusoids."""
    fixed_head: ClassVar[bool] = False
    """The model ends in a ``ways``-output head: tasks must have the training ways."""
    task_batch_norm: ClassVar[bool] = False
    """Batch norm uses each task's own batch statistics (transductive): an image's embedding
    depends on the images beside it, so the model cannot back a class store."""
    solves_regression: ClassVar[bool] = False
    """Can learn regression tasks (sinusoids) as well as classification."""
    splittable: ClassVar[bool] = True
    """The meta-batch can be shared out over processes (``torchrun``)."""
    min_ways: ClassVar[int] = 2
    """The fewest classes of a training episode its meta-loss can learn from (a one-class
    episode gives ProtoNet or MAML a loss of 0; OML and ANML learn one class's trajectory
    against the rest of the meta-batch, the transfer baseline global classes)."""
    learns_class_ids: ClassVar[bool] = False
    """Learns the dataset classes of the training split (:func:`global_labels`), so it
    cannot meta-train on made-up tasks without labels (``labels: none``)."""
    evaluates_embeddings: ClassVar[bool] = False
    """Its test metric is a function of each image's own embedding (:meth:`evaluate_embedded`),
    so a fixed test set can embed each of its images once, whatever the episodes reuse."""
    own_options: ClassVar[tuple[str, ...]] = ()
    """Run options that only some algorithms read, and this one does (e.g. ``precision``);
    setting one of them for an algorithm that does not list it is an error."""

    @classmethod
    def can_back_store(cls) -> bool:
        """Whether a class model (class store, ``Learner.adapt``) can be fitted to its
        embedding: a fixed embedding per image (an :meth:`embedding` or :meth:`body`, no
        fixed head, no per-task batch statistics)."""
        has_embedding = cls.embedding is not Algorithm.embedding or cls.body is not Algorithm.body
        return has_embedding and not cls.fixed_head and not cls.task_batch_norm

    @classmethod
    def defaults_for(cls, dataset: str) -> dict[str, Any]:
        """:attr:`defaults` with :attr:`dataset_defaults` of ``dataset`` over them."""
        return {**cls.defaults, **cls.dataset_defaults.get(dataset, {})}

    @classmethod
    def from_config(cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory) -> Algorithm:
        """The algorithm of a run, with a fresh model from ``models``; ``cfg`` is resolved
        (every default filled in) and checked against the data of ``facts``. An algorithm
        used only from Python need not define it."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a run's config")

    # ------------------------------------------------------------------ what others use
    def body(self) -> nn.Module:
        """The network that maps inputs to features (continual learners copy and train it)."""
        raise ValueError(f"{type(self).__name__} has no representation to learn a stream with")

    def embedding(self) -> Callable[[Tensor], Tensor]:
        """The features prototypes are computed in (class store, prototype memory)."""
        return self.body()

    def prediction_network(self) -> nn.Module | None:
        """A meta-learned network on top of :meth:`body` (OML's PLN), or ``None``."""
        return None

    distance: str = "sqeuclidean"
    """The distance of the embedding space (ProtoNet's own; squared Euclidean otherwise)."""
    p: float = 2.0
    temperature: float = 1.0
    online_lr: float | None = None
    """The learning rate it meta-learned online SGD for (OML), or ``None``."""
    online_batch: int = 1
    functions: int | None = None
    """Regression on trajectories of this many functions (OML's one-hot input), or ``None``."""

    @property
    def test_steps(self) -> int | None:
        """The adaptation steps taken at test time, if any."""
        return None

    def at_iteration(self, iteration: int) -> None:
        """Called by the Trainer before each meta-update with the number done so far, for
        training schedules (MAML++'s); what it sets must follow from ``iteration`` alone, so
        that a resumed run goes on exactly."""
        return None

    def share_meta_batches(self, gather: Callable[[Any], list[Any]]) -> None:
        """Called by the Trainer of a run whose meta-batches are shared out over processes
        (``torchrun``): ``gather(value)`` returns every process's ``value`` (tensors, numbers,
        tuples...), in the order of their tasks in the meta-batch; every process calls it at
        the same point of :meth:`meta_loss`. For state that sums up a meta-batch's tasks in
        order (an inner loop's carried Adam state); others need nothing."""
        return None

    @abstractmethod
    def meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        """The meta-training objective on a batch of episodes (floats, on this module's
        device)."""

    def evaluate_embedded(
        self, support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor, ways: int
    ) -> Tensor:
        """Per-episode query metric ``[B]`` from embeddings (``support [B, N*K, D]``,
        ``query [B, N*Q, D]``), for the algorithms that :attr:`evaluates_embeddings`."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate from embeddings")

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
