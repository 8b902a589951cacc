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
import os
import re
import secrets
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from lifelong.algorithms.protonet import PRECISIONS

ALGORITHMS = ("maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "finetune", "oml")
BACKBONES = ("conv4", "resnet12", "mlp")
SCHEDULES = ("none", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
"""Device names; ``cuda:INDEX`` (e.g. ``cuda:1``) picks one GPU."""
DISTANCES = ("sqeuclidean", "euclidean", "lp", "cosine")
TRAIN_SPLITS = ("train", "trainval")
CHOICES = {
    "algorithm": ALGORITHMS,
    "backbone": BACKBONES,
    "lr_schedule": SCHEDULES,
    "distance": DISTANCES,
    "precision": PRECISIONS,
    "train_split": TRAIN_SPLITS,
}
POSITIVE = (
    "ways",
    "shots",
    "queries",
    "test_ways",
    "test_shots",
    "test_queries",
    "meta_batch",
    "iterations",
    "eval_inner_steps",
    "meta_lr",
    "inner_lr",
    "lr_step",
    "lr_gamma",
    "grad_clip",
    "image_size",
    "val_every",
    "val_episodes",
    "test_episodes",
    "checkpoint_every",
    "distance_p",
    "temperature",
    "time_limit",
)
NON_NEGATIVE = ("inner_steps",)
"""``inner_steps: 0`` meta-trains without adaptation: joint training on all tasks, the
pre-training baseline of Finn et al. 2017, section 5.1."""


class ConfigError(ValueError):
    """A setting that is unknown, of the wrong type, out of range, or that does not fit the
    data. The message is one line that names the offending option and value."""


@dataclass(frozen=True)
class RunConfig:
    """Every option of a run. ``None`` means "the default of the algorithm or dataset".

    Data:
        algorithm: one of :data:`ALGORITHMS`.
        dataset: a name of :data:`lifelong.data.registry.DATASETS` (``strokes``, ``omniglot``,
            ``sinusoid``...).
        data_root: where the dataset lives (or is downloaded to); ``None``: the cache folder.
        class_split: Omniglot's class split, ``vinyals`` (Vinyals et al. 2016) or ``lake``.
        rotations: add the 90/180/270 degree rotations of each class as new classes.
        image_size: image height = width in pixels.
        dataset_options: any further keyword arguments of the dataset's loader, e.g.
            ``{"classes": 200, "per_class": 10}`` for strokes.
        train_split: the split meta-trained on: ``train``, or ``trainval`` (train and
            validation classes together, as Snell et al. 2017 do for their final Omniglot
            models; there is then no held-out validation, and the last checkpoint is used).

    Episodes (Vinyals et al. 2016): ``ways`` classes, ``shots`` support and ``queries`` query
    examples per class; the ``test_*`` values (default: the training ones) are used for
    validation and testing, e.g. ProtoNets train 60-way and test 5-way (Snell et al. 2017).

    Meta-optimisation: ``meta_batch`` episodes per step, ``iterations`` steps of Adam with
    learning rate ``meta_lr``, ``lr_schedule`` ``none``, ``cosine`` (to 0 at the last step) or
    ``step`` (times ``lr_gamma`` every ``lr_step`` iterations), gradient-norm clipping at
    ``grad_clip``.

    Inner loop (MAML family, Reptile; FineTune's head fitting): ``inner_lr``, ``inner_steps``
    while meta-training and ``eval_inner_steps`` at test time; MAML++ (Antoniou et al. 2019):
    ``per_step_lr`` (a learned inner learning rate per step and parameter tensor) and
    ``multi_step_loss`` (the query loss after every inner step, weighted).

    Model: ``backbone`` (``conv4``, ``resnet12``, ``mlp``), ``hidden`` (Conv-4: one number of
    filters; MLP: the hidden widths), ``strided`` (MAML's stride-2 Conv-4), ``distance``,
    ``distance_p`` and ``temperature`` (ProtoNet: logits ``-d / temperature``), ``precision``
    (ProtoNet: the encoder's autocast dtype, ``float32``, ``bfloat16`` or ``float16``) and
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

    algorithm: str = "protonet"
    dataset: str = "strokes"
    data_root: str | None = None
    class_split: str | None = None
    rotations: bool | None = None
    image_size: int | None = None
    dataset_options: dict[str, Any] | None = None
    train_split: str = "train"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    test_ways: int | None = None
    test_shots: int | None = None
    test_queries: int | None = None
    meta_batch: int = 32
    iterations: int = 1000
    meta_lr: float = 1e-3
    lr_schedule: str = "none"
    lr_step: int = 2000
    lr_gamma: float = 0.5
    grad_clip: float | None = None
    inner_lr: float | None = None
    inner_steps: int | None = None
    eval_inner_steps: int | None = None
    per_step_lr: bool = False
    multi_step_loss: bool = False
    backbone: str = "conv4"
    hidden: tuple[int, ...] | None = None
    strided: bool = False
    distance: str = "sqeuclidean"
    distance_p: float = 2.0
    temperature: float = 1.0
    precision: str = "float32"
    channels_last: bool = True
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    val_every: int = 500
    val_episodes: int = 200
    test_episodes: int | None = None
    checkpoint_every: int = 500
    time_limit: float | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(RunConfig)
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}"
                )
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device):
            raise ConfigError(
                f"device must be one of {', '.join(DEVICES)} or cuda:INDEX (e.g. cuda:1); "
                f"got {self.device!r}"
            )
        for name in POSITIVE:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        for name in NON_NEGATIVE:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value!r}")
        if self.hidden is not None and (not self.hidden or min(self.hidden) < 1):
            raise ConfigError(f"hidden must be positive widths, got {self.hidden!r}")

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

    @property
    def default_test_episodes(self) -> int:
        """1000 test episodes, 600 on miniImageNet (the usual protocols)."""
        if self.test_episodes is not None:
            return self.test_episodes
        return 600 if self.dataset == "miniimagenet" else 1000

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
        return cls(**values)

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
        return cls.from_dict(values or {}, source=f"config file {str(path)!r}")

    def override(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied; ``None`` values mean "not given" and are skipped,
        so command-line flags that were not passed keep the file's values."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown option {sorted(unknown)[0]!r}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples become lists), ready for YAML or JSON."""
        values = asdict(self)
        if values["hidden"] is not None:
            values["hidden"] = list(values["hidden"])
        return values

    def save(self, path: str | Path) -> None:
        """Write as YAML, atomically (a complete file or none)."""
        atomic_write(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False).encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file: a
    temporary file in the same folder, flushed and fsync'ed, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as umask allows
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        return tuple(_coerce(name, item, int) for item in items)
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
