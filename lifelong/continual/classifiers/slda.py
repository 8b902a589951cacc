"""Streaming linear discriminant analysis (Hayes & Kanan 2020, "Lifelong Machine Learning with
Deep Streaming Linear Discriminant Analysis", CVPR-W, eqs. 1-4).

Each class is a Gaussian with its own mean ``mu_k`` and one covariance ``Sigma`` shared by all
classes. Both come from running sums: ``mu_k = s_k / n_k`` and ``Sigma = S_w / N``, the pooled
within-class scatter ``S_w = G - sum_k s_k s_k^T / n_k`` over the ``N`` examples seen (exact,
whatever the order; the paper's per-example update approximates the same matrix). The
precision is shrunk towards a multiple of the identity, ``Lambda = [(1 - e) Sigma + e
(tr(Sigma) / D) I]^-1`` (the paper shrinks towards ``e I`` with ``e = 1e-4``; scaling by the
mean variance makes ``e`` independent of the features' scale). The score of class ``k`` is the
Gaussian log-likelihood up to a shared constant, ``-(z - mu_k)^T Lambda (z - mu_k) / 2``, whose
argmax is the paper's linear rule ``W z + b``, ``W_k = Lambda mu_k``, ``b_k = -mu_k^T Lambda
mu_k / 2``. With no within-class spread yet (one example per class) it is the nearest mean.

Example:
    >>> model = SLDA(protonet.embed, num_classes=600, shrinkage=0.1)
    >>> model.observe(images, labels)
    >>> model.predict(queries).argmax(-1)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lifelong.continual.classifiers.base import ClassModel, ClassStatistics

SPREAD_TOLERANCE = 1e-9
"""A within-class variance below this share of the features' second moment is rounding (one
example per class, or what is left of a Gram matrix after classes were forgotten), not spread."""


class SLDA(ClassModel):
    """Streaming LDA with a shrunk shared covariance (see the module doc).

    Options:
        shrinkage: ``e`` in ``[0, 1]``, the weight of the scaled identity (0.8: chosen from
            :attr:`grid` on the background validation characters for the 576-d ProtoNet
            embedding of ``configs/continual-omniglot-best.yaml``).
    """

    name = "slda"
    summary = "shared-covariance Gaussians, shrunk (streaming LDA, Hayes & Kanan 2020)"
    options: ClassVar[dict[str, float]] = {"shrinkage": 0.8}
    grid: ClassVar[dict[str, tuple[float, ...]]] = {
        "shrinkage": (0.01, 0.03, 0.1, 0.3, 0.6, 0.8, 0.9)
    }
    uses_gram = True

    def check_settings(self) -> None:
        if not 0 <= self.settings["shrinkage"] <= 1:
            raise ValueError(f"slda shrinkage must lie in [0, 1], got {self.settings['shrinkage']}")

    def fit(self, stats: ClassStatistics) -> tuple[Tensor, Tensor, Tensor]:
        """``Lambda [D, D]``, ``W = mu Lambda [K, D]`` and ``mu^T Lambda mu [K]``."""
        means, dim = stats.means(), stats.dim
        covariance = stats.scatter() / max(stats.total, 1)
        scale = float(covariance.diagonal().mean())
        eye = torch.eye(dim, dtype=torch.float64, device=means.device)
        assert stats.gram is not None
        moment = float(stats.gram.diagonal().mean()) / max(stats.total, 1)
        if scale <= SPREAD_TOLERANCE * moment:  # no within-class spread yet: the nearest mean
            precision = eye
        else:
            e = self.settings["shrinkage"]
            shrunk = (1 - e) * covariance + e * scale * eye
            precision = torch.linalg.inv(shrunk)
            precision = (precision + precision.T) / 2
        weights = means @ precision
        return precision, weights, (weights * means).sum(1)

    def scores(self, z: Tensor, fitted: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        precision, weights, offsets = fitted
        quadratic = ((z @ precision) * z).sum(1, keepdim=True)
        return -0.5 * (quadratic - 2 * z @ weights.T + offsets)
