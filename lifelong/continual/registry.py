"""The continual learners and protocols by name, and :func:`make_learner`.

This module imports no torch at module level: the names (:data:`LEARNERS`,
:data:`PROTOCOLS`) and :class:`LearnerSettings` are read by the command line's help without
loading any model code; :func:`make_learner` imports the learners when it builds one.

=================== ==================================================================
``prototypes``      a streaming class model over the run's frozen embedding
                    (:mod:`lifelong.continual.classifiers`, ``--classifier``: class means,
                    CL2N, streaming LDA, Gaussians), fitted from running sums
``online-sgd``      :class:`~lifelong.continual.online.OnlineSGD` with the representation
                    frozen and the head learned online (OML's meta-test, Javed & White 2019)
``online-finetune`` the same network, everything trained online: naive fine-tuning from the
                    meta-learned initialisation
``replay``          fine-tuning plus experience replay from a reservoir buffer (Chaudhry et
                    al. 2019)
=================== ==================================================================

The representation is the run's RLN (OML) or its embedding network (ProtoNet, FineTune and
any algorithm whose model has an ``embed`` method); the head is the OML run's PLN, or a linear
layer, with a fresh zero output layer of one row per stream class (so a new class starts at
logit 0), except for regression, where the OML run's PLN is kept as meta-learned
(:func:`~lifelong.continual.online.network_of`).

Example:
    >>> learner = make_learner("replay", trained.algorithm, num_classes=600, seed=0,
    ...                        settings=LearnerSettings(lr=0.01, buffer=500))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from lifelong.continual.classifiers.registry import DEFAULT_CLASSIFIER, make_classifier

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm
    from lifelong.continual.base import ContinualLearner
    from lifelong.data.classes import ClassDataset

LEARNERS: dict[str, str] = {
    "prototypes": "a class model (--classifier) of the run's frozen embedding, from running sums",
    "online-sgd": "representation frozen, head learned online by SGD (OML's meta-test)",
    "online-finetune": "the whole network fine-tuned online by SGD",
    "replay": "online fine-tuning with experience replay from a reservoir buffer",
}
"""The continual learners: name -> what it does (one line)."""

RENAMED = {"oml": "online-sgd", "finetune": "online-finetune"}
"""Former learner names -> their new names (refused with a hint)."""


@dataclass(frozen=True)
class Protocol:
    """A published protocol: what it streams and when it reports
    (:mod:`lifelong.continual.protocols` describes them).

    Attributes:
        name: the protocol's name.
        default_classes: classes (tasks x ways, or functions) in the stream by default.
        report_at: class counts after which the learner is tested (the stream's own size is
            always added); ``None``: after every step.
        regression: the stream is a regression stream.
    """

    name: str
    default_classes: int
    report_at: tuple[int, ...] | None
    regression: bool = False


OMNIGLOT_REPORT = (10, 50, 100, 200, 400, 600)
PROTOCOLS = {
    "continual-omniglot": Protocol("continual-omniglot", 600, OMNIGLOT_REPORT),
    "class-incremental": Protocol("class-incremental", 50, (1, 2, 5, *range(10, 10_001, 10))),
    "task-sequence": Protocol("task-sequence", 100, None),
    "incremental-sine": Protocol("incremental-sine", 10, None, regression=True),
}


def check_learner(name: str) -> None:
    """Raise a one-line ``ValueError`` unless ``name`` is a key of :data:`LEARNERS`; former
    names are answered with their new name."""
    if name in RENAMED:
        raise ValueError(f"learner {name!r} was renamed: use --learner {RENAMED[name]}")
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose one of {', '.join(LEARNERS)}")


@dataclass(frozen=True)
class LearnerSettings:
    """Settings of the learners: the class model of ``prototypes``, the SGD of the others
    (``online-sgd``, ``online-finetune``, ``replay``).

    Args:
        classifier: ``prototypes`` only: the class model
            (:mod:`lifelong.continual.classifiers.registry`).
        classifier_options: its hyper-parameters (e.g. ``{"shrinkage": 0.2}``).
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
    classifier: str = DEFAULT_CLASSIFIER
    classifier_options: dict[str, float] = field(default_factory=dict)


def resolve_settings(algorithm: Algorithm, settings: LearnerSettings) -> LearnerSettings:
    """``settings`` with the defaults that depend on the run filled in: the learning rate
    (the rate the run meta-learned online SGD for, OML's inner rate, else 0.01) and the batch
    size (its online batch, else 1)."""
    lr = settings.lr
    if lr is None:
        lr = algorithm.online_lr if algorithm.online_lr is not None else 0.01
    batch_size = settings.batch_size or algorithm.online_batch
    return replace(settings, lr=float(lr), batch_size=batch_size)


def make_learner(
    name: str,
    algorithm: Algorithm,
    num_classes: int,
    seed: int = 0,
    settings: LearnerSettings | None = None,
    training: ClassDataset | None = None,
) -> ContinualLearner:
    """A fresh learner ``name`` (one of :data:`LEARNERS`) for a stream of ``num_classes``
    classes, from a trained ``algorithm`` (in eval mode; it is copied, never changed);
    ``training``: the run's meta-training split, for class models that need it (CL2N).

    Raises:
        ValueError: an unknown (or renamed) learner, a learner that does not fit the run
            (prototype memory on a regression run), or a replay buffer of size 0.
    """
    from lifelong.continual.online import OnlineSGD, network_of
    from lifelong.continual.replay import ReservoirBuffer

    check_learner(name)
    settings = resolve_settings(algorithm, settings or LearnerSettings())
    if name == "prototypes":
        return make_classifier(
            settings.classifier, algorithm, num_classes, training, settings.classifier_options
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
        train_body=name != "online-sgd",
        buffer=buffer,
        replay_batch=settings.replay_batch,
        batch_size=settings.batch_size,
        optimizer=settings.optimizer,
        regression=algorithm.regression,
    )
