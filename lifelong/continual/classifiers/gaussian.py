"""Gaussian class models with per-class variances under a prior (Banayeeanzade et al. 2021,
"Generative vs. Discriminative: Rethinking the Meta-Continual Learning", NeurIPS: GeMCL).

Each class ``k`` is a Gaussian with its own mean and its own diagonal variance. The precision
of each dimension has a Gamma prior ``Gamma(alpha, beta)``; after ``n_k`` examples with sum of
squared deviations ``m_k`` (per dimension) its posterior is ``Gamma(alpha_k, beta_k)``,
``alpha_k = alpha + n_k / 2``, ``beta_k = beta + m_k / 2``. The mean is the class mean. Two
forms (GeMCL sections 3.2-3.3):

* **MAP** (``gaussian``): the variance ``beta_k / (alpha_k - 1)`` (the posterior mean of the
  variance, as GeMCL's code) in a Gaussian log-likelihood;
* **predictive** (``gaussian-predictive``): the precision integrated out, a Student-t per
  dimension, ``sum_d [alpha_k log beta_k - lgamma(alpha_k) + lgamma(alpha_k + 1/2) - (alpha_k +
  1/2) log(beta_k + (z_d - mu_kd)^2 / 2)]``.

GeMCL meta-learns ``alpha`` and ``beta``; here the prior's mean variance is the pooled
within-class variance of the classes seen (an empirical-Bayes choice that makes the model
independent of the features' scale, exact from the running sums), ``beta = (alpha - 1) v``,
and the strength ``alpha`` is the one hyper-parameter (chosen on validation classes): large
``alpha`` shares one diagonal covariance between classes, small ``alpha`` trusts each class's
own spread.

Example:
    >>> model = Gaussian(protonet.embed, num_classes=600, strength=20)
    >>> model.observe(images, labels)
    >>> model.predict(queries).argmax(-1)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lifelong.continual.classifiers.base import ClassModel, ClassStatistics

ELEMENTS = 1 << 24
"""Inputs x classes x dimensions computed at a time by the predictive form."""


def pooled_variance(stats: ClassStatistics) -> Tensor:
    """Per dimension, the pooled within-class variance ``sum_k m_k / (N - K)`` of the classes
    seen; without within-class spread yet (one example per class), the variance of all
    features; ones for a single example."""
    seen = stats.seen
    n, k = stats.total, int(seen.sum())
    if n > k:
        variance = stats.deviations()[seen].sum(0) / (n - k)
    elif n > 1:
        mean = stats.sums[seen].sum(0) / n
        variance = (stats.squares[seen].sum(0) / n - mean.square()).clamp_min(0) * n / (n - 1)
    else:
        return torch.ones(stats.dim, dtype=torch.float64, device=stats.sums.device)
    floor = float(variance.mean()) * 1e-6 + 1e-12  # dimensions without spread
    return variance.clamp_min(floor)


class Gaussian(ClassModel):
    """GeMCL's Gaussian class models, MAP form (see the module doc).

    Options:
        strength: ``alpha > 1``, the prior's weight (in pseudo-examples, twice ``alpha``).
    """

    name = "gaussian"
    summary = "per-class diagonal Gaussians under a Gamma prior, MAP (GeMCL, 2021)"
    options: ClassVar[dict[str, float]] = {"strength": 10.0}
    grid: ClassVar[dict[str, tuple[float, ...]]] = {"strength": (2, 5, 10, 30, 100, 1000)}

    def check_settings(self) -> None:
        if not self.settings["strength"] > 1:
            raise ValueError(f"{self.name} strength must exceed 1, got {self.settings['strength']}")

    def posterior(self, stats: ClassStatistics) -> tuple[Tensor, Tensor, Tensor]:
        """Means ``[K, D]`` and the posterior ``alpha_k [K, 1]``, ``beta_k [K, D]``."""
        alpha = self.settings["strength"]
        beta = (alpha - 1) * pooled_variance(stats)
        alpha_k = alpha + stats.counts.double().unsqueeze(1) / 2
        beta_k = beta + stats.deviations() / 2
        return stats.means(), alpha_k, beta_k

    def fit(self, stats: ClassStatistics) -> tuple[Tensor, Tensor, Tensor]:
        """The inverse variances ``[K, D]``, ``mean / variance`` and the per-class constant
        ``sum mean^2 / variance + log variance`` ``[K]`` of the Gaussian log-likelihood."""
        means, alpha_k, beta_k = self.posterior(stats)
        variance = beta_k / (alpha_k - 1)
        inverse = variance.reciprocal()
        constant = (means.square() * inverse).sum(1) + variance.log().sum(1)
        return inverse, means * inverse, constant

    def scores(self, z: Tensor, fitted: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        inverse, scaled_means, constant = fitted
        squared = torch.addmm(constant, z * z, inverse.T).sub_(2 * z @ scaled_means.T)
        return squared.mul_(-0.5)


class GaussianPredictive(Gaussian):
    """GeMCL's Gaussian class models, predictive (Student-t) form (see the module doc)."""

    name = "gaussian-predictive"
    summary = "per-class diagonal Gaussians under a Gamma prior, predictive (GeMCL, 2021)"

    def fit(self, stats: ClassStatistics) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Means, ``alpha_k + 1/2``, ``beta_k`` and the per-class constant of the Student-t."""
        means, alpha_k, beta_k = self.posterior(stats)
        half = alpha_k + 0.5
        constant = (alpha_k * beta_k.log() - torch.lgamma(alpha_k) + torch.lgamma(half)).sum(1)
        return means, half, beta_k, constant

    def scores(self, z: Tensor, fitted: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        means, half, beta_k, constant = fitted
        rows = max(1, ELEMENTS // max(1, means.numel()))
        parts = [
            constant - (half * (beta_k + (part.unsqueeze(1) - means).square() / 2).log()).sum(-1)
            for part in z.split(rows)
        ]
        return torch.cat(parts)
