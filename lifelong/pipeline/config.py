"""The settings of one run, as one dataclass.

A run is described by a :class:`RunConfig`: built from the defaults, then a YAML file, then
command-line flags (each later source overrides the earlier ones), and saved, resolved, as
``RUN_DIR/config.yaml`` so that ``lifelong evaluate`` and ``lifelong.load`` rebuild exactly the
model that was trained.

Example:
    >>> cfg = RunConfig.from_yaml("configs/omniglot_protonet_5w1s.yaml")  # doctest: +SKIP
    >>> cfg = cfg.override(iterations=100, out="runs/quick")               # doctest: +SKIP
    >>> RunConfig(algorithm="maml", ways=20).episode_shape("test")
    (20, 1, 15)
"""

from __future__ import annotations

import difflib
import json
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml
from packaging.version import Version

from lifelong.algorithms.inner_update import INNER_OPTIMIZER_STATES, INNER_OPTIMIZERS
from lifelong.algorithms.precision import PRECISIONS
from lifelong.files import atomic_write
from lifelong.unlabeled.registry import TASK_CONSTRUCTIONS

BACKBONES = ("conv4", "resnet12", "mlp")
SCHEDULES = ("none", "cosine", "step", "linear")
HORIZONS = ("iterations", "budget")
META_OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
"""Device names; ``cuda:INDEX`` (e.g. ``cuda:1``) picks one GPU."""
DISTANCES = ("sqeuclidean", "euclidean", "lp", "cosine")
TRAIN_SPLITS = ("train", "trainval")
LABELS = ("dataset", "none")
BUILT_IN_FALLBACKS = {
    "meta_batch": 32,
    "meta_optimizer": "adam",
    "meta_lr": 1e-3,
    "lr_schedule": "none",
    "inner_optimizer": "sgd",
    "inner_optimizer_state": "fresh",
    "inner_batch": 0,
    "eval_inner_batch": 0,
}
"""Values of options an algorithm may set (``None`` fields), for algorithms that do not; a
checkpoint saved before an option existed ran with its value here
(:meth:`RunConfig.of_checkpoint`)."""


def option(
    default: Any,
    help: str,
    short: str | None = None,
    choices: tuple[str, ...] | None = None,
    bound: str | None = None,
    algorithm_option: bool = False,
) -> Any:
    """A :class:`RunConfig` field with what the command line and the checks need: its help
    line, a short flag, its choices, its ``bound`` (``"positive"`` or ``"non-negative"``),
    and whether only some algorithms read it (they list it in
    :attr:`~lifelong.algorithms.base.Algorithm.own_options`)."""
    metadata = {
        "help": help,
        "short": short,
        "choices": choices,
        "bound": bound,
        "algorithm_option": algorithm_option,
    }
    return field(default=default, metadata=metadata)


class ConfigError(ValueError):
    """A setting that is unknown, of the wrong type, out of range, or that does not fit the
    data. The message is one line that names the offending option and value."""


