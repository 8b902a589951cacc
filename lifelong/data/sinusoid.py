"""Sinusoid regression tasks of MAML (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", section 5.1).

A task is the function ``y = A sin(x - phase)`` with the amplitude ``A ~ U[0.1, 5.0]`` and the
phase ``~ U[0, pi]``; its K support and Q query points have ``x ~ U[-5, 5]``. Tasks come as
:class:`~lifelong.data.episodes.EpisodeBatch` es with ``ways = 0`` (regression), so every
algorithm and the trainer treat them like image episodes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from lifelong.data.episodes import FIXED_STREAM, EpisodeBatch, TaskStream, stream_generator


def sinusoid(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
    """``amplitude * sin(x - phase)``, broadcasting."""
    return amplitude * torch.sin(x - phase)


class SinusoidSampler(TaskStream):
    """Draws K-shot Q-query sinusoid regression tasks, deterministically; the interface of
    :class:`~lifelong.data.episodes.EpisodeSampler`.

    Args:
        shots: K, support points per task.
        queries: Q, query points per task.
        seed: seed of the task stream (:class:`~lifelong.data.episodes.TaskStream`).
        amplitude, phase, x_range: the ``(low, high)`` of the uniform distributions of the
            amplitude, the phase and the inputs.

    Example:
        >>> sampler = SinusoidSampler(shots=10, queries=10, seed=0)
        >>> batch = sampler.sample(25)        # support_x [25, 10, 1], ways == 0
        >>> test = sampler.fixed(600, seed=1)
        >>> test.curves(torch.linspace(-5, 5, 100))[0]  # the first task's true function
    """

    def __init__(
        self,
        shots: int,
        queries: int,
        seed: int = 0,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        super().__init__(seed)
        for what, value in (("shots", shots), ("queries", queries)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        for what, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise ValueError(f"{what} must be a (low, high) range, got ({low}, {high})")
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    def _draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Amplitudes ``[n]``, phases ``[n]`` and inputs ``[n, K+Q]`` of ``n`` tasks."""

        def uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
            low, high = bounds
            return torch.rand(*shape, generator=generator).mul_(high - low).add_(low)

        amplitude = uniform(self.amplitude, n)
        phase = uniform(self.phase, n)
        return amplitude, phase, uniform(self.x_range, n, self.shots + self.queries)

    def _batch(self, amplitude: Tensor, phase: Tensor, x: Tensor) -> EpisodeBatch:
        a, p = amplitude[:, None, None], phase[:, None, None]
        support, query = (
            part.contiguous() for part in x.unsqueeze(-1).split([self.shots, self.queries], 1)
        )
        return EpisodeBatch(
            support, sinusoid(support, a, p), query, sinusoid(query, a, p), ways=0, shots=self.shots
        )

    def draw(self, count: int, generator: torch.Generator) -> EpisodeBatch:
        return self._batch(*self._draw(count, generator))

    def fixed(self, episodes: int, seed: int) -> FixedSinusoids:
        """A fixed list of ``episodes`` tasks: the same ``seed`` (and sampler settings) give the
        same tasks, whatever this sampler's own stream has drawn so far."""
        if episodes < 1:
            raise ValueError(f"episodes must be positive, got {episodes}")
        return FixedSinusoids(self, *self._draw(episodes, stream_generator(seed, FIXED_STREAM)))


class FixedSinusoids:
    """A reproducible evaluation set of sinusoid tasks. It keeps each task's ``amplitude [E]``
    and ``phase [E]`` for plots of the true functions next to the adapted ones."""

    def __init__(
        self, sampler: SinusoidSampler, amplitude: Tensor, phase: Tensor, x: Tensor
    ) -> None:
        self.sampler, self.amplitude, self.phase, self.x = sampler, amplitude, phase, x

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int) -> Iterator[EpisodeBatch]:
        for start in range(0, len(self), batch_size):
            part = slice(start, start + batch_size)
            yield self.sampler._batch(self.amplitude[part], self.phase[part], self.x[part])

    def curves(self, x: Tensor) -> Tensor:
        """The true function of every task at the points ``x [G]``: ``[E, G]``."""
        return sinusoid(x, self.amplitude[:, None], self.phase[:, None])
