"""OML: Online-aware Meta-Learning (Javed & White 2019, "Meta-Learning Representations for
Continual Learning", NeurIPS).

The network is split in two: a representation learning network (RLN, ``representation``) and
a prediction learning network (PLN, ``prediction``). At meta-test time the RLN is frozen and
the PLN learns a stream *online*, by SGD one example at a time; meta-training makes the RLN
such that this online learning is fast and forgets little (the paper's Algorithm 1):

1. sample a trajectory: a few classes of the meta-training set, their examples one class after
   another (an episode's support set, class-major), plus a *remember set* of random examples of
   other classes (here: queries of the other trajectories of the meta-batch);
2. reset the PLN's output rows of the trajectory's classes (to zero), so that every trajectory
   learns its classes from scratch, as at meta-test time;
3. inner loop: sequential SGD on the PLN over the trajectory, ``online_batch`` examples a step,
   with the RLN's features held fixed (the PLN's parameters as a dict of tensors, one step of
   the shared :func:`~lifelong.algorithms.inner_loop.inner_loop` per mini-batch; second
   order: ``create_graph=True``);
4. outer loss: cross-entropy of the adapted PLN on fresh examples of the trajectory's classes
   (the episode's queries) and on the remember set; its gradient updates the RLN and the
   PLN's initialisation (Adam, by the :class:`~lifelong.pipeline.train.Trainer`).

Class labels are global (the meta-training split's class ids, ``EpisodeBatch.classes``), so the
PLN's output layer has one row per meta-training class, as in the reference implementation
(github.com/khurramjaved96/mrcl). On sinusoids (the paper's incremental sine waves) a
trajectory is the meta-batch itself: its ``B`` functions are learned one after another, each
input being ``[x, one-hot(function)]``, and the outer loss is the MSE on fresh points of all of
them.

:meth:`OML.adapt` is the meta-test procedure on one episode (a zero-initialised ``ways``-way
output layer learned online over the support set, class after class): the validation signal
of meta-training. Continual streams use :class:`lifelong.continual.online.OnlineSGD`.

Example:
    >>> oml = OML(Conv4(1, 28, out_features=None), num_classes=864 * 4)
    >>> out = oml.meta_loss(EpisodeSampler(train, ways=3, shots=5, queries=5).sample(4))
    >>> out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lifelong.algorithms.base import Algorithm, MetaLoss, ModelFactory, Predictor, global_labels
from lifelong.algorithms.embedding import embed, embed_batch, eval_mode
from lifelong.algorithms.functional import ModuleForward, Params
from lifelong.algorithms.inner_loop import inner_loop
from lifelong.data.episodes import EpisodeBatch
from lifelong.models.mlp import MLP

if TYPE_CHECKING:
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts

SINE_HIDDEN = (300,) * 7
"""Javed & White 2019, section 4.1: eight layers of 300 units, six in the RLN, two in the
PLN (the last hidden layer and the output)."""


class OML(Algorithm):
    """Online-aware Meta-Learning.

    Args:
        representation: the RLN, e.g. ``Conv4(1, 28, out_features=None)``; it needs an
            ``embedding_dim`` attribute.
        num_classes: outputs of the PLN: the meta-training classes; 1 for regression.
        prediction_hidden: hidden widths of the PLN before its output layer (``()``: the PLN
            is one linear layer, as in the reference Omniglot code).
        inner_lr: the SGD learning rate of the inner loop (0.03 in the reference code).
        online_batch: examples per inner SGD step (1: one example at a time, as in the paper).
        remember: size of the remember set of the outer loss (15 in the reference code).
        functions: regression only: the functions of a trajectory (the one-hot width of the
            input, which is then ``1 + functions`` values).
        first_order: drop the second-order terms of the meta-gradient.
        channels_last: feed images in NHWC layout (see :func:`lifelong.algorithms.embedding.embed`).
    """

    defaults: ClassVar[dict[str, Any]] = {"inner_lr": 0.03}  # the reference code's online rate
    splittable = False  # a trajectory's remember set is drawn from its whole meta-batch
    solves_regression = True
    min_ways = 1  # a trajectory of one class, against the other classes
    learns_class_ids = True
    own_options = ("channels_last",)

    @classmethod
    def from_config(cls, cfg: RunConfig, facts: DataFacts, models: ModelFactory) -> OML:
        """On images the RLN is the run's backbone without a head and the PLN one linear layer
        over the meta-training classes; on sinusoids an MLP (default :data:`SINE_HIDDEN`,
        :func:`kaiming_init`) whose last hidden layer and output form the PLN, with
        trajectories of ``meta_batch`` functions and ``shots // inner_steps`` points per
        inner step."""
        inner_lr = cfg.inner_lr if cfg.inner_lr is not None else cls.defaults["inner_lr"]
        if facts.regression:
            hidden = cfg.hidden or SINE_HIDDEN
            if len(hidden) < 2:
                raise ValueError(
                    f"OML on sinusoids needs at least two `hidden` layers (RLN and PLN), "
                    f"got {hidden}"
                )
            steps = cfg.inner_steps or cfg.shots
            if cfg.shots % steps:
                raise ValueError(
                    f"OML splits each function's {cfg.shots} `shots` into `inner_steps` {steps} "
                    "equal online batches: choose a divisor"
                )
            return kaiming_init(
                cls(
                    MLP(1 + cfg.meta_batch, hidden[:-1], None),
                    num_classes=1,
                    prediction_hidden=hidden[-1:],
                    inner_lr=inner_lr,
                    online_batch=cfg.shots // steps,
                    functions=cfg.meta_batch,
                )
            )
        if cfg.inner_steps is not None:
            raise ValueError(
                "OML takes one SGD step per trajectory image; `inner_steps` applies to sinusoids"
            )
        return cls(
            models(None),
            num_classes=(facts.classes or {}).get(cfg.train_split, 0),
            inner_lr=inner_lr,
            channels_last=cfg.channels_last,
        )

    def __init__(
        self,
        representation: nn.Module,
        num_classes: int,
        prediction_hidden: Sequence[int] = (),
        inner_lr: float = 0.03,
        online_batch: int = 1,
        remember: int = 15,
        functions: int | None = None,
        first_order: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        dim = getattr(representation, "embedding_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(
                f"the representation {type(representation).__name__} has no embedding_dim"
            )
        if num_classes < 1 or online_batch < 1 or remember < 0 or not inner_lr > 0:
            raise ValueError(
                f"OML needs num_classes >= 1, online_batch >= 1, remember >= 0, inner_lr > 0; "
                f"got {num_classes}, {online_batch}, {remember}, {inner_lr}"
            )
        self.regression = functions is not None
        self.representation = representation
        self.prediction = MLP(dim, tuple(prediction_hidden), num_classes)
        if not self.regression:
            nn.init.zeros_(self.prediction.head.weight)  # new classes start at logit 0
            nn.init.zeros_(self.prediction.head.bias)
        self.inner_lr, self.online_batch, self.remember = inner_lr, online_batch, remember
        self.functions, self.first_order = functions, first_order
        self.channels_last = channels_last

    # ------------------------------------------------------------------ pieces
    def body(self) -> nn.Module:
        return self.representation

    def embedding(self) -> Callable[[Tensor], Tensor]:
        return self.embed

    def prediction_network(self) -> nn.Module:
        return self.prediction

    @property
    def online_lr(self) -> float:  # type: ignore[override]
        return self.inner_lr

    def embed(self, x: Tensor) -> Tensor:
        """The RLN's features ``[n, D]`` (in the current mode)."""
        return embed(self.representation, x, self.channels_last)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target) if self.regression else F.cross_entropy(output, target)

    def inner_loop(self, params: Params, features: Tensor, targets: Tensor) -> Params:
        """Sequential SGD on the PLN: one step of :func:`~lifelong.algorithms.inner_loop.
        inner_loop` per ``online_batch`` examples, in order."""
        create_graph = self.training and not self.first_order and torch.is_grad_enabled()
        forward = ModuleForward(self.prediction)
        names = list(params)
        with torch.enable_grad():  # the inner loop needs gradients even under no_grad
            for start in range(0, features.shape[0], self.online_batch):
                stop = start + self.online_batch
                params = inner_loop(
                    forward,
                    params,
                    names,
                    features[start:stop],
                    targets[start:stop],
                    self.loss,
                    steps=1,
                    lr=self.inner_rate,
                    create_graph=create_graph,
                )[-1]
        return params

    def inner_rate(self, name: str, step: int) -> float:
        return self.inner_lr

    def reset_rows(self, params: Params, classes: Tensor) -> Params:
        """The PLN's parameters with the output rows of ``classes`` set to zero (step 2)."""
        keep = torch.ones(self.prediction.head.out_features, device=classes.device)
        keep[classes] = 0.0
        out = dict(params)
        out["head.weight"] = params["head.weight"] * keep.unsqueeze(1)
        out["head.bias"] = params["head.bias"] * keep
        return out

    def sine_inputs(self, x: Tensor, function: Tensor | int) -> Tensor:
        """``[..., n, 1 + functions]``: points ``x [..., n, 1]`` with the one-hot ``function``."""
        assert self.functions is not None
        onehot = F.one_hot(torch.as_tensor(function, device=x.device), self.functions)
        return torch.cat([x, onehot.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)

    # ------------------------------------------------------------------ meta-training
    def meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        """The OML objective on a meta-batch of trajectories (see the module doc)."""
        if self.regression:
            return self._sine_meta_loss(batch)
        support_y, query_y = global_labels(batch, self.prediction.head.out_features, "the PLN")
        if len(batch) < 2 and self.remember:
            raise ValueError(
                "OML draws its remember set from the other trajectories of the meta-batch: "
                f"use a meta-batch of at least 2 (got {len(batch)})"
            )
        support, query = embed_batch(self.representation, batch, self.channels_last)
        params = dict(self.prediction.named_parameters())
        B = len(batch)
        losses, correct = [], []
        for b in range(B):
            fast = self.inner_loop(
                self.reset_rows(params, batch.classes[b]), support[b], support_y[b]
            )
            x_out, y_out = query[b], query_y[b]
            if self.remember:
                others = torch.arange(B, device=query.device) != b
                pool_x, pool_y = query[others].flatten(0, 1), query_y[others].flatten()
                pick = torch.randperm(pool_y.numel(), device=pool_y.device)[: self.remember]
                x_out, y_out = torch.cat([x_out, pool_x[pick]]), torch.cat([y_out, pool_y[pick]])
            logits = functional_call(self.prediction, fast, (x_out,))
            losses.append(F.cross_entropy(logits, y_out))
            correct.append((logits.detach().argmax(-1) == y_out).float())
        return MetaLoss(torch.stack(losses).mean(), torch.cat(correct).mean())

    def _sine_meta_loss(self, batch: EpisodeBatch) -> MetaLoss:
        B = len(batch)
        if self.functions != B:
            raise ValueError(
                f"OML on sinusoids learns trajectories of {self.functions} functions (its input "
                f"has a one-hot of that width), but the meta-batch has {B}: use a meta-batch "
                f"of {self.functions}"
            )
        ids = torch.arange(B, device=batch.support_x.device).unsqueeze(1)
        support_x = self.sine_inputs(batch.support_x, ids.expand(B, batch.support_x.shape[1]))
        query_x = self.sine_inputs(batch.query_x, ids.expand(B, batch.query_x.shape[1]))
        n = support_x.shape[0] * support_x.shape[1]
        features = self.representation(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]))
        fast = self.inner_loop(
            dict(self.prediction.named_parameters()), features[:n], batch.support_y.flatten(0, 1)
        )
        output = functional_call(self.prediction, fast, (features[n:],))
        loss = F.mse_loss(output, batch.query_y.flatten(0, 1))
        return MetaLoss(loss, loss.detach())

    # ------------------------------------------------------------------ meta-testing
    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int) -> Predictor:
        """Meta-test on one task: the RLN frozen, the PLN learned online over the support set in
        its order (a fresh zero ``ways``-way output layer for classification; function slot 0
        for regression)."""
        with eval_mode(self), torch.no_grad():
            x = self.sine_inputs(support_x, 0) if self.regression else support_x
            features = self.embed(x)
        params = {n: p.detach().requires_grad_() for n, p in self.prediction.named_parameters()}
        if not self.regression:
            params["head.weight"] = features.new_zeros(ways, features.shape[1]).requires_grad_()
            params["head.bias"] = features.new_zeros(ways).requires_grad_()
        with eval_mode(self):
            fast = {n: p.detach() for n, p in self.inner_loop(params, features, support_y).items()}

        def predict(x: Tensor) -> Tensor:
            with eval_mode(self):
                x = self.sine_inputs(x, 0) if self.regression else x
                return functional_call(self.prediction, fast, (self.embed(x),))

        return predict


def kaiming_init(oml: OML) -> OML:
    """Kaiming-normal weights (fan-in, ReLU gain) and zero biases in every linear layer, as the
    reference implementation initialises its networks. A deep ReLU MLP without normalisation
    needs it: with PyTorch's default initialisation the features of the sine network's six
    RLN layers shrink to a near-constant vector (norm ~0.4), the inner loop cannot fit a
    function and meta-training makes no progress (measured: no decrease in 2000 updates)."""
    for module in oml.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return oml
