"""Prototype memory: a meta-learned embedding plus running class means.

Prototypical Networks (Snell et al. 2017) classify by the distance to class means of a
meta-learned embedding. Learning a class is then nothing but updating its mean, which can be
done online, one example at a time, in ``O(d)``: ``c_k <- c_k + (f(x) - c_k) / n_k``. The
embedding stays frozen, so nothing learned before is ever overwritten: the prototype of a class
depends only on that class's examples, and after any stream it equals the batch mean of all of
them (the i.i.d. ProtoNet classifier). Accuracy on old classes can still drop as new classes
arrive, because more prototypes compete, never because a prototype changed. This is the
continual use of prototypes studied, e.g., by De Lange & Tuytelaars 2021 ("Continual Prototype
Evolution") with a fixed embedding.

Example:
    >>> memory = PrototypeMemory(protonet.embed, num_classes=600)
    >>> memory.observe(images_of_class_0, torch.zeros(15, dtype=torch.long))
    >>> memory.predict(test_images).argmax(-1)       # among the classes seen so far
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lifelong.algorithms.distances import Distance, check_distance, pairwise_distance
from lifelong.continual.base import ContinualLearner


class PrototypeMemory(ContinualLearner):
    """Running class means of a frozen embedding; logits ``-d(f(x), c_k) / temperature``.

    Args:
        embed: the embedding ``f`` (e.g. ``ProtoNet.embed`` in eval mode), ``[n, ...] ->
            [n, D]``; called without gradient.
        num_classes: the most classes the memory will hold.
        distance, p, temperature: as in :class:`lifelong.algorithms.protonet.ProtoNet`.
        chunk: images embedded at a time by :meth:`predict`.
    """

    def __init__(
        self,
        embed: Callable[[Tensor], Tensor],
        num_classes: int,
        distance: Distance = "sqeuclidean",
        p: float = 2.0,
        temperature: float = 1.0,
        chunk: int = 1024,
    ) -> None:
        super().__init__(num_classes)
        check_distance(distance, p)
        self.embed, self.distance, self.p = embed, distance, p
        self.temperature, self.chunk = temperature, chunk
        self.means: Tensor | None = None
        self.counts = torch.zeros(num_classes, dtype=torch.long)

    @torch.no_grad()
    def observe(self, x: Tensor, y: Tensor) -> None:
        """Fold the examples into their class means: ``c_k += (sum_new - n_new c_k) /
        (n_k + n_new)``, the running mean over a chunk (the same as one example at a time)."""
        self.record(y)
        z = self.embed(x).double()
        if self.means is None:
            self.means = z.new_zeros(self.num_classes, z.shape[1])
        y = y.to(z.device)
        sums = torch.zeros_like(self.means).index_add_(0, y, z)
        new = torch.bincount(y, minlength=self.num_classes)
        self.counts += new.cpu()
        total = self.counts.to(z.device).clamp_min(1).unsqueeze(1).double()
        self.means += (sums - new.unsqueeze(1) * self.means) / total

    @property
    def prototypes(self) -> Tensor:
        """The class means ``[num_classes, D]`` (zeros for classes not seen yet)."""
        if self.means is None:
            raise ValueError("the prototype memory has not seen any example yet")
        return self.means

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        prototypes = self.prototypes.float()
        logits = torch.cat(
            [
                pairwise_distance(self.embed(part).float(), prototypes, self.distance, self.p)
                for part in x.split(self.chunk)
            ]
        ).div_(-self.temperature)
        return self.mask_unseen(logits)
