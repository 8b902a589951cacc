"""Lifelong-learning protocols: a stream, a learner, evaluations, metrics over seeds.

:func:`run_stream` shows one stream to one learner and tests it, at the chosen points, on the
held-out examples of every class seen so far; :func:`run_seeds` repeats this over seeds (a new
stream order and a fresh learner each time) and :class:`StreamResult` summarises the seeds
(mean and 95% confidence interval of the accuracy against the number of classes learned, the
accuracy matrix, forgetting, backward transfer; :mod:`lifelong.continual.metrics`).

The published protocols, by name (:data:`~lifelong.continual.registry.PROTOCOLS`), run on a
trained run folder through :func:`run_protocol`:

``continual-omniglot``
    Javed & White 2019 and Beaulieu et al. 2020 ("Learning to Continually Learn", ANML): after
    meta-training on the Omniglot background set, learn classes of the evaluation set (Lake's
    split, 659 characters, no rotations) one after another, 15 training images per class each
    seen once (600 classes: 9,000 online steps), and test on the class's other 5 images;
    accuracy on all classes seen after 10, 50, 100, 200, 400 and 600 classes. Published at 600
    classes (as reported by Beaulieu et al. 2020): OML 18.2% (44.2% when only its last layer
    learns), ANML 63.8%, an i.i.d.-trained oracle 71%.
``class-incremental``
    the same on any image run: classes of the run's own ``split`` (default ``test``) learned
    one after another, 15 images each, tested on 5 others; accuracy on all classes seen
    after 1, 2, 5, 10, 20, 30... classes.
``task-sequence``
    successive 5-way 5-shot tasks with disjoint classes of the run's test split (15 test
    images per class), evaluated task-aware after every task: the accuracy matrix, backward
    transfer and forgetting (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018).
``incremental-sine``
    Javed & White 2019, section 4.1: 10 sine functions learned one after another (inputs carry
    the function's one-hot id), MSE on all of them after each; needs an OML sinusoid run.

Example:
    >>> result = run_protocol("runs/omniglot-proto", "continual-omniglot", learner="prototypes",
    ...                       seeds=10)
    >>> result.summary()["accuracy_by_classes"]["600"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lifelong.continual.base import ContinualLearner
from lifelong.continual.classifiers.base import ClassModel
from lifelong.continual.classifiers.registry import build_classifier, classifier_class
from lifelong.continual.metrics import (
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    forgetting,
    seen_accuracy,
)
from lifelong.continual.registry import (
    PROTOCOLS,
    LearnerSettings,
    check_learner,
    make_learner,
    resolve_settings,
)
from lifelong.continual.streams import ClassStream, SineStream, task_sequence
from lifelong.stats import confidence_interval, format_mean_ci

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm

Stream = ClassStream | SineStream
TASK_WAYS, TASK_SHOTS, TASK_QUERIES = 5, 5, 15
CLASS_TRAIN, CLASS_TEST = 15, 5
"""Images per class learned and tested by the class-incremental streams (continual Omniglot)."""


# --------------------------------------------------------------------------- one seed
def report_points(stream: Stream, report_at: Sequence[int] | None) -> list[int]:
    """The class counts at which ``stream`` is evaluated: those of ``report_at`` that fall on
    a step boundary and do not exceed the stream, plus the stream's end; every step if
    ``report_at`` is ``None``."""
    boundaries = stream.boundaries
    if report_at is None:
        return boundaries
    points = sorted({n for n in report_at if n in set(boundaries)} | {boundaries[-1]})
    return points


def example_metrics(
    learner: ContinualLearner, x: Tensor, y: Tensor, group: Tensor
) -> tuple[Tensor, Tensor | None]:
    """The metric of each test example ``[n]``, twice: choosing among all classes seen, and
    choosing among the classes of the example's own group only (``group [num_classes]``: the
    group of each class), as in task-incremental evaluation; 1/0 for a right/wrong class. For
    regression: the squared error, and ``None``."""
    output = learner.predict(x)
    if learner.regression:
        return (output - y).pow(2).flatten(1).mean(1).double(), None
    group = group.to(output.device)
    own = group.unsqueeze(0) == group[y].unsqueeze(1)
    within = output.masked_fill(~own, -math.inf).argmax(-1) == y
    return (output.argmax(-1) == y).double(), within.double()


def per_class_mean(value: Tensor, label: Tensor, num_classes: int) -> Tensor:
    """Mean of ``value [n]`` per ``label``: ``[num_classes]``, NaN where a label has none."""
    label = label.cpu()
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, label, value.cpu())
    counts = torch.bincount(label, minlength=num_classes).double()
    return sums / counts  # 0 / 0 = NaN for classes not tested


@dataclass
class SeedResult:
    """One seed at the class counts ``boundaries`` (the ``T`` evaluation points).

    Attributes:
        per_class: ``[T, C]``, the metric of each class after each evaluation (NaN before the
            class arrived): for class-incremental streams the class is chosen among all
            classes seen, for task-aware streams among its group's classes.
        within_group: ``[T, C]``, the accuracy choosing among the classes of the class's own
            group only (the classes learned between the same two evaluations): what the
            learner still knows about a group, whatever arrived since (``None`` for
            regression).
        seconds: the time the stream took (learning and testing).
    """

    per_class: Tensor
    within_group: Tensor | None
    boundaries: list[int]
    seconds: float


def run_stream(
    learner: ContinualLearner,
    stream: Stream,
    report_at: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> SeedResult:
    """Show ``stream`` to ``learner`` step by step; after the steps that end at a count of
    :func:`report_points`, test it on the held-out examples of all classes seen so far."""
    points = report_points(stream, report_at)
    group = torch.searchsorted(torch.tensor(points), torch.arange(stream.num_classes), right=True)
    started = time.perf_counter()
    test_x: list[Tensor] = []
    test_y: list[Tensor] = []
    labels: list[Tensor] = []
    rows, within_rows = [], []
    for step, seen in zip(stream, stream.boundaries, strict=True):
        step = step.to(device)
        learner.observe(step.train_x, step.train_y)
        test_x.append(step.test_x)
        test_y.append(step.test_y)
        labels.append(step.classes.repeat_interleave(len(step.test_y) // len(step.classes)))
        if seen in points:
            label = torch.cat(labels)
            value, within = example_metrics(learner, torch.cat(test_x), torch.cat(test_y), group)
            if within is not None:
                within_rows.append(per_class_mean(within, label, stream.num_classes))
                if stream.task_aware:
                    value = within
            rows.append(per_class_mean(value, label, stream.num_classes))
    seconds = time.perf_counter() - started
    within_group = torch.stack(within_rows) if within_rows else None
    return SeedResult(torch.stack(rows), within_group, points, seconds)


# --------------------------------------------------------------------------- over seeds
def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and 95% CI half-width over seeds (``None`` where undefined)."""
    finite = torch.tensor([v for v in values if not math.isnan(v)], dtype=torch.float64)
    if finite.numel() == 0:
        return {"mean": None, "ci95": None}
    mean, ci95 = confidence_interval(finite)
    return {"mean": _json_number(mean), "ci95": _json_number(ci95)}


