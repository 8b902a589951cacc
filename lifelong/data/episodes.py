"""Episodic tasks: N-way K-shot Q-query episodes drawn from a :class:`ClassDataset`.

An episode (Vinyals et al. 2016, "Matching Networks for One Shot Learning") is a small
classification task: N classes drawn from the split, K labelled *support* images and Q *query*
images of each, support and query disjoint, labels remapped to ``0..N-1`` in random order. A
batch of B episodes is produced with index arithmetic and one gather from the in-memory
``uint8`` images: no decoding, no Python loop over images.

Layout: inside an episode, support and query are class-major: the support label of position
``i`` is ``i // K`` and the query label of position ``j`` is ``j // Q``.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from lifelong.data.augment import Augmentation
from lifelong.data.classes import ClassDataset


def to_device(t: Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """``t`` on ``device``: ``uint8`` images become ``dtype`` in ``[0, 1]``, other floats become
    ``dtype``, integers (labels) stay as they are. To a GPU, a host tensor is copied through
    pinned (page-locked) memory without blocking, and images travel as ``uint8`` (a quarter of
    the bytes of float32), converted on the GPU."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    if t.dtype == torch.uint8:  # a tensor divisor (CUDA divides by a number via its reciprocal)
        return t.to(dtype).div_(torch.full((), 255.0, dtype=dtype, device=t.device))
    return t.to(dtype) if t.is_floating_point() else t


@dataclass
class Episode:
    """One task: ``support_x [N*K, ...]``, ``support_y [N*K]``, ``query_x [N*Q, ...]``,
    ``query_y [N*Q]``. For classification ``y`` are labels ``0..N-1`` (``ways = N``); for
    regression ``y`` are float targets and ``ways = 0``."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int
    shots: int


@dataclass
class EpisodeBatch:
    """B episodes stacked: ``support_x [B, N*K, ...]``, ``support_y [B, N*K]``,
    ``query_x [B, N*Q, ...]``, ``query_y [B, N*Q]``; ``classes [B, N]`` holds the dataset class
    index behind each label (``None`` for regression tasks); ``keys [B]`` (int64, kept on the
    CPU) seed the learner's own random draws on each task, such as the order of an inner loop's
    mini-batches (:func:`task_keys`: a function of the task's place in its stream, so not of
    the process or batch that draws it; ``None``: the learner draws from its own state).
    Images stay ``uint8`` until :meth:`to` turns them into floats in ``[0, 1]`` on the target
    device."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int
    shots: int
    classes: Tensor | None = None
    keys: Tensor | None = None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    @property
    def queries(self) -> int:
        return self.query_x.shape[1] // self.ways if self.ways else self.query_x.shape[1]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> EpisodeBatch:
        """Move to ``device`` with :func:`to_device`: ``uint8`` images become ``dtype`` in
        ``[0, 1]``, other floats become ``dtype``, labels stay integer."""
        device = torch.device(device)
        return EpisodeBatch(
            to_device(self.support_x, device, dtype),
            to_device(self.support_y, device, dtype),
            to_device(self.query_x, device, dtype),
            to_device(self.query_y, device, dtype),
            self.ways,
            self.shots,
            None if self.classes is None else to_device(self.classes, device, dtype),
            self.keys,
        )

    def __getitem__(self, index: int | slice) -> Episode | EpisodeBatch:
        """``batch[i]`` is one :class:`Episode`; ``batch[i:j]`` a smaller batch."""
        if isinstance(index, slice):
            return EpisodeBatch(
                self.support_x[index],
                self.support_y[index],
                self.query_x[index],
                self.query_y[index],
                self.ways,
                self.shots,
                None if self.classes is None else self.classes[index],
                None if self.keys is None else self.keys[index],
            )
        return Episode(
            self.support_x[index],
            self.support_y[index],
            self.query_x[index],
            self.query_y[index],
            self.ways,
            self.shots,
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]  # type: ignore[misc]

    @staticmethod
    def cat(batches: list[EpisodeBatch]) -> EpisodeBatch:
        """Concatenate batches of the same shape along the episode dimension."""
        first = batches[0]
        parts = {
            f.name: torch.cat([getattr(b, f.name) for b in batches])
            for f in fields(EpisodeBatch)
            if isinstance(getattr(first, f.name), Tensor)
        }
        return EpisodeBatch(ways=first.ways, shots=first.shots, **parts)


