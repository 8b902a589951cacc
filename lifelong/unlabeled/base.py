"""The one base of the task constructions: a :class:`~lifelong.data.episodes.TaskSampler` over
an unlabeled pool of images.

A construction sees only the pool, ``uint8 [n, C, H, W]`` (no class, no count, no name), and
makes N-way K-shot Q-query episodes of made-up classes, labelled ``0..N-1`` class-major like
every episode (:mod:`lifelong.data.episodes`); ``classes`` is ``None``, since there are no
dataset classes. Each construction states its ``options`` (with their defaults: its paper's
setting) and makes episodes in :meth:`TaskConstruction.draw`; this base gives it the seeded
stream, fixed sets, checkpointed state and the option checks.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from lifelong.data.episodes import FIXED_STREAM, EpisodeBatch, TaskStream, stream_generator

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm
    from lifelong.pipeline.config import RunConfig


class TaskConstruction(TaskStream):
    """Episodes of made-up classes from an unlabeled ``pool``.

    Args:
        pool: the unlabeled images, ``uint8 [n, C, H, W]``.
        ways, shots, queries: the episode shape.
        seed: the seed of the task stream (:class:`~lifelong.data.episodes.TaskStream`).
        options: values for some of :attr:`options` (the others keep their defaults).
    """

    name: ClassVar[str]
    options: ClassVar[Mapping[str, float | str]] = {}
    """Each option of the construction with its default (the paper's setting): a number, or
    a string (e.g. a run folder)."""

    def __init__(
        self,
        pool: Tensor,
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(seed)
        if pool.dtype != torch.uint8 or pool.dim() != 4:
            raise ValueError(
                f"an unlabeled pool is uint8 [n, C, H, W], got {pool.dtype} {tuple(pool.shape)}"
            )
        if ways > pool.shape[0]:
            raise ValueError(
                f"{ways}-way tasks need {ways} images, but the pool holds {pool.shape[0]}"
            )
        unknown = sorted(set(options or {}) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ValueError(
                f"{self.name} has no `task_options` {unknown[0]!r}; its options: {known}"
            )
        self.settings = {**self.options, **(options or {})}
        for key, value in self.settings.items():
            kind = str if isinstance(self.options[key], str) else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                what = "a string" if kind is str else "a number"
                raise ValueError(f"{self.name} `task_options` {key} must be {what}, got {value!r}")
        self.pool = pool
        self.ways, self.shots, self.queries = ways, shots, queries

    @classmethod
    def from_config(cls, cfg: RunConfig, pool: Tensor, seed: int) -> TaskConstruction:
        """The construction of a run with ``labels: none`` over its training pool."""
        return cls(pool, cfg.ways, cfg.shots, cfg.queries, seed, options=cfg.task_options)

    @abstractmethod
    def draw(self, count: int, generator: torch.Generator, stream: bool = True) -> EpisodeBatch:
        """``count`` episodes, every random number from ``generator``; ``stream``: tasks of
        the training stream (``False``: of a fixed set)."""

    def episodes(self, support: Tensor, query: Tensor) -> EpisodeBatch:
        """A batch from support ``[B, N*K, ...]`` and query ``[B, N*Q, ...]`` images laid out
        class-major, with the labels ``0..N-1`` of that layout."""
        count, labels = support.shape[0], torch.arange(self.ways)
        return EpisodeBatch(
            support_x=support,
            support_y=labels.repeat_interleave(self.shots).expand(count, -1).contiguous(),
            query_x=query,
            query_y=labels.repeat_interleave(self.queries).expand(count, -1).contiguous(),
            ways=self.ways,
            shots=self.shots,
        )

    def follow(self, algorithm: Algorithm) -> None:
        """Called by the Trainer with the learner before it draws each training batch (so
        after every meta-update, and once before the first), for constructions that track
        the learner; the others ignore it."""
        return None

    # ------------------------------------------------------------------ TaskSampler
    def fixed(self, episodes: int, seed: int) -> FixedTasks:
        """The same ``episodes`` made-up tasks for the same ``seed``."""
        return FixedTasks(self, episodes, seed)


class FixedTasks:
    """A reproducible set of made-up tasks, drawn again batch by batch from its seed."""

    def __init__(self, construction: TaskConstruction, episodes: int, seed: int) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be positive, got {episodes}")
        self.construction, self.episodes, self.seed = construction, episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def batches(self, batch_size: int) -> Iterator[EpisodeBatch]:
        generator = stream_generator(self.seed, FIXED_STREAM)
        for start in range(0, self.episodes, batch_size):
            count = min(batch_size, self.episodes - start)
            yield self.construction.draw(count, generator, stream=False)
