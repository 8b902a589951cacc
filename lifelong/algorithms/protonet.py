"""Prototypical Networks (Snell et al. 2017, "Prototypical Networks for Few-shot Learning").

An embedding network ``f_phi`` maps images to vectors; the prototype of class ``k`` is the
mean embedding of its support examples (eq. 1), and a query ``x`` is classified by a softmax
over its negative distances to the prototypes, ``p(y=k|x) = softmax_k(-d(f_phi(x), c_k))``
(eq. 2). Training minimises the queries' negative log-likelihood; batch norm is ordinary
(running statistics, used at test time).

A batch of B episodes is embedded in ONE encoder forward (support and query images of all
episodes together); prototypes are a batched one-hot matrix product (exact class means that
follow the labels, whatever their order) and distances a batched matrix product.

Example:
    >>> from lifelong.models.conv4 import Conv4
    >>> model = ProtoNet(Conv4(1, 28, out_features=None))
    >>> out = model.meta_loss(batch.to("cpu"))  # batch: EpisodeBatch, e.g. 60-way 5-shot
    >>> out.loss.backward()
    >>> predict = model.adapt(support_x, support_y, ways=5)  # eval mode, prototypes fixed
    >>> predict(query_x).argmax(-1)  # logits are -d(f(x), c_k) / temperature
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lifelong.algorithms.base import Algorithm, MetaLoss, ModelFactory, Predictor
from lifelong.algorithms.distances import (
    Distance,
    check_distance,
    full_precision,
    pairwise_distance,
)
from lifelong.algorithms.embedding import embed, embed_batch, eval_mode
from lifelong.algorithms.precision import Precision, check_precision
from lifelong.data.episodes import EpisodeBatch

if TYPE_CHECKING:
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts


class ProtoNet(Algorithm):
    """Prototypical Networks.

    Args:
        encoder: the embedding network ``f_phi``, e.g. ``Conv4(1, 28, out_features=None)``;
            its ``embed`` method is used when it has one.
        distance: ``d`` of eq. 2: ``"sqeuclidean"`` (the paper's choice), ``"euclidean"``,
            ``"lp"`` (with ``p``) or ``"cosine"`` (``1 - cos``).
        p: the exponent of the ``"lp"`` distance.
        temperature: logits are ``-d / temperature`` (1 in the paper; cosine distances, which
            lie in [0, 2], usually want a small one, e.g. 0.1).
        channels_last: feed images in NHWC layout (see :func:`embed`).
        precision: ``"bfloat16"`` or ``"float16"`` run the encoder under autocast (mixed
            precision; prototypes and distances stay float32), see :func:`embed`.

    Example:
        >>> model = ProtoNet(Conv4(1, 28, out_features=None), distance="cosine", temperature=0.1)
        >>> z = model.embed(images)                     # [n, D]
        >>> c = model.prototypes(z, labels, ways=5)     # [5, D] class means (eq. 1)
    """

    defaults: ClassVar[dict[str, Any]] = {
        "meta_batch": 1
    }  # one episode per step (Snell et al. 2017, section 3.1)
    own_options = ("distance", "distance_p", "temperature", "precision", "channels_last")
    evaluates_embeddings = True  # eval-mode batch norm: each image's embedding is its own

    @classmethod
    def from_config(cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory) -> ProtoNet:
        return cls(
            models(None),
            distance=cfg.distance,
            p=cfg.distance_p,
            temperature=cfg.temperature,
            channels_last=cfg.channels_last,
            precision=cfg.precision,
        )

    def __init__(
        self,
        encoder: nn.Module,
        distance: Distance = "sqeuclidean",
        p: float = 2.0,
        temperature: float = 1.0,
        channels_last: bool = True,
        precision: Precision = "float32",
    ) -> None:
        super().__init__()
        check_distance(distance, p)
        check_precision(precision)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.encoder = encoder
        self.distance: Distance = distance
        self.p = p
        self.temperature = temperature
        self.channels_last = channels_last
        self.precision: Precision = precision

    def embed(self, x: Tensor) -> Tensor:
        """``f_phi(x)``: embeddings ``[n, D]`` of inputs ``[n, ...]`` (in the current mode)."""
        return embed(self.encoder, x, self.channels_last, self.precision)

    def body(self) -> nn.Module:
        return self.encoder

    def embedding(self) -> Callable[[Tensor], Tensor]:
        return self.embed

    @staticmethod
    def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
        """Class means (eq. 1): ``embeddings [..., n, D]`` with ``labels [..., n]`` in
        ``0..ways-1`` give prototypes ``[..., ways, D]``; every class needs an example.
        Computed in at least float32 (also under autocast)."""
        if labels.shape != embeddings.shape[:-1]:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match embeddings of shape "
                f"{tuple(embeddings.shape)} (expected labels {tuple(embeddings.shape[:-1])})"
            )
        if labels.numel() == 0:
            raise ValueError("no support examples to average")
        low, high = (int(v) for v in labels.aminmax())
        if low < 0 or high >= ways:
            raise ValueError(f"labels must lie in 0..{ways - 1} ({ways} ways), got {low}..{high}")
        onehot = F.one_hot(labels, ways).float()  # [..., n, ways]
        counts = onehot.sum(-2)
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0)[:5].tolist()
            raise ValueError(f"classes without support examples (index..., class): {missing}")
        with torch.autocast(embeddings.device.type, enabled=False):
            z = full_precision(embeddings)
            onehot, counts = onehot.to(z.dtype), counts.to(z.dtype)
            return (onehot.transpose(-1, -2) @ z) / counts.unsqueeze(-1)

    def logits(self, queries: Tensor, prototypes: Tensor) -> Tensor:
        """``-d(f_phi(x), c_k) / temperature`` (eq. 2 before the softmax): ``[..., n, ways]``."""
        return pairwise_distance(queries, prototypes, self.distance, self.p).div(-self.temperature)

    def batch_logits(self, batch: EpisodeBatch) -> Tensor:
        """Query logits ``[B, N*Q, N]`` of a batch of episodes, from one encoder forward."""
        support, query = embed_batch(self.encoder, batch, self.channels_last, self.precision)
        return self.logits(query, self.prototypes(support, batch.support_y, batch.ways))

    def meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        """Mean query negative log-likelihood over all queries of the batch."""
        logits = self.batch_logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        accuracy = (logits.detach().argmax(-1) == batch.query_y).float().mean()
        return MetaLoss(loss, accuracy)

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int) -> Predictor:
        """Prototypes of the support set (eval mode, no gradient); the predictor maps queries
        to logits ``[n, ways]`` in eval mode."""
        with eval_mode(self), torch.no_grad():
            prototypes = self.prototypes(self.embed(support_x), support_y, ways)

        def predict(x: Tensor) -> Tensor:
            with eval_mode(self):
                return self.logits(self.embed(x), prototypes)

        return predict

    def evaluate_embedded(
        self, support: Tensor, support_y: Tensor, query: Tensor, query_y: Tensor, ways: int
    ) -> Tensor:
        logits = self.logits(query, self.prototypes(support, support_y, ways))
        return (logits.argmax(-1) == query_y).float().mean(-1)

    def evaluate(self, batch: EpisodeBatch) -> Tensor:
        """Per-episode query accuracy ``[B]`` in eval mode, all episodes in one forward (the
        same numbers as adapting to each episode: eval-mode batch norm is per image)."""
        with eval_mode(self), torch.no_grad():
            logits = self.batch_logits(batch)
        return (logits.argmax(-1) == batch.query_y).float().mean(-1)