@runtime_checkable
class EpisodeSet(Protocol):
    """A fixed set of episodes, materialised batch by batch (:class:`FixedEpisodes`,
    :class:`~lifelong.data.sinusoid.FixedSinusoids`)."""

    def batches(self, batch_size: int) -> Iterable[EpisodeBatch]: ...


@runtime_checkable
class TaskSampler(Protocol):
    """What draws the tasks of a run (the :class:`TaskStream` samplers): a deterministic,
    indexed stream of tasks, fixed evaluation sets, and a position to checkpoint."""

    def tasks(self, first: int, count: int) -> EpisodeBatch:
        """Tasks ``first .. first + count - 1`` of the sampler's stream."""
        ...

    def sample(self, batch_size: int) -> EpisodeBatch:
        """The next ``batch_size`` tasks of the sampler's stream."""
        ...

    def fixed(self, episodes: int, seed: int) -> EpisodeSet:
        """The same ``episodes`` tasks for the same ``seed``, whatever the stream drew."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """The position of the stream."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Resume the stream from :meth:`state_dict`."""
        ...


FIXED_STREAM = 2**31 - 1
"""The stream id of fixed evaluation episode sets."""
TASK_STREAM = 2**31 - 3
"""The stream id under which training tasks are keyed by their index (:func:`task_generator`;
``SeedSequence`` pads keys with zeros, so no other stream may use it)."""
FIXED_CHUNK = 1024
"""Fixed sets are drawn this many episodes at a time, to bound the memory of the draw."""
LEARNER_DRAWS = 1
"""The key after a task's index that seeds the learner's own draws on the task
(:func:`task_keys`); the task itself is drawn under key 0 (``SeedSequence`` pads with zeros)."""


