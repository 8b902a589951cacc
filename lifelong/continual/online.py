"""Online SGD learners: OML's meta-test, naive fine-tuning and experience replay.

One mechanism, three learners of the literature, told apart by what is trained and what is
replayed. A network ``head(body(x))`` is updated by SGD on each incoming mini-batch of
``batch_size`` examples (1: one example at a time), in stream order, each seen once per pass:

* ``train_body=False``: the body is a frozen representation and only the head learns: the
  meta-test procedure of OML (Javed & White 2019, section 3: the RLN fixed, the PLN learned
  online);
* ``train_body=True``: everything learns: naive fine-tuning from a (meta-)learned
  initialisation, the baseline that forgets (McCloskey & Cohen 1989; French 1999);
* ``buffer``: each update also trains on ``replay_batch`` examples drawn from a reservoir
  buffer of past examples, which is then offered the new ones: experience replay (Chaudhry et
  al. 2019, "On Tiny Episodic Memories in Continual Learning", with Vitter's reservoir).

The body runs in eval mode (batch norm uses its stored statistics, as with a single example no
batch statistics exist). Classification trains and predicts over the classes seen so far
(logits of the others are ``-inf``); regression minimises the squared error.

Example:
    >>> learner = OnlineSGD(oml.representation, head, lr=0.03)          # OML meta-test
    >>> learner = OnlineSGD(body, head, lr=1e-3, train_body=True,        # experience replay
    ...                     buffer=ReservoirBuffer(200, seed=0))
    >>> learner.observe(x, y); learner.predict(x_test)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lifelong.continual.base import ContinualLearner
from lifelong.continual.replay import ReservoirBuffer

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


class OnlineSGD(ContinualLearner):
    """Online learning of ``head(body(x))`` by SGD (see the module doc).

    Args:
        body: the representation ``[n, ...] -> [n, D]``.
        head: the prediction network ``[n, D] -> [n, num_classes]`` (or ``[n, 1]``).
        lr: the learning rate.
        num_classes: the head's outputs (classification); ignored for regression.
        train_body: update the body too (fine-tuning) or keep it frozen (OML).
        buffer: a reservoir buffer for experience replay (``None``: no replay).
        replay_batch: buffer examples added to each update.
        batch_size: incoming examples per update.
        optimizer: ``"sgd"`` (plain SGD, as in the OML paper's algorithm) or ``"adam"`` (the
            reference code's meta-test).
        regression: minimise the MSE of ``[n, 1]`` predictions instead of the cross-entropy.
        chunk: examples per forward pass of :meth:`predict` and of the frozen body.
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        lr: float,
        num_classes: int = 1,
        train_body: bool = False,
        buffer: ReservoirBuffer | None = None,
        replay_batch: int = 10,
        batch_size: int = 1,
        optimizer: str = "sgd",
        regression: bool = False,
        chunk: int = 1024,
    ) -> None:
        super().__init__(1 if regression else num_classes, regression)
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr!r}")
        if batch_size < 1 or replay_batch < 1:
            raise ValueError(
                f"batch_size and replay_batch must be positive, got {batch_size}, {replay_batch}"
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        self.body, self.head = body.eval(), head.train()
        self.train_body, self.buffer = train_body, buffer
        self.replay_batch, self.batch_size, self.chunk = replay_batch, batch_size, chunk
        body.requires_grad_(train_body)
        params = list(head.parameters()) + (list(body.parameters()) if train_body else [])
        self.optimizer = OPTIMIZERS[optimizer](params, lr=lr)

    def inputs(self, x: Tensor) -> Tensor:
        """What the trainable part takes: the frozen body's features, or ``x`` itself."""
        if self.train_body:
            return x
        with torch.no_grad():
            return torch.cat([self.body(part) for part in x.split(self.chunk)])

    def forward(self, u: Tensor) -> Tensor:
        out = self.head(self.body(u) if self.train_body else u)
        return out if self.regression else self.mask_unseen(out)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target) if self.regression else F.cross_entropy(output, target)

    def observe(self, x: Tensor, y: Tensor) -> None:
        self.record(y)
        u = self.inputs(x)
        for start in range(0, u.shape[0], self.batch_size):
            new_u, new_y = u[start : start + self.batch_size], y[start : start + self.batch_size]
            batch_u, batch_y = new_u, new_y
            if self.buffer is not None and len(self.buffer):
                old_u, old_y = self.buffer.sample(self.replay_batch)
                batch_u, batch_y = torch.cat([new_u, old_u]), torch.cat([new_y, old_y])
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.forward(batch_u), batch_y).backward()
            self.optimizer.step()
            if self.buffer is not None:
                self.buffer.add(new_u.detach(), new_y)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return torch.cat([self.forward(self.inputs(part)) for part in x.split(self.chunk)])


def zero_linear(in_features: int, out_features: int, device: torch.device) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, device=device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def network_of(algorithm: Algorithm, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Copies of the run's representation and head for :class:`OnlineSGD`: its body, and its
    prediction network (OML's PLN) with a fresh zero output layer of ``num_classes`` rows
    (kept as meta-learned for regression), else a zero linear layer on the embedding; all on
    the run's device."""
    body = copy.deepcopy(algorithm.body())
    device = next(algorithm.parameters()).device
    prediction = algorithm.prediction_network()
    if prediction is not None:
        head = copy.deepcopy(prediction)
        if not algorithm.regression:
            head.head = zero_linear(head.head.in_features, num_classes, device)
        return body, head
    dim = getattr(body, "embedding_dim", None)
    if not isinstance(dim, int):
        raise ValueError(f"the representation of {type(algorithm).__name__} has no embedding_dim")
    if algorithm.regression:
        raise ValueError(
            f"{type(algorithm).__name__} is a regression run without a prediction network; "
            "the SGD learners need an OML run for regression streams"
        )
    return body, zero_linear(dim, num_classes, device)
