"""From a resolved :class:`~lifelong.pipeline.config.RunConfig` to model and algorithm.

:func:`resolve_config` fills the options a user left open with the algorithm's paper defaults
(:attr:`~lifelong.algorithms.base.Algorithm.defaults`, per dataset), then the built-in ones,
recording where each value came from; :func:`check_config` rejects settings that cannot work
together (one line naming the options); :func:`build_algorithm` asks the algorithm's class
(:mod:`lifelong.algorithms.registry`) to build itself on the run's backbone
(:func:`build_model`), from the config and the data facts alone, so a saved run is rebuilt
without its data.

Example:
    >>> cfg = resolve_config(RunConfig(algorithm="maml", dataset="strokes", strided=True))
    >>> cfg.meta_batch, cfg.source_of("meta_batch")
    (32, 'algorithm default (maml)')
    >>> algorithm = build_algorithm(cfg, load_data(cfg).facts)   # MAML on a strided Conv-4
"""

from __future__ import annotations

from functools import partial

from torch import nn

from lifelong.algorithms.base import Algorithm
from lifelong.algorithms.registry import algorithm_class, algorithm_classes
from lifelong.data.augment import Augmentation
from lifelong.models.conv4 import Conv4
from lifelong.models.mlp import MLP
from lifelong.models.resnet12 import ResNet12
from lifelong.pipeline.config import BUILT_IN_FALLBACKS, ConfigError, RunConfig
from lifelong.pipeline.data import DataFacts


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every option left ``None`` that the algorithm sets taken from its defaults
    for the dataset, then from :data:`~lifelong.pipeline.config.BUILT_IN_FALLBACKS`."""
    cls = algorithm_class(cfg.algorithm)
    dataset = f", {cfg.dataset}" if cfg.dataset in cls.dataset_defaults else ""
    cfg = cfg.with_defaults(
        cls.defaults_for(cfg.dataset), f"algorithm default ({cfg.algorithm}{dataset})"
    )
    return cfg.with_defaults(BUILT_IN_FALLBACKS, "built-in default")


def check_config(cfg: RunConfig, facts: DataFacts) -> None:
    """Reject settings that cannot work together, with one line naming them."""
    cls = algorithm_class(cfg.algorithm)
    if facts.regression:
        if not cls.solves_regression:
            able = [n for n, c in algorithm_classes().items() if c.solves_regression]
            raise ConfigError(
                f"{cfg.algorithm} solves classification tasks, but {cfg.dataset} is a regression "
                f"dataset: use one of {', '.join(able)}"
            )
        if cfg.train_split != "train":
            raise ConfigError(f"{cfg.dataset} tasks are generated: it has no {cfg.train_split}")
        if cfg.backbone != "mlp":
            raise ConfigError(
                f"`backbone` {cfg.backbone} needs images, but {cfg.dataset} has 1-d inputs: "
                "use `backbone` mlp"
            )
    trained_on = (facts.classes or {}).get(cfg.train_split)
    if cfg.labels == "dataset" and cfg.train_split in facts.unlabeled:
        raise ConfigError(
            f"split {cfg.train_split!r} of {cfg.dataset} is unlabeled images (no class "
            "folders): meta-train with `labels` none and a `task_construction`"
        )
    if cfg.labels == "dataset" and trained_on is not None and trained_on < 2:
        raise ConfigError(
            f"split {cfg.train_split!r} of {cfg.dataset} has {trained_on} class: a "
            "classification task needs at least 2 classes to tell apart"
        )
    if not facts.regression and cfg.ways < cls.min_ways:
        raise ConfigError(
            f"`ways` {cfg.ways}: a classification task needs at least {cls.min_ways} classes "
            f"to tell apart ({cfg.algorithm} learns nothing from fewer: its loss would be 0)"
        )
    if cfg.labels == "none":
        if facts.regression:
            raise ConfigError(f"`labels` none: {cfg.dataset} tasks are generated, not labelled")
        if cls.learns_class_ids:
            raise ConfigError(
                f"`labels` none: {cfg.algorithm} learns the classes of the training split, "
                "which made-up tasks do not have; use protonet, maml or reptile"
            )
        if cfg.task_construction is None:
            raise ConfigError("`labels` none needs a `task_construction`: umtra, cactus or pseudo")
    elif cfg.task_construction is not None or cfg.task_options:
        raise ConfigError(
            "`task_construction` makes tasks without labels: set `labels` none, or leave it out"
        )
    if cfg.augment:
        if cfg.labels == "none" or facts.regression:
            raise ConfigError(
                "`augment` applies to the images of labelled training episodes; a task "
                "construction takes its own (`task_options`), regression tasks none"
            )
        try:
            Augmentation.parse(cfg.augment)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.pooling is not None and (cfg.backbone != "conv4" or cfg.strided or cfg.pooling > 4):
        raise ConfigError(
            f"`pooling` {cfg.pooling}: 0 to 4 pooled blocks of the conv4 backbone (not strided)"
        )
    if cfg.strided and cfg.backbone != "conv4":
        raise ConfigError(f"`strided` applies to the conv4 backbone only, not to {cfg.backbone}")
    if cfg.hidden is not None:
        if cfg.backbone == "resnet12":
            raise ConfigError("`hidden` applies to the conv4 and mlp backbones, not to resnet12")
        if cfg.backbone == "conv4" and len(cfg.hidden) != 1:
            raise ConfigError(
                f"conv4 takes one `hidden` value (filters per block), got {list(cfg.hidden)}"
            )
    if cfg.lr_horizon == "budget" and cfg.lr_schedule not in ("cosine", "linear"):
        raise ConfigError(
            f"`lr_horizon` budget ends a cosine or linear schedule, not `lr_schedule` "
            f"{cfg.lr_schedule}"
        )
    if cls.fixed_head and not facts.regression:
        test_ways = cfg.episode_shape("test")[0]
        if test_ways != cfg.ways:
            raise ConfigError(
                f"{cfg.algorithm} ends in a {cfg.ways}-way head (`ways` {cfg.ways}), so it "
                f"cannot be tested on {test_ways}-way tasks: train with `ways` {test_ways}"
            )
    defaults = resolve_config(RunConfig(algorithm=cfg.algorithm, dataset=cfg.dataset))
    for name in cfg.algorithm_options():
        if name not in cls.own_options and getattr(cfg, name) != getattr(defaults, name):
            users = [n for n, c in algorithm_classes().items() if name in c.own_options]
            raise ConfigError(
                f"`{name}` is an option of {', '.join(users)}, not of {cfg.algorithm}"
            )
    if facts.classes is not None and cfg.train_split not in facts.classes:
        raise ConfigError(
            f"`train_split` {cfg.train_split}: {cfg.dataset} has no such split; "
            f"its splits are {', '.join(facts.classes)}"
        )
    for split, count in (facts.classes or {}).items():
        ways = cfg.episode_shape(split)[0]
        unlabeled = split == cfg.train_split and cfg.labels == "none"
        if split in (cfg.train_split, "val", "test") and ways > count and not unlabeled:
            option = "ways" if split == cfg.train_split else "test_ways"
            raise ConfigError(
                f"`{option}` {ways} is more than the {count} classes of split {split!r} "
                f"of {cfg.dataset}"
            )


def build_model(cfg: RunConfig, facts: DataFacts, out_features: int | None) -> nn.Module:
    """The backbone of ``cfg`` for the data of ``facts``, ending in a linear head of
    ``out_features`` outputs (``None``: an embedding network). Batch norm uses per-task batch
    statistics (``track_running_stats=False``, as in Finn et al. 2017; transductive) for the
    algorithms that say so (:attr:`~lifelong.algorithms.base.Algorithm.task_batch_norm`), else
    ordinary batch norm."""
    track = not algorithm_class(cfg.algorithm).task_batch_norm
    try:
        return _backbone(cfg, facts, out_features, track=track)
    except RuntimeError as err:  # e.g. images too small for four pooling layers
        shape = "x".join(map(str, facts.image_shape or ()))
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"`backbone` {cfg.backbone} cannot take {shape} images: {first}") from err


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
        pooling=4 if cfg.pooling is None else cfg.pooling,
    )


def build_algorithm(cfg: RunConfig, facts: DataFacts) -> Algorithm:
    """The algorithm of ``cfg`` (resolved here if it is not yet) with a fresh model (seeded
    by the caller)."""
    cfg = resolve_config(cfg)
    check_config(cfg, facts)
    return algorithm_class(cfg.algorithm).from_config(cfg, facts, partial(build_model, cfg, facts))
