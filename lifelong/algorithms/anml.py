"""ANML: A Neuromodulated Meta-Learning algorithm (Beaulieu et al. 2020, "Learning to
Continually Learn", ECAI).

Two networks read the same image ``x``: a neuromodulatory network (NM) and a prediction network
(PN). The NM's output, through a sigmoid, gates the features of the PN's last convolutional
layer elementwise, and the PN's last (linear) layer classifies the gated features:

    h(x) = f_PN(x) * sigmoid(W_g f_NM(x) + b_g)        (a gate in (0, 1) per feature)
    logits(x) = W h(x) + b

The gate switches features on and off per input (selective activation), and so also which
weights of the last layer an SGD step changes, since ``dloss/dW = (softmax - onehot) h(x)^T``
(selective plasticity). Meta-training learns the NM, the PN's convolutions and the initial
``W, b`` such that online SGD on the last layer learns a class after class and forgets little,
by the scheme of OML (:mod:`lifelong.algorithms.oml`, whose mechanics are reused here):

1. sample a trajectory: one class, its images (an episode's support set, ``ways = 1``; 20
   images in the paper), and a *remember set* of ``remember`` (64) random images of other
   classes (here: of the other episodes of the meta-batch);
2. reset the output rows of the trajectory's class to zero, so that it is learned from scratch;
3. inner loop: SGD on ``W, b`` only, one image at a time in order (rate ``inner_lr``, 0.1 in
   the reference code), the gated features held fixed: ``W_i = W_{i-1} - inner_lr *
   grad_W CE(W_{i-1} h(x_i) + b_{i-1}, y_i)`` (one step of the shared
   :func:`~lifelong.algorithms.inner_loop.inner_loop` per image, ``create_graph=True``);
4. outer loss: cross-entropy of the adapted network on the trajectory's images (its support
   and its queries) and on the remember set; its second-order gradient through the inner loop
   updates the NM (and its gate layer), the PN's convolutions and the initial ``W, b`` (Adam, by
   the :class:`~lifelong.pipeline.train.Trainer`).

Departures from the paper and its reference code (github.com/uvm-neurobotics-lab/ANML): their
inner loop updates the whole PN (only the NM's layers are frozen while meta-training), this one
the last layer only, the part that learns at meta-test time, so the gated features of an image
are computed once per meta-update instead of once per inner step; the trajectory's row is reset
to zero (theirs: Kaiming-normal weights, the bias kept), as the last layer starts at meta-test;
the remember set comes from the meta-batch (theirs: any training images), so a meta-update
averages several trajectories (theirs: one).

Meta-test (the continual-Omniglot protocol, :class:`lifelong.continual.online.OnlineSGD`): the
NM and the PN's convolutions frozen (:meth:`ANML.body` is the gated representation ``h``), a
fresh zero last layer (:meth:`ANML.prediction_network`) learned online by SGD at the inner rate
(:attr:`ANML.online_lr`). :meth:`ANML.adapt` does the same on one episode (the validation
signal of meta-training). Labels are global class ids (``EpisodeBatch.classes``), one output row
per meta-training class.

Example:
    >>> anml = ANML(Conv4(1, 28), Conv4(1, 28), num_classes=864)
    >>> out = anml.meta_loss(EpisodeSampler(train, ways=1, shots=15, queries=5).sample(5))
    >>> out.loss.backward()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lifelong.algorithms.base import MetaLoss, ModelFactory, global_labels
from lifelong.algorithms.embedding import embed_batch
from lifelong.algorithms.oml import OML
from lifelong.data.episodes import EpisodeBatch

if TYPE_CHECKING:
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts


class Neuromodulated(nn.Module):
    """``h(x) = pn(x) * sigmoid(gate(nm(x)))``: the prediction network's features gated
    elementwise by the neuromodulatory network (the module doc's ``h``).

    Args:
        nm: the neuromodulatory network, ``[n, ...] -> [n, D_nm]`` (``embedding_dim``).
        pn: the prediction network without its last layer, ``[n, ...] -> [n, D]``.

    The gate layer ``D_nm -> D`` is initialised as in the reference code: Kaiming-normal
    weights, zero biases.
    """

    def __init__(self, nm: nn.Module, pn: nn.Module) -> None:
        super().__init__()
        dims = [getattr(net, "embedding_dim", None) for net in (nm, pn)]
        for net, dim in zip((nm, pn), dims, strict=True):
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"the network {type(net).__name__} has no embedding_dim")
        self.nm, self.pn = nm, pn
        self.gate = nn.Linear(dims[0], dims[1])
        nn.init.kaiming_normal_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.embedding_dim = dims[1]

    def modulation(self, x: Tensor) -> Tensor:
        """The gate ``[n, D]``, in (0, 1)."""
        return torch.sigmoid(self.gate(self.nm(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.pn(x).flatten(1) * self.modulation(x)


class ANML(OML):
    """A Neuromodulated Meta-Learning algorithm: OML (its inner loop, reset, meta-test and
    continual hooks) on the NM-gated representation, with ANML's trajectories and outer loss.

    Args:
        nm: the neuromodulatory network (the run's backbone without a head).
        pn: the prediction network's layers before its last (the same kind of backbone).
        num_classes: outputs of the last layer: the meta-training classes.
        inner_lr: the SGD rate of the inner loop and of online learning at meta-test (0.1, as
            in the reference code's command line).
        remember: size of the remember set of the outer loss (64 in the paper).
        first_order: drop the second-order terms of the meta-gradient.
        channels_last: feed images in NHWC layout (see :func:`lifelong.algorithms.embedding.embed`).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "inner_lr": 0.1,
        "meta_batch": 5,  # 1-way 15+5-image episodes: the other 4 hold 80 images, for 64
    }
    splittable = False  # a trajectory's remember set is drawn from its whole meta-batch
    solves_regression = False
    own_options = ("channels_last",)

    @classmethod
    def from_config(cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory) -> ANML:
        """The NM and the PN are two copies of the run's backbone without a head, the last layer
        one output per class of the meta-training split."""
        if cfg.inner_steps is not None:
            raise ValueError("ANML takes one SGD step per trajectory image: leave `inner_steps`")
        return cls(
            models(None),
            models(None),
            num_classes=(facts.classes or {}).get(cfg.train_split, 0),
            inner_lr=cfg.inner_lr or cls.defaults["inner_lr"],
            channels_last=cfg.channels_last,
        )

    def __init__(
        self,
        nm: nn.Module,
        pn: nn.Module,
        num_classes: int,
        inner_lr: float = 0.1,
        remember: int = 64,
        first_order: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__(
            Neuromodulated(nm, pn),
            num_classes,
            inner_lr=inner_lr,
            remember=remember,
            first_order=first_order,
            channels_last=channels_last,
        )

    def meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        """The ANML objective on a meta-batch of trajectories, one per episode (module doc)."""
        support_y, query_y = global_labels(batch, self.prediction.head.out_features, "ANML")
        B = len(batch)
        if B < 2 and self.remember:
            raise ValueError(
                "ANML draws its remember set from the other trajectories of the meta-batch: "
                f"use a meta-batch of at least 2 (got {B})"
            )
        support, query = embed_batch(self.representation, batch, self.channels_last)
        images, labels = torch.cat([support, query], 1), torch.cat([support_y, query_y], 1)
        params = dict(self.prediction.named_parameters())
        losses, correct = [], []
        for b in range(B):
            fast = self.inner_loop(
                self.reset_rows(params, batch.classes[b]), support[b], support_y[b]
            )
            others = torch.arange(B, device=images.device) != b
            pool_x, pool_y = images[others].flatten(0, 1), labels[others].flatten()
            pick = torch.randperm(pool_y.numel(), device=pool_y.device)[: self.remember]
            x_out, y_out = (
                torch.cat([images[b], pool_x[pick]]),
                torch.cat([labels[b], pool_y[pick]]),
            )
            logits = functional_call(self.prediction, fast, (x_out,))
            losses.append(F.cross_entropy(logits, y_out))
            correct.append((logits.detach().argmax(-1) == y_out).float())
        return MetaLoss(torch.stack(losses).mean(), torch.cat(correct).mean())