@dataclass
class StreamResult:
    """The seeds of one protocol run with one learner.

    Attributes:
        protocol, learner: names.
        metric: ``"accuracy"`` or ``"mse"``.
        seeds: the seeds (one stream order and one fresh learner each).
        results: one :class:`SeedResult` per seed.
        settings: what else defines the run (classes, learner settings, run folder...).
        task_aware: the stream was scored task-aware (then ``within_group`` is the metric).
    """

    protocol: str
    learner: str
    metric: str
    seeds: list[int]
    results: list[SeedResult]
    settings: dict[str, Any] = field(default_factory=dict)
    task_aware: bool = False

    @property
    def boundaries(self) -> list[int]:
        return self.results[0].boundaries

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def matrices(self, within_group: bool = False) -> list[Tensor]:
        """The accuracy matrix ``R`` of each seed (of the within-group accuracy if
        ``within_group``)."""
        return [
            accuracy_matrix(r.within_group if within_group else r.per_class, r.boundaries)
            for r in self.results
        ]

    def curves(self) -> Tensor:
        """``[seeds, T]``: the metric on all classes seen, after each evaluation."""
        return torch.stack([seen_accuracy(r.per_class) for r in self.results])

    def summary(self) -> dict[str, Any]:
        """Everything as plain JSON values: ``{metric}_by_classes`` (mean over seeds at each
        class count), ``ci95`` (its 95% CI half-width), ``forgetting``, ``bwt`` and
        ``average`` (ACC) as ``{"mean", "ci95"}``, the mean accuracy matrix, per-seed values;
        for class-incremental classification also ``within_group``: the same three of the
        within-group accuracy (:class:`SeedResult`), which only drops when the learner loses
        what it knew, not when new classes compete with old ones."""
        curves = self.curves()
        by_classes, ci95 = {}, {}
        for i, n in enumerate(self.boundaries):
            stats = _summary(curves[:, i].tolist())
            by_classes[str(n)], ci95[str(n)] = stats["mean"], stats["ci95"]
        matrices = self.matrices()
        forget = [forgetting(R, self.higher_is_better) for R in matrices]
        bwt = [backward_transfer(R) for R in matrices]
        average = [average_accuracy(R) for R in matrices]
        mean_matrix = torch.stack(matrices).mean(0)
        extra = {}
        if self.results[0].within_group is not None and not self.task_aware:
            within = self.matrices(within_group=True)
            extra["within_group"] = {
                "forgetting": _summary([forgetting(R) for R in within]),
                "bwt": _summary([backward_transfer(R) for R in within]),
                "average": _summary([average_accuracy(R) for R in within]),
            }
        return {
            "protocol": self.protocol,
            "learner": self.learner,
            "metric": self.metric,
            "seeds": len(self.seeds),
            "classes": self.boundaries[-1],
            f"{self.metric}_by_classes": by_classes,
            "ci95": ci95,
            "forgetting": _summary(forget),
            "bwt": _summary(bwt),
            "average": _summary(average),
            **extra,
            "accuracy_matrix": [[_json_number(v) for v in row] for row in mean_matrix.tolist()],
            "seconds_per_seed": _json_number(
                sum(r.seconds for r in self.results) / len(self.results)
            ),
            "settings": self.settings,
            "per_seed": {
                "seeds": self.seeds,
                f"{self.metric}_by_classes": [
                    [_json_number(v) for v in c] for c in curves.tolist()
                ],
                "forgetting": [_json_number(v) for v in forget],
                "bwt": [_json_number(v) for v in bwt],
            },
        }

    def table(self) -> str:
        """The summary as a few lines of text."""
        s = self.summary()
        percent = self.metric == "accuracy"

        def fmt(stats: dict[str, float | None]) -> str:
            mean = stats["mean"]
            if mean is None:
                return "n/a"
            return format_mean_ci(mean, stats["ci95"], percent=percent, ci_spec=".2g")

        name = "functions" if self.metric == "mse" else "classes"
        lines = [
            f"{self.protocol}, learner {self.learner}, {s['seeds']} seeds "
            f"(mean ± 95% CI over seeds)",
            f"{name:>9}  {self.metric} on all seen",
        ]
        for n in self.boundaries:
            key = str(n)
            stats = {"mean": s[f"{self.metric}_by_classes"][key], "ci95": s["ci95"][key]}
            lines.append(f"{n:>9}  {fmt(stats)}")
        lines.append(
            f"forgetting {fmt(s['forgetting'])}   BWT {fmt(s['bwt'])}   "
            f"ACC {fmt(s['average'])}   ({s['seconds_per_seed']:.1f} s per seed)"
        )
        if "within_group" in s:
            w = s["within_group"]
            lines.append(
                f"within groups: forgetting {fmt(w['forgetting'])}   BWT {fmt(w['bwt'])}   "
                f"ACC {fmt(w['average'])}"
            )
        return "\n".join(lines)


