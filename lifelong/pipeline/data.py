"""The data of a run: its splits, loaded once, and the facts its model depends on.

:func:`load_data` loads the dataset of a :class:`~lifelong.pipeline.config.RunConfig` (named in
:mod:`lifelong.data.registry`) and records :class:`DataFacts` (image shape, classes per split,
background brightness), which are saved with every checkpoint so that a run is rebuilt
without its data. :meth:`Data.sampler` draws the run's episodes.

Example:
    >>> data = load_data(RunConfig(dataset="strokes"))
    >>> data.facts.image_shape, data.facts.classes
    ((1, 28, 28), {'train': ..., 'val': ..., 'test': ...})
    >>> batch = data.sampler("train", seed=0).sample(4)
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from lifelong.data.augment import Augmentation
from lifelong.data.classes import ClassDataset
from lifelong.data.episodes import EpisodeSampler, TaskSampler
from lifelong.data.folder import UNLABELED
from lifelong.data.registry import dataset_info, load_dataset
from lifelong.data.sinusoid import SinusoidSampler
from lifelong.pipeline.config import ConfigError, RunConfig


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
        unlabeled: the splits that are unlabeled images (a folder without class folders).
    """

    dataset: str
    regression: bool = False
    image_shape: tuple[int, int, int] | None = None
    classes: dict[str, int] | None = None
    background: str | None = None
    unlabeled: tuple[str, ...] = ()

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
            unlabeled=tuple(
                name
                for name, split in splits.items()
                if [c.name for c in split.classes] == [UNLABELED]
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataFacts:
        shape = values.get("image_shape")
        return cls(
            **{
                **values,
                "image_shape": None if shape is None else tuple(shape),
                "unlabeled": tuple(values.get("unlabeled", ())),
            }
        )


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
        ways: int | None = None,
        shots: int | None = None,
        queries: int | None = None,
    ) -> TaskSampler:
        """An episode sampler of ``split`` with the config's episode shape for that split
        (:meth:`RunConfig.episode_shape`), unless ``ways``/``shots``/``queries`` are given."""
        default = self.config.episode_shape(split)
        ways, shots, queries = (
            given or fallback
            for given, fallback in zip((ways, shots, queries), default, strict=True)
        )
        if self.splits is None:
            return SinusoidSampler(shots, queries, seed=seed)
        if ways < 2 and split != self.config.train_split:
            option = "ways" if self.config.test_ways is None else "test_ways"
            raise ConfigError(
                f"`{option}` {ways}: a classification task needs at least 2 classes to tell "
                f"apart (episodes of split {split!r})"
            )
        if split not in self.splits:
            raise ConfigError(
                f"dataset {self.config.dataset!r} has no split {split!r}; "
                f"its splits are {', '.join(self.splits)}"
            )
        if split == self.config.train_split and self.config.labels == "none":
            from lifelong.unlabeled.registry import construction_class

            construction = construction_class(self.config.task_construction or "")
            try:
                return construction(
                    self.unlabeled_pool(split), ways, shots, queries, seed,
                    options=self.config.task_options,
                )  # fmt: skip
            except ValueError as err:
                raise ConfigError(str(err)) from None
        augment = None
        if split == self.config.train_split and self.config.augment:
            augment = Augmentation.parse(self.config.augment)  # checked by check_config
        return EpisodeSampler(self.splits[split], ways, shots, queries, seed, augment)

    def unlabeled_pool(self, split: str) -> torch.Tensor:
        """The images of ``split`` as an unlabeled pool, ``uint8 [n, C, H, W]``: its class
        counts and names stay behind, so a run with ``labels: none`` cannot read them."""
        if self.splits is None:
            raise ConfigError(f"{self.config.dataset} tasks are generated: there is no image pool")
        return self.splits[split].images


def load_data(cfg: RunConfig) -> Data:
    """Load (or generate) the dataset of ``cfg`` with its dataset options. The last dataset
    loaded is kept in memory, so that training, evaluating and the demo in one process load
    it once."""
    if dataset_info(cfg.dataset).regression:
        options = ("class_split", "rotations", "test_rotations", "image_size")
        options += ("dataset_options", "data_root")
        given = [name for name in options if getattr(cfg, name) is not None]
        if given:
            raise ConfigError(f"{cfg.dataset} tasks are generated: it takes no `{given[0]}`")
        return Data(cfg, None, DataFacts.of(cfg.dataset, None))
    options = {
        name: getattr(cfg, name)
        for name in ("class_split", "rotations", "image_size")
        if getattr(cfg, name) is not None
    }
    options.update(cfg.dataset_options or {})
    splits, facts = _load_splits(cfg.dataset, cfg.data_root, json.dumps(options, sort_keys=True))
    if cfg.test_rotations is False:
        if "test" not in splits:
            raise ConfigError(f"`test_rotations`: {cfg.dataset} has no test split")
        test = splits["test"]
        splits = {**splits, "test": test.subset(
            [i for i, c in enumerate(test.classes) if c.rotation == 0], f"{test.name}/unrotated"
        )}  # fmt: skip
        facts = replace(facts, classes={**(facts.classes or {}), "test": len(splits["test"])})
    return Data(cfg, splits, facts)


@functools.lru_cache(maxsize=1)
def _load_splits(
    dataset: str, root: str | None, options: str
) -> tuple[dict[str, ClassDataset], DataFacts]:
    splits = load_dataset(dataset, root=root, **json.loads(options))
    return splits, DataFacts.of(dataset, splits)


def episode_count(cfg: RunConfig) -> int:
    """The run's ``test_episodes``, else its dataset's usual number (1000; 600 on
    miniImageNet)."""
    return cfg.test_episodes or dataset_info(cfg.dataset).test_episodes
