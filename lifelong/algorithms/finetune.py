"""The transfer-learning baseline: pre-train a classifier, then fit a new head per task.

Chen et al. 2019 ("A Closer Look at Few-shot Classification", Baseline) and Tian et al. 2020
("Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need"): the backbone
is trained with ordinary cross-entropy over ALL meta-train classes (the global class ids of
each episode's images, ``EpisodeBatch.classes``); on a new task the backbone is frozen and a
new linear head (multinomial logistic regression) is fitted to the support embeddings, here
by full-batch Adam with optional L2 weight decay; embeddings are L2-normalised first (Tian et
al. 2020) unless ``normalize=False``.

Example:
    >>> from lifelong.models.conv4 import Conv4
    >>> model = FineTune(Conv4(1, 28, out_features=None), num_classes=len(train_split))
    >>> model.meta_loss(batch.to("cpu")).loss.backward()   # pre-training step
    >>> predict = model.adapt(support_x, support_y, ways=5)  # fits a 5-way head
    >>> predict(query_x).argmax(-1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lifelong.algorithms.base import Algorithm, MetaLoss, ModelFactory, Predictor, global_labels
from lifelong.algorithms.embedding import embed, embed_batch, eval_mode
from lifelong.algorithms.precision import Precision, check_precision
from lifelong.data.episodes import EpisodeBatch

if TYPE_CHECKING:
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts


def fit_linear_head(
    features: Tensor,
    labels: Tensor,
    ways: int,
    steps: int = 100,
    lr: float = 0.01,
    weight_decay: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression ``logits = features @ W^T + b``, fitted by full-batch
    Adam from zero, independently for each leading index (episode).

    Args:
        features: ``[..., n, D]`` (treated as constants).
        labels: ``[..., n]`` in ``0..ways-1``.
        ways: number of classes.
        steps, lr: Adam iterations and learning rate.
        weight_decay: L2 penalty (Adam's, added to the gradient).

    Returns:
        ``W [..., ways, D]`` and ``b [..., ways]``. Each episode's loss is its mean
        cross-entropy and Adam is elementwise, so fitting B episodes together gives the same
        heads as fitting them one by one.
    """
    if labels.shape != features.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match features of shape "
            f"{tuple(features.shape)}"
        )
    features = features.detach()
    batch_shape, dim = features.shape[:-2], features.shape[-1]
    weight = features.new_zeros(*batch_shape, ways, dim, requires_grad=True)
    bias = features.new_zeros(*batch_shape, ways, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            logits = linear_head(features, weight, bias)
            # Cross-entropy as logsumexp - true logit: on a busy CPU, log_softmax's kernel,
            # which splits even tiny inputs across threads, made this loop ~40x slower.
            true = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            loss = (logits.logsumexp(-1) - true).sum() / labels.shape[-1]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weight.detach(), bias.detach()


def linear_head(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Logits ``[..., n, ways]``: ``features [..., n, D] @ weight[..., ways, D]^T + bias``."""
    return features @ weight.transpose(-1, -2) + bias.unsqueeze(-2)


class FineTune(Algorithm):
    """Pre-train on all meta-train classes, then fit a linear head on each task's support.

    Args:
        encoder: the backbone, e.g. ``Conv4(1, 28, out_features=None)`` (``embed`` is used when
            it has one).
        num_classes: meta-train classes (their ids are ``0..num_classes-1``).
        head_steps, head_lr: Adam iterations and learning rate of the per-task head.
        head_weight_decay: L2 penalty of the per-task head.
        normalize: L2-normalise embeddings before the per-task head (Tian et al. 2020).
        embedding_dim: size of the embedding; read from ``encoder.embedding_dim`` if omitted.
        channels_last, precision: how images are fed to the encoder (see
            :func:`lifelong.algorithms.embedding.embed`).

    Example:
        >>> model = FineTune(ResNet12(3, 84), num_classes=64, head_steps=300)
    """

    min_ways = 1  # its loss is over all training classes, whatever an episode holds
    learns_class_ids = True
    own_options = ("precision", "channels_last")

    @classmethod
    def from_config(cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory) -> FineTune:
        """Pre-trained over the classes of the run's training split; the head is fitted with
        ``inner_lr`` for ``eval_inner_steps`` (else ``inner_steps``) Adam steps."""
        head = {"head_lr": cfg.inner_lr, "head_steps": cfg.eval_inner_steps or cfg.inner_steps}
        return cls(
            models(None),
            num_classes=(facts.classes or {}).get(cfg.train_split, 0),
            **{k: v for k, v in head.items() if v is not None},
            channels_last=cfg.channels_last,
            precision=cfg.precision,
        )

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        head_steps: int = 100,
        head_lr: float = 0.01,
        head_weight_decay: float = 0.0,
        normalize: bool = True,
        embedding_dim: int | None = None,
        channels_last: bool = True,
        precision: Precision = "float32",
    ) -> None:
        super().__init__()
        check_precision(precision)
        dim = (
            embedding_dim if embedding_dim is not None else getattr(encoder, "embedding_dim", None)
        )
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(
                f"embedding size unknown: pass embedding_dim (the encoder "
                f"{type(encoder).__name__} has embedding_dim={dim!r})"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if head_steps < 1 or not head_lr > 0:
            raise ValueError(f"need head_steps >= 1 and head_lr > 0, got {head_steps}, {head_lr}")
        self.encoder = encoder
        self.classifier = nn.Linear(dim, num_classes)
        self.head_steps, self.head_lr = head_steps, head_lr
        self.head_weight_decay = head_weight_decay
        self.normalize = normalize
        self.channels_last = channels_last
        self.precision: Precision = precision

    def features(self, x: Tensor) -> Tensor:
        """The embeddings a per-task head sees (L2-normalised if ``normalize``)."""
        return self.head_input(embed(self.encoder, x, self.channels_last, self.precision))

    def body(self) -> nn.Module:
        return self.encoder

    def embedding(self) -> Callable[[Tensor], Tensor]:
        return self.features

    @property
    def test_steps(self) -> int:
        return self.head_steps

    def head_input(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) if self.normalize else z

    def meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        """Cross-entropy of the global classifier on all images of the batch."""
        support_y, query_y = global_labels(batch, self.classifier.out_features, "FineTune")
        support, query = embed_batch(self.encoder, batch, self.channels_last, self.precision)
        logits = self.classifier(torch.cat((support.flatten(0, 1), query.flatten(0, 1))))
        targets = torch.cat((support_y.flatten(), query_y.flatten()))
        loss = F.cross_entropy(logits, targets)
        return MetaLoss(loss, (logits.detach().argmax(-1) == targets).float().mean())

    def fit(self, support: Tensor, support_y: Tensor, ways: int) -> tuple[Tensor, Tensor]:
        """A new head on embeddings ``support [..., n, D]`` (see :func:`fit_linear_head`)."""
        return fit_linear_head(
            self.head_input(support),
            support_y,
            ways,
            self.head_steps,
            self.head_lr,
            self.head_weight_decay,
        )

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int) -> Predictor:
        """Fit a ``ways``-way head on the frozen support embeddings (eval mode)."""
        with eval_mode(self), torch.no_grad():
            support = embed(self.encoder, support_x, self.channels_last, self.precision)
        weight, bias = self.fit(support, support_y, ways)

        def predict(x: Tensor) -> Tensor:
            with eval_mode(self):
                return linear_head(self.features(x), weight, bias)

        return predict

    def evaluate(self, batch: EpisodeBatch) -> Tensor:
        """Per-episode query accuracy ``[B]``: one forward for all images, all heads fitted
        together (the same heads as :meth:`adapt` episode by episode)."""
        with eval_mode(self), torch.no_grad():
            support, query = embed_batch(self.encoder, batch, self.channels_last, self.precision)
        weight, bias = self.fit(support, batch.support_y, batch.ways)
        logits = linear_head(self.head_input(query), weight, bias)
        return (logits.argmax(-1) == batch.query_y).float().mean(-1)
