"""Pseudo-supervised tasks: PsCo's few-shot pseudo-supervision as a task construction.

Jang, Lee & Shin, ICLR 2023 ("Unsupervised Meta-Learning via Few-shot Pseudo-supervised
Contrastive Learning"; code github.com/alinlab/PsCo): a momentum network, an exponential
moving average of the learner (momentum 0.99, updated before each step), embeds each batch,
and a queue holds the momentum features of the last images seen (16384). Each image of the
batch is a made-up class whose query is an augmented view of it; its K-shot *pseudo-support*
is the K queue items that an entropic optimal-transport plan between the batch and the queue
(Sinkhorn-Knopp, 3 iterations, epsilon 0.05 on cosine similarities) gives it most of, the plan
sharing the queue out evenly. As the learner improves so does the momentum network, and with
it the supports: other real images that look alike, not only augmentations.

Here these tasks are ordinary episodes for any learner with an embedding (ProtoNet first): N
pool images drawn at random are the classes, each class's Q queries are augmented views of its
image and its K supports augmented views of the queue images matched to it; the Trainer calls
:meth:`PseudoSupervised.follow` with the learner before each draw. Deviations from PsCo: the
learner's own meta-loss replaces PsCo's SupCon + MoCo loss (supports are images through the
learner, not momentum features; there is no projector, predictor or MoCo term); features are
the L2-normalised embedding of the un-augmented image, by the momentum copy in eval mode (its
batch-norm statistics copied from the learner, as PsCo copies buffers); the queue holds
distinct images (one drawn again moves to the new end); the plan is per episode (N anchors
against the queue), and the shots are given greedily, largest plan entries first, so that each
class gets K distinct images, no image goes to two classes and no class's support is another
class's anchor (PsCo takes each row's top K). Until the queue is full the tasks are UMTRA's
(:mod:`lifelong.unlabeled.umtra`), so training starts at once. The default queue, 4096, fills
in 205 steps of ProtoNet's one 20-way episode (PsCo's 16384 is 64 steps of its 256 images);
the augmentation has UMTRA's options and defaults (PsCo crops and flips Omniglot).

Example:
    $ lifelong train --dataset omniglot --labels none --task-construction pseudo \
        --task-option queue=4096 --task-option momentum=0.99 --ways 20 --shots 1 --queries 5
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lifelong.data.augment import Augmentation
from lifelong.data.episodes import EpisodeBatch, to_device
from lifelong.unlabeled.base import TaskConstruction
from lifelong.unlabeled.umtra import UMTRA

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm


def sinkhorn(scores: Tensor, iterations: int) -> Tensor:
    """The entropic transport plan of ``scores [..., n, m]``: ``exp(scores)`` scaled by
    Sinkhorn-Knopp iterations towards rows summing to ``1/n`` and columns to ``1/m``. Each
    iteration scales the columns, then the rows, so the rows are exact; the columns converge."""
    plan = torch.exp(scores - scores.amax(dim=(-2, -1), keepdim=True))
    n, m = plan.shape[-2:]
    for _ in range(iterations):
        plan = plan / (plan.sum(-2, keepdim=True) * m)
        plan = plan / (plan.sum(-1, keepdim=True) * n)
    return plan


def share_out(plan: Tensor, items: Tensor, anchors: Tensor, shots: int) -> Tensor:
    """``shots`` queue slots for each row of ``plan [B, N, M]``, largest entries first: a slot
    whose image (``items [M]``, distinct pool indices) was given, or is another row's anchor
    (``anchors [B, N]``), is not given again. Returns slots ``[B, N, shots]``.

    Fewer than ``N * (shots + 1)`` of a row's slots are ever barred, so its best slot is among
    its top ``N * (shots + 1)``: the greedy runs on those alone (needs ``M >= N * (shots+1)``)."""
    count, ways, _ = plan.shape
    values, slots = plan.topk(ways * (shots + 1), dim=2)  # [B, N, C]
    images = items[slots]
    anchor = images.unsqueeze(-1) == anchors.view(count, 1, 1, ways)  # [B, N, C, N]
    other = ~torch.eye(ways, dtype=torch.bool).view(1, ways, 1, ways)
    values = values.masked_fill((anchor & other).any(-1), -1.0)
    chosen = torch.zeros(count, ways, shots, dtype=torch.long)
    given = torch.zeros(count, ways, dtype=torch.long)
    episodes, width = torch.arange(count), slots.shape[2]
    for _ in range(ways * shots):
        best = values.flatten(1).argmax(1)
        row, column = best // width, best % width
        chosen[episodes, row, given[episodes, row]] = slots[episodes, row, column]
        given[episodes, row] += 1
        taken = images[episodes, row, column].view(count, 1, 1)
        values.masked_fill_(images == taken, -1.0)
        full = given[episodes, row] == shots
        values[episodes[full], row[full]] = -1.0
    return chosen


class PseudoSupervised(TaskConstruction):
    """Random images as classes, their momentum-nearest queue images (optimal transport) as
    supports, augmented copies as queries (module doc)."""

    name = "pseudo"
    options: ClassVar[Mapping[str, float | str]] = {
        "momentum": 0.99,
        "queue": 4096,
        "sinkhorn_iterations": 3,
        "temperature": 0.05,
        **UMTRA.options,
    }

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        s = self.settings
        self.augment = Augmentation.of(s)
        self.size, self.iterations = int(s["queue"]), int(s["sinkhorn_iterations"])
        least = self.ways * (self.shots + 1)
        checks = {
            "momentum": (0 <= s["momentum"] <= 1, "in [0, 1]"),
            "queue": (s["queue"] == self.size >= least, f"whole, at least ways*(shots+1)={least}"),
            "sinkhorn_iterations": (
                s["sinkhorn_iterations"] == self.iterations >= 1,
                "whole, >= 1",
            ),
            "temperature": (s["temperature"] > 0, "positive"),
        }
        for key, (good, what) in checks.items():
            if not good:
                raise ValueError(f"pseudo `task_options` {key} must be {what}, got {s[key]!r}")
        if self.size > self.pool.shape[0]:
            raise ValueError(f"pseudo `task_options` queue {self.size} is larger than the pool "
                             f"({self.pool.shape[0]} images): it would never fill")  # fmt: skip
        self.queue_index = torch.zeros(0, dtype=torch.long)  # pool indices, oldest first
        self.queue_features: Tensor | None = None  # their momentum features [len, D], on the CPU
        self.encoder: Algorithm | None = None  # the momentum copy of the learner
        self.pending: dict[str, Tensor] | None = None  # its weights, loaded before it exists

    # ------------------------------------------------------------------ the momentum encoder
    def follow(self, algorithm: Algorithm) -> None:
        """Move the momentum copy towards ``algorithm``: ``m * copy + (1 - m) * algorithm`` for
        each parameter, buffers (batch-norm statistics) copied; the first call copies."""
        with torch.no_grad():
            if self.encoder is None:
                try:
                    algorithm.embedding()
                except (ValueError, NotImplementedError):
                    raise ValueError(
                        f"pseudo tasks need a learner with an embedding, and "
                        f"{type(algorithm).__name__} has none"
                    ) from None
                self.encoder = copy.deepcopy(algorithm).requires_grad_(False).eval()
                for p in self.encoder.parameters():
                    p.grad = None
                if self.pending is None:
                    return
                self.encoder.load_state_dict(self.pending)
                self.pending = None
            m = float(self.settings["momentum"])
            pairs = zip(self.encoder.parameters(), algorithm.parameters(), strict=True)
            for mine, theirs in pairs:
                mine.mul_(m).add_((1 - m) * theirs.detach())
            for mine, theirs in zip(self.encoder.buffers(), algorithm.buffers(), strict=True):
                mine.copy_(theirs)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor | None:
        """Normalised momentum features ``[n, D]`` (CPU) of ``uint8`` images, or ``None``
        before the first :meth:`follow`."""
        if self.encoder is None:
            return None
        device = next(self.encoder.parameters()).device
        z = self.encoder.embedding()(to_device(images, device))
        return F.normalize(z.float().flatten(1), dim=1).cpu()

    def ready(self) -> bool:
        """Whether the queue is full (then it holds ``queue >= N(K+1)`` distinct images)."""
        return self.queue_index.numel() == self.size

    # ------------------------------------------------------------------ episodes
    def draw(self, count: int, generator: torch.Generator, stream: bool = True) -> EpisodeBatch:
        """``count`` episodes; drawn for the training ``stream`` (not a fixed set), their
        anchors and momentum features join the queue, the oldest leave it."""
        n, shape = self.pool.shape[0], self.pool.shape[1:]
        ways, shots, queries = self.ways, self.shots, self.queries
        index = torch.rand(count, n, generator=generator).topk(ways, dim=1).indices
        anchors = self.pool.index_select(0, index.flatten())
        features = self.features(anchors)
        matched = features is not None and self.ready()
        if matched:
            assert features is not None and self.queue_features is not None
            similarity = features.view(count, ways, -1) @ self.queue_features.T
            plan = sinkhorn(similarity / self.settings["temperature"], self.iterations)
            support = self.queue_index[share_out(plan, self.queue_index, index, shots)]
        else:  # UMTRA: the image itself, then K - 1 views
            support = index.unsqueeze(-1).expand(-1, -1, shots - 1)
        sources = torch.cat([support, index.unsqueeze(-1).expand(-1, -1, queries)], dim=2)
        views = self.augment(self.pool.index_select(0, sources.flatten()), generator)
        views = views.view(count, ways, -1, *shape)
        if not matched:
            views = torch.cat([anchors.view(count, ways, 1, *shape), views], dim=2)
        if features is not None and stream:
            self.enqueue(index.flatten(), features)
        return self.episodes(views[:, :, :shots].flatten(1, 2), views[:, :, shots:].flatten(1, 2))

    def enqueue(self, images: Tensor, features: Tensor) -> None:
        """Put ``images`` (pool indices) and their features at the new end of the queue; an
        image already queued leaves its old place (the queue holds distinct images), and the
        oldest beyond the queue's size leave."""
        index = torch.cat([self.queue_index, images])
        old = self.queue_features
        features = features if old is None else torch.cat([old, features])
        unique, inverse = index.unique(return_inverse=True)
        last = torch.zeros(len(unique), dtype=torch.long)
        last.scatter_reduce_(0, inverse, torch.arange(len(index)), "amax", include_self=False)
        keep = last.sort().values[-self.size :]
        self.queue_index, self.queue_features = index[keep], features[keep]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The generator, the queue and the momentum copy's weights (copies)."""
        state: dict[str, Any] = {**super().state_dict(), "queue_index": self.queue_index.clone()}
        if self.queue_features is not None:
            state["queue_features"] = self.queue_features.clone()
        weights = self.pending if self.encoder is None else self.encoder.state_dict()
        if weights is not None:
            state["momentum"] = {k: v.detach().clone() for k, v in weights.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.queue_index = state["queue_index"].to(torch.long)
        self.queue_features = state.get("queue_features")
        if self.queue_features is not None and len(self.queue_features) != len(self.queue_index):
            raise ValueError("the pseudo queue's features do not match its images")
        weights = state.get("momentum")
        if weights is None:
            self.encoder = self.pending = None
        elif self.encoder is None:
            self.pending = dict(weights)
        else:
            self.encoder.load_state_dict(weights)