def stream_seed(seed: int, stream: int = 0, *key: int) -> int:
    """The 64-bit seed of the random stream (``seed``, ``stream``, ``key``...) (numpy
    ``SeedSequence`` mixing): different keys never share draws."""
    words = np.random.SeedSequence([seed, stream, *key]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 32 | int(words[1])


def stream_generator(seed: int, stream: int = 0, *key: int) -> torch.Generator:
    """A generator of the random stream :func:`stream_seed` (``seed``, ``stream``, ``key``...)."""
    return torch.Generator().manual_seed(stream_seed(seed, stream, *key))


def task_keys(seed: int, stream: int, first: int, count: int) -> Tensor:
    """The :attr:`EpisodeBatch.keys` of tasks ``first .. first + count - 1`` of ``stream``
    (:data:`TASK_STREAM`, :data:`FIXED_STREAM`) of ``seed``: int64 seeds of the learner's own
    draws on each task, independent of the draws that made the task.

    Example:
        >>> task_keys(0, TASK_STREAM, 5, 2).equal(task_keys(0, TASK_STREAM, 0, 7)[5:])
        True
    """
    return torch.tensor(
        [stream_seed(seed, stream, first + i, LEARNER_DRAWS) >> 1 for i in range(count)]
    )


def task_generator(seed: int, task: int) -> torch.Generator:
    """The generator of task ``task`` of the training stream of ``seed``: every task is drawn
    from its own, so a task depends on (``seed``, ``task``) alone."""
    return stream_generator(seed, TASK_STREAM, task)


class TaskStream(ABC):
    """The base of the samplers: an indexed stream of tasks.

    Task ``i`` of the stream is drawn by :meth:`draw` from its own generator
    (:func:`task_generator`), so the tasks of a meta-batch are the same whether one process
    draws them all or ``W`` processes draw ``1/W`` each (:meth:`tasks` with their offsets), and
    a run resumes on any number of processes. :meth:`sample` reads the stream in order from
    :attr:`position`, the whole checkpointed state.
    """

    def __init__(self, seed: int) -> None:
        self.seed, self.position = seed, 0

    @abstractmethod
    def draw(self, count: int, generator: torch.Generator) -> EpisodeBatch:
        """``count`` tasks, every random number from ``generator``."""

    def tasks(self, first: int, count: int) -> EpisodeBatch:
        """Tasks ``first .. first + count - 1`` of the stream (task ``i`` from
        ``task_generator(seed, i)``, with its :func:`task_keys`)."""
        if count < 1 or first < 0:
            raise ValueError(f"tasks {first}.. ({count}): first >= 0 and count >= 1 are needed")
        batch = self.draw_each([task_generator(self.seed, first + i) for i in range(count)])
        return replace(batch, keys=task_keys(self.seed, TASK_STREAM, first, count))

    def draw_each(self, generators: list[torch.Generator]) -> EpisodeBatch:
        """One task from each generator, in a batch (:meth:`draw` of one task each)."""
        return EpisodeBatch.cat([self.draw(1, generator) for generator in generators])

    def sample(self, batch_size: int) -> EpisodeBatch:
        """The next ``batch_size`` tasks of the stream."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        batch = self.tasks(self.position, batch_size)
        self.position += batch_size
        return batch

    def state_dict(self) -> dict[str, Tensor]:
        return {"position": torch.tensor(self.position)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "position" not in state:
            raise ValueError(
                "the sampler state has no task-stream position: a lifelong older than keyed "
                "task streams saved it (Trainer.load_state_dict resumes such runs from their step)"
            )
        self.position = int(state["position"])


class EpisodeSampler(TaskStream):
    """Draws N-way K-shot Q-query episodes from a :class:`ClassDataset`, deterministically.

    Args:
        dataset: the split to sample from (its classes are all the classes an episode may use).
        ways: N, classes per episode.
        shots: K, support images per class.
        queries: Q, query images per class (disjoint from the support).
        seed: seed of the task stream (:class:`TaskStream`).
        augment: a random view of every image of a drawn task (support and query), its random
            numbers from the task's own generator; never of :meth:`fixed` episodes (evaluation
            sees the images as they are).

    Example:
        >>> sampler = EpisodeSampler(train_split, ways=5, shots=1, queries=15, seed=0)
        >>> batch = sampler.sample(32)          # EpisodeBatch, support_x [32, 5, 1, 28, 28]
        >>> test = sampler.fixed(1000, seed=1)  # the same 1000 episodes for every method
    """

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        augment: Augmentation | None = None,
    ) -> None:
        super().__init__(seed)
        self.augment = augment
        for what, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        ways, shots, queries = int(ways), int(shots), int(queries)
        if ways > len(dataset):
            raise ValueError(
                f"{ways}-way episodes need {ways} classes, but split {dataset.name!r} "
                f"has only {len(dataset)}"
            )
        if shots + queries > dataset.min_count:
            smallest = dataset.classes[int(dataset.counts.argmin())].label
            raise ValueError(
                f"{shots} shots + {queries} queries = {shots + queries} images per class, but "
                f"class {smallest!r} of split {dataset.name!r} has only {dataset.min_count}"
            )
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        self._uniform_counts = bool((dataset.counts == dataset.counts[0]).all())

    def _draw_indices(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Class ids ``[n, N]`` and global image indices ``[n, N, K+Q]`` for n episodes."""
        ds = self.dataset
        per_class = self.shots + self.queries
        # N distinct classes per episode, in random order (top-k of uniform keys).
        classes = torch.rand(n, len(ds), generator=generator).topk(self.ways, dim=1).indices
        counts = ds.counts[classes]
        width = int(counts.max()) if not self._uniform_counts else int(ds.counts[0])
        keys = torch.rand(n, self.ways, width, generator=generator)
        if not self._uniform_counts:
            keys.masked_fill_(torch.arange(width) >= counts.unsqueeze(-1), -1.0)
        local = keys.topk(per_class, dim=2).indices
        return classes, ds.offsets[classes].unsqueeze(-1) + local

    def _gather(self, classes: Tensor, index: Tensor) -> EpisodeBatch:
        n, k = index.shape[0], self.shots
        images = self.dataset.images
        shape = images.shape[1:]

        def gather(part: Tensor) -> Tensor:  # index_select is several times faster than []
            return images.index_select(0, part.reshape(-1)).view(n, -1, *shape)

        support_y, query_y = self.labels(n)
        return EpisodeBatch(
            support_x=gather(index[:, :, :k]),
            support_y=support_y,
            query_x=gather(index[:, :, k:]),
            query_y=query_y,
            ways=self.ways,
            shots=self.shots,
            classes=classes,
        )

    def labels(self, n: int) -> tuple[Tensor, Tensor]:
        """Support ``[n, N*K]`` and query ``[n, N*Q]`` labels of ``n`` episodes (class-major)."""
        labels = torch.arange(self.ways)
        support = labels.repeat_interleave(self.shots).expand(n, -1).contiguous()
        return support, labels.repeat_interleave(self.queries).expand(n, -1).contiguous()

    def draw(self, count: int, generator: torch.Generator) -> EpisodeBatch:
        return self._augmented(self._gather(*self._draw_indices(count, generator)), [generator])

    def draw_each(self, generators: list[torch.Generator]) -> EpisodeBatch:
        drawn = [self._draw_indices(1, generator) for generator in generators]
        batch = self._gather(torch.cat([c for c, _ in drawn]), torch.cat([i for _, i in drawn]))
        return self._augmented(batch, generators)

    def _augmented(self, batch: EpisodeBatch, generators: list[torch.Generator]) -> EpisodeBatch:
        """``batch`` with :attr:`augment`'s views of its images: episode ``i`` drawn from
        ``generators[i]`` (one generator: all episodes from it, in order)."""
        if self.augment is None:
            return batch
        n = batch.support_x.shape[0]
        per_episode = generators if len(generators) == n else generators * n

        def view(images: Tensor) -> Tensor:
            return torch.stack(
                [self.augment(x, g) for x, g in zip(images, per_episode, strict=True)]
            )

        return replace(batch, support_x=view(batch.support_x), query_x=view(batch.query_x))

    def fixed(self, episodes: int, seed: int) -> FixedEpisodes:
        """A fixed list of ``episodes`` episodes: the same ``seed`` (and sampler settings) give
        the same tasks, whatever this sampler's own stream has drawn so far."""
        if episodes < 1:
            raise ValueError(f"episodes must be positive, got {episodes}")
        generator = stream_generator(seed, FIXED_STREAM)
        chunks = [
            self._draw_indices(min(FIXED_CHUNK, episodes - start), generator)
            for start in range(0, episodes, FIXED_CHUNK)
        ]
        return FixedEpisodes(
            self,
            torch.cat([c for c, _ in chunks]),
            torch.cat([i for _, i in chunks]),
            task_keys(seed, FIXED_STREAM, 0, episodes),
        )


class FixedEpisodes:
    """A reproducible evaluation set: the indices of a fixed list of episodes, materialised
    batch by batch, each episode with its :func:`task_keys` (by its place in the set, so that
    what a learner draws for it does not depend on the batches)."""

    def __init__(
        self, sampler: EpisodeSampler, classes: Tensor, index: Tensor, keys: Tensor
    ) -> None:
        self.sampler, self.classes, self.index, self.keys = sampler, classes, index, keys

    def __len__(self) -> int:
        return self.index.shape[0]

    def batches(self, batch_size: int) -> Iterator[EpisodeBatch]:
        for start in range(0, len(self), batch_size):
            part = slice(start, start + batch_size)
            batch = self.sampler._gather(self.classes[part], self.index[part])
            yield replace(batch, keys=self.keys[part])
