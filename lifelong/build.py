"""From a :class:`~lifelong.config.RunConfig` to data, model and algorithm.

:func:`load_data` loads the dataset of a run and records the facts the model depends on
(:class:`DataFacts`: image shape, classes per split, background brightness);
:func:`build_algorithm` builds the backbone and the :class:`~lifelong.algorithms.base.Algorithm`
from the config and those facts alone, so a saved run is rebuilt without its data. Settings
that cannot work together are rejected with one line that names them (:class:`ConfigError`).

Example:
    >>> cfg = RunConfig(algorithm="maml", dataset="strokes", ways=5, shots=1, strided=True)
    >>> data = load_data(cfg)
    >>> algorithm = build_algorithm(cfg, data.facts)     # MAML on a strided Conv-4
    >>> batch = data.sampler("train", seed=0).sample(4)
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong.algorithms.base import Algorithm
from lifelong.algorithms.finetune import FineTune
from lifelong.algorithms.maml import MAML, MAML_VARIANTS
from lifelong.algorithms.oml import build_oml
from lifelong.algorithms.protonet import ProtoNet
from lifelong.algorithms.reptile import Reptile
from lifelong.checkpoint import CheckpointError, has_checkpoint, load_checkpoint
from lifelong.config import ConfigError, RunConfig
from lifelong.data.classes import ClassDataset
from lifelong.data.episodes import EpisodeSampler
from lifelong.data.registry import load_dataset
from lifelong.data.sinusoid import SinusoidSampler
from lifelong.models.conv4 import Conv4
from lifelong.models.mlp import MLP
from lifelong.models.resnet12 import ResNet12

REGRESSION_DATASETS = ("sinusoid",)
CLASSIFIERS = ("protonet", "finetune")
"""Algorithms that only solve classification tasks."""
FIXED_HEAD = ("maml", "fomaml", "anil", "metasgd", "reptile")
"""Algorithms whose model ends in a ``ways``-output head: tasks must have exactly that many
classes."""


@dataclass(frozen=True)
class DataFacts:
    """What the model of a run depends on, saved with its checkpoints.

    Args:
        dataset: the dataset name.
        regression: 1-d regression tasks (sinusoids) instead of image classification.
        image_shape: ``(C, H, W)`` of the images (``None`` for regression).
        classes: the number of classes of each split.
        background: ``"dark"`` or ``"bright"``: the background of grayscale images (Omniglot
            and strokes are drawn with ink = 1 on a dark background); ``None`` for colour.
    """

    dataset: str
    regression: bool = False
    image_shape: tuple[int, int, int] | None = None
    classes: dict[str, int] | None = None
    background: str | None = None

    @classmethod
    def of(cls, dataset: str, splits: dict[str, ClassDataset] | None) -> DataFacts:
        if splits is None:
            return cls(dataset, regression=True)
        first = splits["train"] if "train" in splits else next(iter(splits.values()))
        return cls(
            dataset,
            image_shape=first.image_shape,
            classes={name: len(split) for name, split in splits.items()},
            background=background_of(first.images[:2000]) if first.image_shape[0] == 1 else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataFacts:
        shape = values.get("image_shape")
        return cls(**{**values, "image_shape": None if shape is None else tuple(shape)})


def background_of(images: torch.Tensor) -> str:
    """``"bright"`` when the outermost ring of pixels of ``uint8`` images ``[n, 1, H, W]`` is on
    average brighter than mid-grey, else ``"dark"``."""
    x = images.float()
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    return "bright" if float(ring.mean()) > 127.5 else "dark"


@dataclass
class Data:
    """The loaded data of a run: its splits (``None`` for sinusoids) and facts."""

    config: RunConfig
    splits: dict[str, ClassDataset] | None
    facts: DataFacts

    def sampler(
        self,
        split: str,
        seed: int,
        stream: int = 0,
        ways: int | None = None,
        shots: int | None = None,
        queries: int | None = None,
    ) -> EpisodeSampler | SinusoidSampler:
        """An episode sampler of ``split`` with the config's episode shape for that split
        (:meth:`RunConfig.episode_shape`), unless ``ways``/``shots``/``queries`` are given."""
        default = self.config.episode_shape(split)
        ways, shots, queries = (
            given or fallback
            for given, fallback in zip((ways, shots, queries), default, strict=True)
        )
        if self.splits is None:
            return SinusoidSampler(shots, queries, seed=seed, stream=stream)
        if split not in self.splits:
            raise ConfigError(
                f"dataset {self.config.dataset!r} has no split {split!r}; "
                f"its splits are {', '.join(self.splits)}"
            )
        return EpisodeSampler(self.splits[split], ways, shots, queries, seed=seed, stream=stream)


def load_data(cfg: RunConfig) -> Data:
    """Load (or generate) the dataset of ``cfg`` with its dataset options. The last dataset
    loaded is kept in memory, so that training, evaluating and the demo in one process load
    it once."""
    if cfg.dataset in REGRESSION_DATASETS:
        options = ("class_split", "rotations", "image_size", "dataset_options", "data_root")
        given = [name for name in options if getattr(cfg, name) is not None]
        if given:
            raise ConfigError(f"{cfg.dataset} tasks are generated: it takes no {given[0]}")
        return Data(cfg, None, DataFacts.of(cfg.dataset, None))
    options = {
        name: getattr(cfg, name)
        for name in ("class_split", "rotations", "image_size")
        if getattr(cfg, name) is not None
    }
    options.update(cfg.dataset_options or {})
    splits, facts = _load_splits(cfg.dataset, cfg.data_root, json.dumps(options, sort_keys=True))
    return Data(cfg, splits, facts)


@functools.lru_cache(maxsize=1)
def _load_splits(
    dataset: str, root: str | None, options: str
) -> tuple[dict[str, ClassDataset], DataFacts]:
    splits = load_dataset(dataset, root=root, **json.loads(options))
    return splits, DataFacts.of(dataset, splits)


def check_config(cfg: RunConfig, facts: DataFacts) -> None:
    """Reject settings that cannot work together, with one line naming them."""
    if facts.regression:
        if cfg.algorithm in CLASSIFIERS:
            raise ConfigError(
                f"{cfg.algorithm} solves classification tasks, but {cfg.dataset} is a regression "
                f"dataset: use one of {', '.join(FIXED_HEAD)}"
            )
        if cfg.train_split != "train":
            raise ConfigError(f"{cfg.dataset} tasks are generated: it has no {cfg.train_split}")
        if cfg.backbone != "mlp":
            raise ConfigError(
                f"backbone {cfg.backbone} needs images, but {cfg.dataset} has 1-d inputs: "
                "use --backbone mlp"
            )
    if cfg.strided and cfg.backbone != "conv4":
        raise ConfigError(f"strided applies to the conv4 backbone only, not to {cfg.backbone}")
    if cfg.hidden is not None:
        if cfg.backbone == "resnet12":
            raise ConfigError("hidden applies to the conv4 and mlp backbones, not to resnet12")
        if cfg.backbone == "conv4" and len(cfg.hidden) != 1:
            raise ConfigError(
                f"conv4 takes one hidden value (filters per block), got {list(cfg.hidden)}"
            )
    if cfg.algorithm in FIXED_HEAD and not facts.regression:
        test_ways = cfg.episode_shape("test")[0]
        if test_ways != cfg.ways:
            raise ConfigError(
                f"{cfg.algorithm} ends in a {cfg.ways}-way head (--ways {cfg.ways}), so it cannot "
                f"be tested on {test_ways}-way tasks: train with --ways {test_ways}"
            )
    maml_only = [name for name in ("per_step_lr", "multi_step_loss") if getattr(cfg, name)]
    if maml_only and cfg.algorithm not in MAML_VARIANTS:
        raise ConfigError(
            f"{maml_only[0]} is a MAML++ option of {', '.join(MAML_VARIANTS)}, "
            f"not of {cfg.algorithm}"
        )
    if cfg.precision != "float32" and cfg.algorithm not in CLASSIFIERS:
        raise ConfigError(
            f"precision {cfg.precision} applies to {' and '.join(CLASSIFIERS)}, "
            f"not to {cfg.algorithm}"
        )
    if facts.classes is not None and cfg.train_split not in facts.classes:
        raise ConfigError(
            f"--train-split {cfg.train_split}: {cfg.dataset} has no such split; "
            f"its splits are {', '.join(facts.classes)}"
        )
    for split, count in (facts.classes or {}).items():
        ways = cfg.episode_shape(split)[0]
        if split in (cfg.train_split, "val", "test") and ways > count:
            flag = "--ways" if split == cfg.train_split else "--test-ways"
            raise ConfigError(
                f"{flag} {ways} is more than the {count} classes of split {split!r} "
                f"of {cfg.dataset}"
            )


def build_model(cfg: RunConfig, facts: DataFacts, out_features: int | None) -> nn.Module:
    """The backbone of ``cfg`` for the data of ``facts``, ending in a linear head of
    ``out_features`` outputs (``None``: an embedding network). Models of the MAML family and
    Reptile use per-task batch statistics in batch norm (``track_running_stats=False``, as in
    Finn et al. 2017; transductive), the others ordinary batch norm."""
    try:
        return _backbone(cfg, facts, out_features, track=cfg.algorithm not in FIXED_HEAD)
    except RuntimeError as err:  # e.g. images too small for four pooling layers
        shape = "x".join(map(str, facts.image_shape or ()))
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"backbone {cfg.backbone} cannot take {shape} images: {first}") from err


def _backbone(cfg: RunConfig, facts: DataFacts, out_features: int | None, track: bool) -> nn.Module:
    if facts.regression:
        return MLP(1, cfg.hidden or (40, 40), out_features)
    channels, size, width = facts.image_shape or (0, 0, 0)
    if cfg.backbone == "mlp":
        return MLP(
            channels * size * width,
            cfg.hidden or (256, 128, 64, 64),
            out_features,
            batch_norm=True,
            track_running_stats=track,
        )
    if cfg.backbone == "resnet12":
        return ResNet12(channels, size, out_features, track_running_stats=track)
    return Conv4(
        channels,
        size,
        out_features,
        hidden=cfg.hidden[0] if cfg.hidden else 64,
        strided=cfg.strided,
        track_running_stats=track,
    )


def build_algorithm(cfg: RunConfig, facts: DataFacts) -> Algorithm:
    """The algorithm of ``cfg`` with a fresh model (seeded by the caller); inner-loop settings
    left ``None`` take the algorithm's own defaults."""
    check_config(cfg, facts)
    inner = {"inner_lr": cfg.inner_lr, "inner_steps": cfg.inner_steps}
    inner = {k: v for k, v in inner.items() if v is not None}
    if cfg.algorithm in MAML_VARIANTS or cfg.algorithm == "reptile":
        if facts.regression and cfg.inner_lr is None:
            inner["inner_lr"] = 0.01  # Finn et al. 2017's sinusoid value (0.4 is Omniglot's)
        model = build_model(cfg, facts, 1 if facts.regression else cfg.ways)
        evaluation = {"eval_inner_steps": cfg.eval_inner_steps, "regression": facts.regression}
        if cfg.algorithm == "reptile":
            return Reptile(model, **inner, **evaluation)
        maml_plus_plus = {"per_step_lr": cfg.per_step_lr, "multi_step_loss": cfg.multi_step_loss}
        return MAML(model, **inner, **evaluation, **maml_plus_plus, **MAML_VARIANTS[cfg.algorithm])
    if cfg.algorithm == "oml":
        return build_oml(cfg, facts)
    encoder = build_model(cfg, facts, None)
    layout = {"channels_last": cfg.channels_last, "precision": cfg.precision}
    if cfg.algorithm == "protonet":
        return ProtoNet(
            encoder, distance=cfg.distance, p=cfg.distance_p, temperature=cfg.temperature, **layout
        )
    head = {"head_lr": cfg.inner_lr, "head_steps": cfg.eval_inner_steps or cfg.inner_steps}
    head = {k: v for k, v in head.items() if v is not None}
    classes = (facts.classes or {}).get(cfg.train_split, 0)
    return FineTune(encoder, num_classes=classes, **head, **layout)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device of ``name``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``
    or ``cuda:INDEX``; asking for a GPU that is not there is an error. ``local_rank`` (the
    process's ``LOCAL_RANK`` under ``torchrun``) turns ``auto`` and ``cuda`` into
    ``cuda:LOCAL_RANK``, one GPU per process.

    Example:
        >>> resolve_device("auto")                 # device(type='cpu') on a machine without CUDA
        >>> resolve_device("cuda", local_rank=3)   # device(type='cuda', index=3)
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for, but this PyTorch has no CUDA device")
    index = device.index if device.index is not None else local_rank
    if index is None:
        return device
    count = torch.cuda.device_count()
    if index >= count:
        source = f"LOCAL_RANK {index}" if device.index is None else f"device {name}"
        raise ConfigError(
            f"{source} needs GPU {index}, but this machine has {count} GPUs (cuda:0 to "
            f"cuda:{count - 1})"
        )
    return torch.device("cuda", index)


@dataclass
class Trained:
    """A trained run rebuilt from a checkpoint: its config, data facts, algorithm (in eval
    mode, on the CPU) and the iteration it was saved at."""

    run_dir: Path
    config: RunConfig
    facts: DataFacts
    algorithm: Algorithm
    step: int

    def check_data(self, facts: DataFacts) -> None:
        """Reject data that does not fit the trained model."""
        if facts.image_shape != self.facts.image_shape or facts.regression != self.facts.regression:
            now = "regression" if facts.regression else "x".join(map(str, facts.image_shape or ()))
            then = (
                "regression"
                if self.facts.regression
                else "x".join(map(str, self.facts.image_shape or ()))
            )
            raise ConfigError(
                f"run {str(self.run_dir)!r} was trained on {then} data, but the dataset "
                f"now gives {now}"
            )


def load_trained(
    run_dir: str | Path, tag: str = "best", overrides: dict[str, Any] | None = None
) -> Trained:
    """Rebuild the algorithm of a run folder from its ``tag`` checkpoint (``best`` falls back to
    ``last`` when the run had no validation). ``overrides`` change evaluation settings of the
    config (``test_ways``, ``eval_inner_steps``, ``data_root``...; ``None`` values are
    ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {str(run_dir)!r} does not exist")
    if tag == "best" and not has_checkpoint(run_dir, "best"):
        tag = "last"
    if not has_checkpoint(run_dir, tag):
        raise CheckpointError(f"{str(run_dir)!r} is not a lifelong run folder (no {tag}.json)")
    state = load_checkpoint(run_dir, tag)
    try:
        config = RunConfig.from_dict(state["config"], source=f"run {str(run_dir)!r}")
        facts = DataFacts.from_dict(state["facts"])
        step = int(state["step"])
        weights = state["algorithm"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"{str(run_dir)!r} holds a checkpoint this version cannot read ({err})"
        ) from err
    config = config.override(**(overrides or {}))
    algorithm = build_algorithm(config, facts)
    try:
        algorithm.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"the checkpoint of {str(run_dir)!r} does not fit the model its config builds: {first}"
        ) from err
    return Trained(run_dir, config, facts, algorithm.eval(), step)