@dataclass(frozen=True)
class RunConfig:
    """Every option of a run. ``None`` means "the default of the algorithm or dataset".

    Data:
        algorithm: a name of :mod:`lifelong.algorithms.registry` (``lifelong algorithms``).
        dataset: a name of :data:`lifelong.data.registry.DATASETS` (``strokes``, ``omniglot``,
            ``sinusoid``...).
        data_root: where the dataset lives (or is downloaded to); ``None``: the cache folder.
        class_split: Omniglot's class split, ``vinyals`` (Vinyals et al. 2016, the published
            lists), ``random`` (a seeded partition of the same sizes) or ``lake``.
        rotations: add the 90/180/270 degree rotations of each class as new classes.
        test_rotations: ``False``: the test split without rotation classes, which
            ``rotations`` adds to the other splits (as Nichol et al. 2018's code tests);
            default (or ``True``): the test split as the others.
        image_size: image height = width in pixels.
        dataset_options: any further keyword arguments of the dataset's loader, e.g.
            ``{"classes": 200, "per_class": 10}`` for strokes.
        train_split: the split meta-trained on: ``train``, or ``trainval`` (train and
            validation classes together, as Snell et al. 2017 do for their final Omniglot
            models; there is then no held-out validation, and the last checkpoint is used).
        labels: ``dataset``, or ``none``: meta-train without reading a label of the training
            split; its images are a pool from which ``task_construction`` (``umtra``,
            ``cactus``, ``pseudo``: :mod:`lifelong.unlabeled`) makes the tasks, with its
            ``task_options``. Validation and test use the labelled held-out classes.
        augment: with labels, a random view of each image of every training episode
            (:class:`lifelong.data.augment.Augmentation`: ``shift`` pixels, ``rotate``
            degrees, ``scale``, ``elastic``, ``stroke``, ``dropout``); validation and test
            episodes are never augmented.

    Episodes (Vinyals et al. 2016): ``ways`` classes, ``shots`` support and ``queries`` query
    examples per class; the ``test_*`` values (default: the training ones) are used for
    validation and testing, e.g. ProtoNets train 60-way and test 5-way (Snell et al. 2017).

    Options left ``None`` that an algorithm sets take its paper's value
    (:func:`lifelong.pipeline.factory.resolve_config`); every value records where it came
    from (:meth:`RunConfig.source_of`), and ``config.yaml`` says so line by line.

    Meta-optimisation: ``meta_batch`` episodes per step, ``iterations`` steps of
    ``meta_optimizer`` (``adam``, or ``sgd`` without momentum: Reptile's outer step) with
    learning rate ``meta_lr``, ``lr_schedule`` ``none``, ``cosine`` (to 0 at the last step),
    ``linear`` (from 1 to 0 at the last step: Reptile's annealed step size) or ``step`` (times
    ``lr_gamma`` every ``lr_step`` iterations); ``lr_horizon`` ``budget`` ends the cosine and
    linear schedules at the time limit when that comes first (a schedule fitted to a time
    budget, as Li et al. 2020 fit it to an iteration budget; it then depends on the machine's
    speed); gradient-norm clipping at ``grad_clip``.

    Inner loop (MAML family, Reptile; FineTune's head fitting): ``inner_lr``, ``inner_steps``
    while meta-training and ``eval_inner_steps`` at test time; ``inner_optimizer`` (``sgd``, or
    ``adam`` with beta1 = 0, first order: Reptile's), ``inner_optimizer_state`` (Adam's state
    ``fresh`` in every inner loop, or ``carried`` from task to task and into test adaptations,
    as Nichol et al. 2018's code for Reptile keeps it), ``inner_batch`` and ``eval_inner_batch``
    (support examples per step, a per-task shuffle cut into batches; 0: all); MAML++ (Antoniou
    et al. 2019):
    ``per_step_lr`` (a learned inner learning rate per step and parameter tensor),
    ``multi_step_loss`` (the query loss after every inner step, weighted; its weights move to
    the last step over ``step_weight_annealing`` iterations), ``first_order_steps``
    (derivative-order annealing: first-order meta-gradients for that many iterations) and
    ``per_step_bn`` (batch-norm weights and biases of their own after each inner step).

    Model: ``backbone`` (``conv4``, ``resnet12``, ``mlp``), ``hidden`` (Conv-4: one number of
    filters; MLP: the hidden widths), ``strided`` (MAML's stride-2 Conv-4), ``pooling``
    (Conv-4: how many blocks, from the first, end in max-pooling; 4), ``distance``,
    ``distance_p`` and ``temperature`` (ProtoNet: logits ``-d / temperature``), ``precision``
    (ProtoNet, FineTune, the MAML family, Reptile: the network's autocast dtype, ``float32``,
    ``bfloat16`` or ``float16``) and
    ``channels_last`` (ProtoNet: the encoder's memory layout).

    Run: ``seed``, ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:INDEX``; under ``torchrun``
    ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``), ``deterministic`` (PyTorch's
    deterministic algorithms, so that a resumed CUDA run repeats an uninterrupted one exactly;
    on the CPU runs are reproducible without it), validation every ``val_every``
    iterations on ``val_episodes`` fixed episodes, ``test_episodes`` for ``lifelong evaluate``
    (default 1000, 600 on miniImageNet), a checkpoint every ``checkpoint_every`` iterations,
    the run folder ``out``, and ``time_limit``: stop (with a checkpoint and a validation)
    after this many minutes of training, even before ``iterations``.
    """

    algorithm: str = option("protonet", "The learner (see `lifelong algorithms`).", short="-a")
    dataset: str = option(
        "strokes", "strokes, omniglot, miniimagenet, cifar-fs, fc100, folder, sinusoid.", "-d"
    )
    data_root: str | None = option(None, "Dataset folder (default: the cache folder).")
    class_split: str | None = option(None, "Omniglot class split: vinyals, random or lake.")
    rotations: bool | None = option(None, "Rotations of each class as extra classes.")
    test_rotations: bool | None = option(
        None, "false: test on the unrotated classes only (default: as the other splits)."
    )
    image_size: int | None = option(None, "Image height = width in pixels.", bound="positive")
    dataset_options: dict[str, Any] | None = option(
        None, "Loader option KEY=VALUE, repeatable (strokes: classes=200)."
    )
    train_split: str = option(
        "train", "Meta-train on train, or trainval (no validation then).", choices=TRAIN_SPLITS
    )
    labels: str = option(
        "dataset", "Meta-train on the dataset's labels, or none (made-up tasks).", choices=LABELS
    )
    task_construction: str | None = option(
        None, "--labels none: umtra, cactus or pseudo.", choices=TASK_CONSTRUCTIONS
    )
    task_options: dict[str, Any] | None = option(
        None, "Task construction option KEY=VALUE, repeatable (umtra: shift=6)."
    )
    augment: dict[str, Any] | None = option(
        None, "Training-episode augmentation KEY=VALUE, repeatable (shift=2, rotate=10...)."
    )
    ways: int = option(5, "Classes per training episode.", "-n", bound="positive")
    shots: int = option(1, "Support examples per class.", "-k", bound="positive")
    queries: int = option(15, "Query examples per class.", "-q", bound="positive")
    test_ways: int | None = option(None, "Ways of validation/test episodes.", bound="positive")
    test_shots: int | None = option(None, "Shots of validation/test episodes.", bound="positive")
    test_queries: int | None = option(
        None, "Queries of validation/test episodes.", bound="positive"
    )
    meta_batch: int | None = option(
        None, "Episodes per meta-update (default: the algorithm's).", bound="positive"
    )
    iterations: int = option(1000, "Meta-updates.", bound="positive")
    meta_optimizer: str | None = option(
        None, "Meta-update: adam or sgd (default: the algorithm's; adam).", choices=META_OPTIMIZERS
    )
    meta_lr: float | None = option(
        None, "Learning rate of the meta-update (default: the algorithm's; 1e-3).", bound="positive"
    )
    lr_schedule: str | None = option(
        None, "none, cosine, linear or step (default: the algorithm's; none).", choices=SCHEDULES
    )
    lr_horizon: str = option(
        "iterations",
        "Where cosine and linear schedules reach 0: the last iteration, or (budget) whichever "
        "comes first, the last iteration or the end of the time limit.",
        choices=HORIZONS,
    )
    lr_step: int = option(2000, "step schedule: iterations between decays.", bound="positive")
    lr_gamma: float = option(0.5, "step schedule: decay factor.", bound="positive")
    grad_clip: float | None = option(None, "Clip the meta-gradient norm.", bound="positive")
    inner_lr: float | None = option(
        None,
        "Inner-loop (or FineTune head) learning rate (default: the algorithm's).",
        bound="positive",
    )
    inner_steps: int | None = option(
        None,
        "Inner-loop steps while meta-training (default: the algorithm's).",
        bound="non-negative",
    )
    eval_inner_steps: int | None = option(
        None, "Inner-loop steps at test time (default: the algorithm's).", bound="positive"
    )
    inner_optimizer: str | None = option(
        None,
        "Inner-loop update: sgd, or adam (first order) (default: the algorithm's; sgd).",
        choices=INNER_OPTIMIZERS,
        algorithm_option=True,
    )
    inner_optimizer_state: str | None = option(
        None,
        "Inner Adam's state: fresh every task, or carried across (default: the algorithm's).",
        choices=INNER_OPTIMIZER_STATES,
        algorithm_option=True,
    )
    inner_batch: int | None = option(
        None,
        "Support examples per inner step while meta-training, 0: all (default: the algorithm's).",
        bound="non-negative",
        algorithm_option=True,
    )
    eval_inner_batch: int | None = option(
        None,
        "Support examples per inner step at test time, 0: all (default: the algorithm's).",
        bound="non-negative",
        algorithm_option=True,
    )
    per_step_lr: bool = option(False, "MAML++: learned rate per step.", algorithm_option=True)
    multi_step_loss: bool = option(
        False, "MAML++: query loss after each step.", algorithm_option=True
    )
    step_weight_annealing: int = option(
        0,
        "MAML++: iterations over which the multi-step loss moves its weight to the last step.",
        bound="non-negative",
        algorithm_option=True,
    )
    first_order_steps: int = option(
        0,
        "MAML++: first iterations with first-order meta-gradients, then second order.",
        bound="non-negative",
        algorithm_option=True,
    )
    per_step_bn: bool = option(
        False, "MAML++: batch-norm weights per inner step.", algorithm_option=True
    )
    backbone: str = option("conv4", "conv4, resnet12 or mlp.", choices=BACKBONES)
    hidden: tuple[int, ...] | None = option(
        None, "conv4: filters (64); mlp: widths, e.g. 40,40.", bound="positive"
    )
    strided: bool = option(False, "MAML's strided Conv-4.")
    pooling: int | None = option(
        None, "conv4: blocks ending in max-pooling, from the first (4).", bound="non-negative"
    )
    distance: str = option(
        "sqeuclidean", "ProtoNet: sqeuclidean, euclidean, lp, cosine.", choices=DISTANCES,
        algorithm_option=True,
    )  # fmt: skip
    distance_p: float = option(
        2.0, "ProtoNet: p of the lp distance.", bound="positive", algorithm_option=True
    )
    temperature: float = option(
        1.0,
        "ProtoNet: logits are -distance / temperature.",
        bound="positive",
        algorithm_option=True,
    )
    precision: str = option(
        "float32", "Network autocast dtype: float32, bfloat16, float16.", choices=PRECISIONS,
        algorithm_option=True,
    )  # fmt: skip
    channels_last: bool = option(True, "Encoder memory layout NHWC.", algorithm_option=True)
    seed: int = option(0, "Random seed.")
    device: str = option("auto", "auto, cpu, cuda or cuda:INDEX.")
    deterministic: bool = option(False, "Deterministic GPU kernels.")
    val_every: int = option(500, "Validate every N iterations.", bound="positive")
    val_episodes: int = option(200, "Fixed validation episodes.", bound="positive")
    test_episodes: int | None = option(
        None,
        "Default episodes of `lifelong evaluate` (1000; 600 on miniImageNet).",
        bound="positive",
    )
    checkpoint_every: int = option(500, "Checkpoint every N iterations.", bound="positive")
    time_limit: float | None = option(
        None, "Stop after this many minutes (checkpoint and validation first).", bound="positive"
    )
    out: str | None = option(None, "Run folder.", "-o")

    def __post_init__(self) -> None:
        from lifelong.algorithms.registry import check_name

        hints = typing.get_type_hints(RunConfig)
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        given = {f.name: "given" for f in fields(self) if getattr(self, f.name) != f.default}
        object.__setattr__(self, "_sources", given)
        try:
            check_name(self.algorithm)
        except ValueError as err:
            raise ConfigError(f"`algorithm`: {err}") from None
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            bound = f.metadata["bound"]
            if choices is not None and value is not None and value not in choices:
                raise ConfigError(f"`{f.name}` must be one of {', '.join(choices)}; got {value!r}")
            for item in value if isinstance(value, tuple) else (value,):
                if bound is None or item is None:
                    continue
                if bound == "non-negative" and item < 0:
                    raise ConfigError(f"`{f.name}` must be 0 or more, got {value!r}")
                if bound == "positive" and item <= 0:
                    raise ConfigError(f"`{f.name}` must be positive, got {value!r}")
        check_device(self.device)
        if self.hidden is not None and not self.hidden:
            raise ConfigError(f"`hidden` must be positive widths, got {self.hidden!r}")

    # ------------------------------------------------------------------ where values came from
    def source_of(self, name: str) -> str:
        """Where the value of option ``name`` came from: ``built-in default``, ``algorithm
        default (NAME)``, ``config file 'PATH'``, ``flag``, or ``given`` (to the
        constructor)."""
        return self._sources.get(name, "built-in default")  # type: ignore[attr-defined]

    def _with_sources(self, changes: dict[str, Any], source: str) -> RunConfig:
        new = replace(self, **changes)
        sources = {
            **new._sources,  # type: ignore[attr-defined]
            **self._sources,  # type: ignore[attr-defined]
            **dict.fromkeys(changes, source),
        }
        object.__setattr__(new, "_sources", sources)
        return new

    def with_defaults(self, values: dict[str, Any], source: str) -> RunConfig:
        """A copy with ``values`` for the options that are still ``None``."""
        return self._with_sources(
            {k: v for k, v in values.items() if getattr(self, k) is None}, source
        )

    @staticmethod
    def algorithm_options() -> tuple[str, ...]:
        """The options only some algorithms read (each lists its own)."""
        return tuple(f.name for f in fields(RunConfig) if f.metadata["algorithm_option"])

    # ------------------------------------------------------------------ derived values
    def episode_shape(self, split: str) -> tuple[int, int, int]:
        """``(ways, shots, queries)`` of the episodes of ``split``: the training shape for
        ``"train"`` and ``train_split``, the ``test_*`` shape (default: the training one) for
        the other splits."""
        if split in ("train", self.train_split):
            return self.ways, self.shots, self.queries
        return (
            self.test_ways or self.ways,
            self.test_shots or self.shots,
            self.test_queries or self.queries,
        )

    # ------------------------------------------------------------------ building and saving
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from a mapping; an unknown key raises :class:`ConfigError` naming it (and the
        closest known option)."""
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source}: expected a mapping of options, got {type(values).__name__}"
            )
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: unknown option {key!r}{hint}")
        return cls()._with_sources(values, source)

    @classmethod
    def of_checkpoint(cls, state: dict[str, Any], source: str = "checkpoint") -> RunConfig:
        """The config saved in a training checkpoint's ``state``, read with the meaning it had
        in the version that saved it: before 0.2.0, Omniglot's ``class_split`` ``vinyals`` (and
        the unset default) was a seeded partition of the Vinyals sizes, now ``random``; an
        option the checkpoint lacks (added since) takes its value in
        :data:`BUILT_IN_FALLBACKS`, with which the run was trained."""
        values = state["config"]
        if isinstance(values, dict):
            values = {**{k: v for k, v in BUILT_IN_FALLBACKS.items() if k not in values}, **values}
        if (
            Version(str(state.get("version", "0"))) < Version("0.2.0")
            and isinstance(values, dict)
            and values.get("dataset") == "omniglot"
            and values.get("class_split") in (None, "vinyals")
        ):
            values = {**values, "class_split": "random"}
        return cls.from_dict(values, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a YAML file of options (a mapping; unknown keys are errors)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror}") from err
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
        cfg = cls.from_dict(values or {}, source=f"config file {str(path)!r}")
        recorded = dict(re.findall(r"^(\w+): .*  # from: (.+)$", text, flags=re.MULTILINE))
        sources = {**cfg._sources, **recorded}  # type: ignore[attr-defined]
        object.__setattr__(cfg, "_sources", sources)
        return cfg

    def override(self, source: str = "override", **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (recorded as coming from ``source``, e.g.
        ``flag``); ``None`` values mean "not given" and are skipped, so command-line flags
        that were not passed keep the file's values."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown option {sorted(unknown)[0]!r}")
        return self._with_sources({k: v for k, v in changes.items() if v is not None}, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples become lists), ready for YAML or JSON."""
        values = asdict(self)
        if values["hidden"] is not None:
            values["hidden"] = list(values["hidden"])
        return values

    def to_yaml(self) -> str:
        """One line per option, each with where its value came from (``# from: ...``); the
        values are JSON, which YAML reads."""
        return "".join(
            f"{name}: {json.dumps(value)}  # from: {self.source_of(name)}\n"
            for name, value in self.to_dict().items()
        )

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_yaml`, atomically (a complete file or none)."""
        atomic_write(Path(path), self.to_yaml().encode())


def check_device(name: str) -> None:
    """Refuse a device name that is not one of :data:`DEVICES` or ``cuda:INDEX``."""
    if name not in DEVICES and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(
            f"`device` must be one of {', '.join(DEVICES)} or cuda:INDEX (e.g. cuda:1); "
            f"got {name!r}"
        )


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` of option ``name`` (YAML reads ``1e-3`` as a string and
    ``7e4`` needs to become an int), or :class:`ConfigError`."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name} must be given, got null")
    kind = next(a for a in args if a is not type(None)) if args and type(None) in args else hint
    if typing.get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(f"{name} must be a mapping of option names to values, got {value!r}")
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        items = items if isinstance(items, list | tuple) else [items]
        try:
            return tuple(_coerce(name, item, int) for item in items)
        except ConfigError:
            raise ConfigError(
                f"`{name}` must be whole numbers separated by commas, e.g. 40,40; got {value!r}"
            ) from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value)
        if number is not None and float(number).is_integer():
            return int(number)
    elif kind is float:
        number = _number(value)
        if number is not None and not math.isfinite(number):
            raise ConfigError(f"`{name}` must be a finite number, got {value!r}")
        if number is not None:
            return float(number)
    elif kind is str and isinstance(value, str):
        return value
    kind_name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise ConfigError(f"{name} must be {kind_name[kind]}, got {value!r}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
