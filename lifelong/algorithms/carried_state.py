"""Adam's state carried from task to task by an inner loop (``inner_optimizer_state: carried``).

Reptile's inner loop is Adam with ``beta1 = 0`` (Nichol et al. 2018, "On First-Order
Meta-Learning Algorithms", arXiv:1803.02999v3, appendix A). The paper's code
(github.com/openai/supervised-reptile, ``reptile.py``) resets only the trainable variables
around each task's inner loop (``_model_state`` exports and imports them), so TensorFlow's Adam
slots ``m``, ``v`` and its beta powers (the step count ``t``) go on from task to task, within
and across meta-batches; its ``evaluate`` saves and restores the full state, so that a test
adaptation starts from training's Adam state and leaves it unchanged. A fresh Adam's first
steps move every parameter by about the learning rate (``m_hat / sqrt(v_hat) = sign(g)`` at
``t = 1``); a carried one scales them by the gradients of the tasks before.

:class:`CarriedState` holds that state as buffers of the learner (so checkpoints keep it and a
resumed run goes on exactly): ``moments [2, P]``, ``m`` and ``v`` of the ``P`` adapted
parameter entries, flat in the order of the adapted names, and ``t``. ``beta1`` may be any
value (with 0, ``m`` is just the last gradient).

The tasks of a meta-batch run side by side (the fast path's task groups, the CPU workers, the
processes of a distributed run), each from the carried state: its step ``s`` of ``k`` is
Adam's step ``t + s``. That is the approximation: in the paper's code task ``i`` starts where
task ``i - 1`` left the state. After a meta-batch of ``n`` tasks the state is what the tasks'
gradients ``g_{i,s}`` make of it when they run one after another, in the meta-batch's order:

    v' = b2^(n k) v + sum_{i=1..n} sum_{s=1..k} (1 - b2) b2^((n - i) k + (k - s)) g_{i,s}^2

``m'`` alike with ``b1`` and ``g``, ``t' = t + n k``. A task's own sum over its steps is its end
state less ``b2^k v`` (:meth:`CarriedState.block`); blocks of consecutive tasks combine by
:meth:`CarriedState.fold`, which is associative, so the state does not depend on how the
tasks are grouped or shared out (up to rounding).

Example:
    >>> carried = CarriedState({"w": torch.Size([3])}, Adam(), torch.float32)
    >>> state = carried.start()   # where every task of the meta-batch starts
    >>> trajectory = inner_loop(..., steps=5, update=Adam(), state=state)
    >>> carried.advance(carried.fold([carried.block(state, tasks=1, steps=5)], 5), 5)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lifelong.algorithms.inner_update import Adam, UpdateState

Block = tuple[Tensor, int]
"""The share of consecutive tasks of a meta-batch in the carried state: the sums over their
steps of ``(1 - b) b^(...) g`` (row 0, ``m``) and ``(1 - b) b^(...) g^2`` (row 1, ``v``),
weighted as if the block ended the meta-batch, ``[2, P]``; and how many tasks it holds."""


class CarriedState(nn.Module):
    """Adam's ``m``, ``v`` and ``t`` carried from task to task (module doc).

    Args:
        shapes: the adapted parameters' names and shapes, in order.
        rule: the inner loop's Adam (its ``beta1`` and ``beta2``).
        dtype, device: those of the parameters.
    """

    def __init__(
        self,
        shapes: dict[str, torch.Size],
        rule: Adam,
        dtype: torch.dtype,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.shapes, self.rule = shapes, rule
        self.sizes = [math.prod(shape) for shape in shapes.values()]
        self.moments: Tensor
        self.t: Tensor
        self.register_buffer("moments", torch.zeros(2, sum(self.sizes), dtype=dtype, device=device))
        self.register_buffer("t", torch.zeros((), dtype=torch.int64, device=device))

    def start(self) -> UpdateState:
        """The state each task starts from (views of the buffers; the rule does not write to
        them)."""
        parts = self.moments.split(self.sizes, dim=1)
        moments = {
            name: (part[0].view(shape), part[1].view(shape))
            for (name, shape), part in zip(self.shapes.items(), parts, strict=True)
        }
        return UpdateState(moments, int(self.t))

    def decay(self, steps: int) -> Tensor:
        """``[[b1^steps], [b2^steps]]`` (``0^0 = 1``)."""
        return self.moments.new_tensor([[self.rule.beta1**steps], [self.rule.beta2**steps]])

    def block(self, end: UpdateState, tasks: int, steps: int) -> Block:
        """The share of ``tasks`` tasks (one, or a task group ``[G, ...]`` in the meta-batch's
        order) that took ``steps`` steps from :meth:`start` and ended at ``end``."""
        ends = torch.stack(
            [
                torch.cat(
                    [
                        end.moments[name][row].reshape(-1, size).expand(tasks, size)
                        for name, size in zip(self.shapes, self.sizes, strict=True)
                    ],
                    dim=1,
                )
                for row in (0, 1)
            ]
        )  # [2, G, P]
        own = ends - self.decay(steps).unsqueeze(-1) * self.moments.unsqueeze(1)
        later = [steps * (tasks - 1 - i) for i in range(tasks)]  # steps of the later tasks
        weights = torch.cat([self.decay(n) for n in later], dim=1)  # [2, G]
        return (weights.unsqueeze(-1) * own).sum(1), tasks

    def fold(self, blocks: list[Block], steps: int) -> Block:
        """One block of consecutive blocks, in their order (``steps`` per task)."""
        sums, tasks = blocks[0][0].to(self.moments), blocks[0][1]
        for more, count in blocks[1:]:
            sums = self.decay(steps * count) * sums + more.to(self.moments)
            tasks += count
        return sums, tasks

    @torch.no_grad()
    def advance(self, block: Block, steps: int) -> None:
        """The state after the tasks of ``block`` (a whole meta-batch), ``steps`` each."""
        sums, tasks = block
        self.moments.mul_(self.decay(steps * tasks)).add_(sums.to(self.moments))
        self.t.add_(steps * tasks)
