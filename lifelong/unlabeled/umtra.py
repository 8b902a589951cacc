"""UMTRA: Unsupervised Meta-learning with Tasks constructed by Random sampling and Augmentation.

Khodadadeh, Bölöni & Shah, NeurIPS 2019 ("Unsupervised Meta-Learning for Few-Shot Image
Classification"), Algorithm 1: N images drawn at random from the unlabeled pool are the N
classes of a task (with many more classes than N in the pool, they are almost surely of
different classes); each is its own one-shot support, and an augmented copy of it is its
query. On Omniglot the authors augment by random pixel dropout and shifts of up to 6 pixels
(their Section 4).

Here the support is the image itself and, for K > 1 shots, K - 1 more augmented copies; each
of the Q queries is an independent augmented copy. The options are those of
:class:`~lifelong.data.augment.Augmentation`.

Example:
    $ lifelong train --dataset omniglot --labels none --task-construction umtra \
        --task-option shift=6 --task-option dropout=0.1 --ways 5 --shots 1 --queries 1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from lifelong.data.augment import Augmentation
from lifelong.data.episodes import EpisodeBatch
from lifelong.unlabeled.base import TaskConstruction


class UMTRA(TaskConstruction):
    """Random images as one-shot classes, augmented copies as their queries."""

    name = "umtra"
    options: ClassVar[Mapping[str, float | str]] = Augmentation.options(shift=6.0, dropout=0.1)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.augment = Augmentation.of(self.settings)

    def draw(self, count: int, generator: torch.Generator, stream: bool = True) -> EpisodeBatch:
        n, shape = self.pool.shape[0], self.pool.shape[1:]
        # N distinct images per episode (top-N of uniform keys, as EpisodeSampler draws classes)
        index = torch.rand(count, n, generator=generator).topk(self.ways, dim=1).indices
        anchors = self.pool.index_select(0, index.reshape(-1)).view(count, self.ways, 1, *shape)
        copies = self.shots - 1 + self.queries
        views = self.augment(
            anchors.expand(-1, -1, copies, *shape).reshape(-1, *shape), generator
        ).view(count, self.ways, copies, *shape)
        support = torch.cat([anchors, views[:, :, : self.shots - 1]], dim=2)
        query = views[:, :, self.shots - 1 :]
        return self.episodes(support.flatten(1, 2), query.flatten(1, 2))
