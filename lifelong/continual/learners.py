"""The continual learners by name, built from a meta-trained algorithm.

=============  =======================================================================
``prototypes`` :class:`~lifelong.continual.prototypes.PrototypeMemory` over the run's
               embedding (Snell et al. 2017's classifier, class means updated online)
``oml``        :class:`~lifelong.continual.online.OnlineSGD` with the representation
               frozen and the head learned online (Javed & White 2019's meta-test)
``finetune``   the same network, everything trained online: naive fine-tuning from the
               meta-learned initialisation
``replay``     fine-tuning plus experience replay from a reservoir buffer (Chaudhry et
               al. 2019)
=============  =======================================================================

The representation is the run's RLN (OML) or its embedding network (ProtoNet, FineTune and
any algorithm whose model has an ``embed`` method); the head is the OML run's PLN, or a linear
layer, with a fresh zero output layer of one row per stream class (so a new class starts at
logit 0), except for regression, where the OML run's PLN is kept as meta-learned.

Example:
    >>> learner = make_learner("replay", trained.algorithm, num_classes=600, seed=0,
    ...                        settings=LearnerSettings(lr=0.01, buffer=500))
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import Tensor, nn

from lifelong.algorithms.base import Algorithm
from lifelong.continual.learner import ContinualLearner
from lifelong.continual.online import OnlineSGD
from lifelong.continual.prototypes import PrototypeMemory
from lifelong.continual.replay import ReservoirBuffer

LEARNERS = ("prototypes", "oml", "finetune", "replay")


@dataclass(frozen=True)
class LearnerSettings:
    """Settings of the SGD learners (``oml``, ``finetune``, ``replay``).

    Args:
        lr: learning rate; ``None``: an OML run's inner-loop rate (the rate its representation
            was meta-trained for), else 0.01.
        optimizer: ``"sgd"`` or ``"adam"``.
        batch_size: incoming examples per update; ``None``: the OML run's online batch, else 1.
        buffer: capacity of the replay buffer (``replay`` only).
        replay_batch: buffer examples mixed into each update (``replay`` only).
    """

    lr: float | None = None
    optimizer: str = "sgd"
    batch_size: int | None = None
    buffer: int = 500
    replay_batch: int = 10


class Embedding(nn.Module):
    """A model's ``embed`` method as a module (a backbone whose head is not used)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.embed(x).flatten(1)


def representation_of(algorithm: Algorithm) -> nn.Module:
    """The network that maps inputs to features: OML's RLN, an ``encoder`` (ProtoNet,
    FineTune), or the ``embed`` of a ``model`` (MAML family)."""
    for name in ("representation", "encoder"):
        module = getattr(algorithm, name, None)
        if isinstance(module, nn.Module):
            return module
    model = getattr(algorithm, "model", None)
    if isinstance(model, nn.Module) and callable(getattr(model, "embed", None)):
        return Embedding(model)
    raise ValueError(f"{type(algorithm).__name__} has no representation to learn a stream with")


def embedding_of(algorithm: Algorithm) -> Callable[[Tensor], Tensor]:
    """The features prototypes are computed in: ``algorithm.embed`` when it has one (ProtoNet,
    OML), ``features`` (FineTune's normalised embedding), else the representation."""
    for name in ("embed", "features"):
        method = getattr(algorithm, name, None)
        if callable(method):
            return method
    return representation_of(algorithm)


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def network_of(algorithm: Algorithm, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Copies of the run's representation and head (see the module doc)."""
    body = copy.deepcopy(representation_of(algorithm))
    prediction = getattr(algorithm, "prediction", None)
    if isinstance(prediction, nn.Module):
        head = copy.deepcopy(prediction)
        if not algorithm.regression:
            head.head = zero_linear(head.head.in_features, num_classes)
        return body, head
    dim = getattr(body, "embedding_dim", None) or getattr(
        getattr(body, "model", None), "embedding_dim", None
    )
    if not isinstance(dim, int):
        raise ValueError(f"the representation of {type(algorithm).__name__} has no embedding_dim")
    if algorithm.regression:
        raise ValueError(
            f"{type(algorithm).__name__} is a regression run without a prediction network; "
            "the SGD learners need an OML run for regression streams"
        )
    return body, zero_linear(dim, num_classes)


def resolve_settings(algorithm: Algorithm, settings: LearnerSettings) -> LearnerSettings:
    """``settings`` with the defaults that depend on the run filled in: the learning rate
    (an OML run's inner rate, else 0.01) and the batch size (an OML run's online batch,
    else 1)."""
    is_oml = isinstance(getattr(algorithm, "prediction", None), nn.Module)
    lr = settings.lr
    if lr is None:
        lr = float(algorithm.inner_lr) if is_oml else 0.01
    batch_size = settings.batch_size or (getattr(algorithm, "online_batch", 1) if is_oml else 1)
    return replace(settings, lr=lr, batch_size=batch_size)


def make_learner(
    name: str,
    algorithm: Algorithm,
    num_classes: int,
    seed: int = 0,
    settings: LearnerSettings | None = None,
) -> ContinualLearner:
    """A fresh learner ``name`` (one of :data:`LEARNERS`) for a stream of ``num_classes``
    classes, from a trained ``algorithm`` (in eval mode; it is copied, never changed).

    Raises:
        ValueError: an unknown learner, a learner that does not fit the run (prototype memory
            on a regression run), or a replay buffer of size 0.
    """
    settings = resolve_settings(algorithm, settings or LearnerSettings())
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose one of {', '.join(LEARNERS)}")
    if name == "prototypes":
        if algorithm.regression:
            raise ValueError(
                "prototype memory classifies by class means, but this is a regression run: "
                "use --learner oml, finetune or replay"
            )
        return PrototypeMemory(
            embedding_of(algorithm),
            num_classes,
            distance=getattr(algorithm, "distance", "sqeuclidean"),
            p=getattr(algorithm, "p", 2.0),
            temperature=getattr(algorithm, "temperature", 1.0),
        )
    buffer = None
    if name == "replay":
        if settings.buffer < 1:
            raise ValueError(
                f"--learner replay needs a replay buffer of at least 1 example, got --buffer "
                f"{settings.buffer}"
            )
        buffer = ReservoirBuffer(settings.buffer, seed=seed)
    body, head = network_of(algorithm, num_classes)
    return OnlineSGD(
        body,
        head,
        settings.lr,
        num_classes,
        train_body=name != "oml",
        buffer=buffer,
        replay_batch=settings.replay_batch,
        batch_size=settings.batch_size,
        optimizer=settings.optimizer,
        regression=algorithm.regression,
    )
