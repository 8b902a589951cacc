"""Pairwise distances between embeddings, batched over leading dimensions.

Prototypical Networks (Snell et al. 2017) classify a query by a softmax over its negative
distances to the class prototypes (eq. 2); the paper uses the squared Euclidean distance
(section 2.3: a Bregman divergence, making the model a linear classifier of the embedding)
and compares it with the cosine distance (section 3.1). The squared Euclidean distance is
computed as ``||a||^2 - 2 a.b + ||b||^2`` with one batched matrix product, clamped at zero
against rounding. Distances are computed in at least float32, also under autocast: the
cancellation in ``||a||^2 - 2 a.b + ||b||^2`` would ruin them in bfloat16.

Example:
    >>> a, b = torch.rand(4, 75, 64), torch.rand(4, 5, 64)  # 4 episodes: queries, prototypes
    >>> pairwise_distance(a, b).shape
    torch.Size([4, 75, 5])
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

Distance = Literal["sqeuclidean", "euclidean", "lp", "cosine"]
DISTANCES: tuple[str, ...] = get_args(Distance)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32, or in its own dtype if that is wider (float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def check_distance(distance: str, p: float = 2.0) -> None:
    """Raise a readable ``ValueError`` for an unknown distance name or an invalid ``p``."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    if distance == "lp" and not p > 0:
        raise ValueError(f"the lp distance needs p > 0, got p={p!r}")


def pairwise_distance(
    a: Tensor, b: Tensor, distance: Distance = "sqeuclidean", p: float = 2.0
) -> Tensor:
    """Distances between every row of ``a [..., n, d]`` and every row of ``b [..., m, d]``.

    Args:
        a, b: embeddings; leading dimensions broadcast (e.g. one per episode).
        distance: ``"sqeuclidean"`` ``||a-b||^2``; ``"euclidean"`` ``||a-b||``; ``"lp"``
            ``||a-b||_p``; ``"cosine"`` ``1 - cos(a, b)``.
        p: the exponent of ``"lp"``.

    Returns:
        ``[..., n, m]``.
    """
    check_distance(distance, p)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"embeddings differ in size: {tuple(a.shape)} against {tuple(b.shape)} (last dim)"
        )
    with torch.autocast(a.device.type, enabled=False):
        a, b = full_precision(a), full_precision(b)
        if distance == "sqeuclidean":
            cross = a @ b.transpose(-1, -2)
            squares = a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(-2)
            return (squares - 2 * cross).clamp_min(0)
        if distance == "cosine":
            return 1 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)
        # cdist has a gradient that stays finite where two points coincide.
        return torch.cdist(a, b, p=2.0 if distance == "euclidean" else p)
