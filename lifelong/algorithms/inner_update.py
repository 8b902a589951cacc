"""Update rules of the inner loop: the direction each inner step moves a parameter in.

An inner step is ``theta_{k+1} = theta_k - alpha_k * d_k`` with ``d_k`` from the step's gradient
``g_k`` and the rule's state:

- :class:`SGD`: ``d_k = g_k`` (Finn et al. 2017, eq. 1).
- :class:`Adam` (Kingma & Ba 2015, Algorithm 1, as ``torch.optim.Adam``):
  ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``t = t + 1``,
  ``d = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``. Reptile's inner loop (Nichol et al.
  2018, appendix A) is Adam with ``b1 = 0``. Its state (:class:`UpdateState`: ``m``, ``v``
  and ``t``) starts at zero in every inner loop (``inner_optimizer_state`` fresh), or where
  the earlier tasks left it (carried, as in the paper's code:
  :mod:`~lifelong.algorithms.carried_state`). Adam's square root has no usable derivative
  where a gradient is zero, so it is for first-order inner loops only.

Example:
    >>> rule = inner_update("adam", beta1=0.0)
    >>> state = UpdateState()
    >>> directions = rule.directions({"w": grad}, state)   # state now holds m, v and t = 1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # torch-free: the config reads INNER_OPTIMIZERS
    from torch import Tensor

INNER_OPTIMIZERS = ("sgd", "adam")
INNER_OPTIMIZER_STATES = ("fresh", "carried")
"""Where an inner loop's Adam state starts: at zero, or where the earlier tasks left it."""


@dataclass
class UpdateState:
    """An update rule's memory: per parameter (Adam: the moments ``(m, v)``, tensors shaped
    like it or, for a task group, ``[G, ...]``) and the steps taken, ``t``."""

    moments: dict[str, Any] = field(default_factory=dict)
    steps: int = 0


class InnerUpdate(Protocol):
    """``directions(grads, state)``: the direction ``d_k`` of each parameter at the next inner
    step from its gradient; ``state`` is the rule's memory, updated in place."""

    second_order: bool
    """Whether the directions may be differentiated (``create_graph``)."""

    def directions(self, grads: dict[str, Tensor], state: UpdateState) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class SGD:
    """Plain gradient steps: the direction is the gradient."""

    second_order = True

    def directions(self, grads: dict[str, Tensor], state: UpdateState) -> dict[str, Tensor]:
        return grads


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction (module doc); first order only."""

    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8
    second_order = False

    def directions(self, grads: dict[str, Tensor], state: UpdateState) -> dict[str, Tensor]:
        state.steps += 1
        t = state.steps
        out = {}
        for name, g in grads.items():
            m, v = state.moments.get(name, (0.0, 0.0))
            m = self.beta1 * m + (1 - self.beta1) * g
            v = self.beta2 * v + (1 - self.beta2) * g * g
            state.moments[name] = (m, v)
            v_hat = (v / (1 - self.beta2**t)).sqrt()
            out[name] = (m / (1 - self.beta1**t)) / (v_hat + self.eps)
        return out


def inner_update(name: str, beta1: float = 0.0) -> InnerUpdate:
    """The rule called ``name`` (:data:`INNER_OPTIMIZERS`); ``beta1`` for Adam."""
    if name == "sgd":
        return SGD()
    if name == "adam":
        return Adam(beta1=beta1)
    raise ValueError(f"inner_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, got {name!r}")
