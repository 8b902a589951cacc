"""Nearest class mean: the Prototypical Networks rule (Snell et al. 2017, eqs. 1-2).

The prototype of class ``k`` is the mean of its features, ``c_k = s_k / n_k``, and the logits
are ``-d(z, c_k) / T`` with the run's distance ``d`` (squared Euclidean in the paper) and
temperature ``T``. A prototype depends only on its own class's examples and never changes once
they are seen; after any stream it equals the batch mean (the i.i.d. ProtoNet classifier).

Example:
    >>> model = NearestMean(protonet.embed, num_classes=600)
    >>> model.observe(images, labels)
    >>> model.predict(queries).argmax(-1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lifelong.algorithms.distances import Distance, check_distance, pairwise_distance
from lifelong.continual.classifiers.base import ClassModel, ClassStatistics

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm
    from lifelong.data.classes import ClassDataset


class NearestMean(ClassModel):
    """Nearest class mean under the run's distance (see the module doc).

    Args:
        embed, num_classes, chunk: as :class:`ClassModel`.
        distance, p, temperature: as :class:`lifelong.algorithms.protonet.ProtoNet`.
    """

    name = "mean"
    summary = "nearest class mean under the run's distance (ProtoNet, Snell et al. 2017)"

    def __init__(
        self,
        embed: Callable[[Tensor], Tensor],
        num_classes: int,
        distance: Distance = "sqeuclidean",
        p: float = 2.0,
        temperature: float = 1.0,
        chunk: int = 1024,
        **options: float,
    ) -> None:
        super().__init__(embed, num_classes, chunk, **options)
        check_distance(distance, p)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.distance, self.p, self.temperature = distance, float(p), float(temperature)

    @classmethod
    def from_run(
        cls,
        algorithm: Algorithm,
        num_classes: int,
        training: ClassDataset | None,
        options: dict[str, float],
    ) -> NearestMean:
        """The run's own distance and temperature."""
        rule = {"distance": algorithm.distance, "p": algorithm.p}
        return cls(
            algorithm.embedding(), num_classes, **rule, temperature=algorithm.temperature, **options
        )

    def config(self) -> dict[str, Any]:
        extra = {"distance": self.distance, "p": self.p, "temperature": self.temperature}
        return {**super().config(), **extra}

    def fit(self, stats: ClassStatistics) -> tuple[Tensor, Tensor]:
        """The class means ``[K, D]`` and their squared norms ``[K]``."""
        means = stats.means()
        return means, means.square().sum(1)

    def scores(self, z: Tensor, fitted: tuple[Tensor, Tensor]) -> Tensor:
        means, norms = fitted
        if self.distance != "sqeuclidean":
            return pairwise_distance(z, means, self.distance, self.p).div_(-self.temperature)
        # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2 with the norms of the means kept from fit
        distances = torch.addmm(norms, z, means.T, alpha=-2).add_(z.square().sum(1, keepdim=True))
        return distances.clamp_(min=0).div_(-self.temperature)

    def energies(self, logits: Tensor) -> Tensor:
        """The distances to the prototypes, in the run's units."""
        return -logits * self.temperature

    @property
    def prototypes(self) -> Tensor:
        """The class means ``[K, D]`` (zeros for classes not seen yet)."""
        return self.fitted()[0]