def run_seeds(
    make: Callable[[int], tuple[ContinualLearner, Stream]],
    seeds: Sequence[int],
    report_at: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> list[SeedResult]:
    """:func:`run_stream` for each seed, with the fresh learner and stream ``make(seed)``."""
    results = []
    for seed in seeds:
        torch.manual_seed(seed)
        learner, stream = make(seed)
        results.append(run_stream(learner, stream, report_at, device))
    return results


# --------------------------------------------------------------------------- from a run
def settings_of(
    learner: ContinualLearner, algorithm: Algorithm, settings: LearnerSettings
) -> dict[str, Any]:
    """What defines a learner beyond its name, as JSON: a class model's name and
    hyper-parameters (without CL2N's feature mean), or the SGD learners' settings with the
    run's defaults filled in."""
    if isinstance(learner, ClassModel):
        return {"classifier": {k: v for k, v in learner.config().items() if k != "feature_mean"}}
    described = asdict(resolve_settings(algorithm, settings))
    for key in ("classifier", "classifier_options"):
        del described[key]
    return described


def run_protocol(
    run_dir: str | Path,
    protocol: str,
    learner: str = "prototypes",
    classes: int | None = None,
    seeds: int = 10,
    settings: LearnerSettings | None = None,
    data_root: str | None = None,
    device: str = "cpu",
    checkpoint: str = "best",
    first_seed: int = 0,
    split: str = "test",
) -> StreamResult:
    """Run protocol ``protocol`` (a key of :data:`PROTOCOLS`) on the trained run ``run_dir``
    with ``learner`` over ``seeds`` seeds (``first_seed``, ``first_seed + 1``, ...). Image
    protocols stream the classes of ``split`` (``"val"``: for choosing settings without
    touching the test classes).

    Raises:
        ValueError: an unknown protocol or learner, a protocol or learner that does not fit
            the run, a stream longer than the classes available.
    """
    from lifelong.pipeline.data import load_data
    from lifelong.pipeline.trained import load_trained

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    check_learner(learner)
    settings = settings or LearnerSettings()
    classifier_class(settings.classifier)  # an unknown name fails before any loading
    if seeds < 1:
        raise ValueError(f"seeds must be positive, got {seeds}")
    spec = PROTOCOLS[protocol]
    trained = load_trained(run_dir, checkpoint, {"data_root": data_root})
    algorithm = trained.algorithm.to(device)
    kind = "a regression" if trained.facts.regression else "an image classification"
    if spec.regression != trained.facts.regression:
        need = "a regression (sinusoid)" if spec.regression else "an image classification"
        raise ValueError(f"{protocol} needs {need} run, but {str(run_dir)!r} is {kind} run")
    classes = spec.default_classes if classes is None else classes
    if protocol == "incremental-sine":
        functions = algorithm.functions
        if functions is None:
            raise ValueError(
                f"incremental-sine needs an OML sinusoid run (its input carries the function "
                f"id), but {str(run_dir)!r} is a {trained.config.algorithm} run"
            )
        if classes != functions:
            raise ValueError(
                f"the OML run {str(run_dir)!r} learns {functions} functions (its input width), "
                f"so the stream cannot have {classes}"
            )
        shots = trained.config.shots

        def stream_for(seed: int) -> Stream:
            return SineStream(functions, shots, 100, seed=seed)

    else:
        shape = trained.facts.image_shape
        if protocol == "continual-omniglot":
            from lifelong.data.registry import load_dataset

            if shape is None or shape[0] != 1 or shape[1] != shape[2]:
                raise ValueError(
                    f"continual-omniglot streams square grayscale images, but {str(run_dir)!r} "
                    f"was trained on {shape} images"
                )
            own = trained.config.data_root if trained.config.dataset == "omniglot" else None
            lake = load_dataset(
                "omniglot",
                root=data_root or own,
                class_split="lake",
                rotations=False,
                image_size=shape[1],
            )
            if split not in ("val", "test"):
                raise ValueError(
                    f"continual-omniglot streams the val or test classes, not {split!r}"
                )
            dataset = lake[split]
        else:
            splits = load_data(trained.config).splits or {}
            if split not in splits:
                raise ValueError(f"{trained.config.dataset} has no split {split!r} to stream")
            dataset = splits[split]
        if protocol == "task-sequence":
            if classes % TASK_WAYS:
                raise ValueError(
                    f"a sequence of {TASK_WAYS}-way tasks needs a multiple of {TASK_WAYS} "
                    f"classes, got {classes}"
                )

            def stream_for(seed: int) -> Stream:
                return task_sequence(
                    dataset, classes // TASK_WAYS, TASK_WAYS, TASK_SHOTS, TASK_QUERIES, seed=seed
                )

        else:

            def stream_for(seed: int) -> Stream:
                return ClassStream(dataset, classes, 1, CLASS_TRAIN, CLASS_TEST, seed=seed)

    stream_for(first_seed)  # bad sizes fail here, before any learning
    training = None
    if learner == "prototypes" and classifier_class(settings.classifier).needs_training:
        training = load_data(trained.config).splits["train"]
    # one learner first: a learner that does not fit the run fails here; a class model's
    # fixed parts (CL2N's feature mean) are computed once and copied for every seed
    first = make_learner(learner, algorithm, 1, first_seed, settings, training)
    described = settings_of(first, algorithm, settings)

    def make(seed: int) -> tuple[ContinualLearner, Stream]:
        stream = stream_for(seed)
        if isinstance(first, ClassModel):
            model = build_classifier(first.config(), algorithm.embedding(), stream.num_classes)
            return model, stream
        return make_learner(learner, algorithm, stream.num_classes, seed, settings), stream

    seed_list = list(range(first_seed, first_seed + seeds))
    results = run_seeds(make, seed_list, spec.report_at, device)
    return StreamResult(
        protocol,
        learner,
        "mse" if spec.regression else "accuracy",
        seed_list,
        results,
        {
            "run": str(run_dir),
            "checkpoint": checkpoint,
            "algorithm": trained.config.algorithm,
            "classes": classes,
            "split": split,
            **described,
        },
        task_aware=protocol == "task-sequence",
    )
