"""A bounded memory of past examples filled by reservoir sampling.

Reservoir sampling (Vitter 1985, "Random Sampling with a Reservoir", Algorithm R) keeps a
uniform random sample of everything seen: after ``n`` examples, each of them is in a buffer of
capacity ``m`` with probability ``min(1, m / n)``, whatever the order they came in. Experience
replay with such a buffer is the strong simple baseline of Chaudhry et al. 2019 ("On Tiny
Episodic Memories in Continual Learning"): each update mixes the incoming examples with a
batch drawn from the buffer.

Example:
    >>> buffer = ReservoirBuffer(capacity=200, seed=0)
    >>> buffer.add(x, y)                    # any number of examples, in stream order
    >>> old_x, old_y = buffer.sample(10)    # up to 10 distinct stored examples
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class ReservoirBuffer:
    """At most ``capacity`` examples, a uniform sample of all examples added.

    Args:
        capacity: the most examples kept (at least 1).
        seed: seed of the replacement and sampling decisions.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(
                f"a replay buffer needs room for at least 1 example, got a capacity of {capacity!r}"
            )
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.size = 0
        self.added = 0

    def __len__(self) -> int:
        return self.size

    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer the examples ``x [n, ...]``, ``y [n, ...]`` one after another (Algorithm R)."""
        if self.x is None or self.y is None:
            self.x = x.new_empty(self.capacity, *x.shape[1:])
            self.y = y.new_empty(self.capacity, *y.shape[1:])
        for i in range(x.shape[0]):
            self.added += 1
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                slot = int(self.rng.integers(self.added))
                if slot >= self.capacity:
                    continue
            self.x[slot] = x[i]
            self.y[slot] = y[i]

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Up to ``n`` distinct stored examples, uniformly at random."""
        if self.x is None or self.y is None or self.size == 0:
            raise ValueError("the replay buffer is empty")
        pick = torch.randperm(self.size, generator=self.generator)[:n].to(self.x.device)
        return self.x[pick], self.y[pick]
