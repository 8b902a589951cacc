"""Means with their 95% confidence intervals, computed and written as text.

Few-shot results are reported as the mean over many test episodes (continual-learning results:
over seeds) with a 95% confidence interval ``1.96 * std / sqrt(n)``; :func:`format_mean_ci`
writes every such result the same way. This module imports no model code (torch only for the
tensors it is given), so that any layer can use it.

Example:
    >>> format_mean_ci(0.9731, 0.0041, percent=True)
    '97.31% ± 0.41%'
    >>> format_mean_ci(0.35021, None)
    '0.3502'
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

Z95 = 1.96
"""The two-sided 95% quantile of the standard normal distribution."""


def confidence_interval(values: Tensor) -> tuple[float, float | None]:
    """Mean and 95% confidence half-width ``1.96 * s / sqrt(n)`` of per-episode values, with
    ``s`` the sample standard deviation (``n - 1`` in the denominator); ``None`` when
    ``n < 2``."""
    values = values.double().flatten()
    if values.numel() == 0:
        raise ValueError("no episodes to summarise")
    n = values.numel()
    mean = float(values.mean())
    if n < 2:
        return mean, None
    return mean, Z95 * float(values.std(correction=1)) / math.sqrt(n)


def summary(values: Tensor, digits: int = 5) -> dict[str, float | None]:
    """``{"mean": ..., "ci95": ...}`` of :func:`confidence_interval`, rounded to ``digits``
    decimals, for a results file."""
    mean, ci95 = confidence_interval(values)
    return {"mean": round(mean, digits), "ci95": None if ci95 is None else round(ci95, digits)}


def format_mean_ci(
    mean: float,
    ci95: float | None,
    percent: bool = False,
    spec: str = ".4g",
    ci_spec: str | None = None,
) -> str:
    """``mean ± ci95`` as text, without `` ± ...`` when ``ci95`` is ``None``.

    Args:
        mean, ci95: the mean and the half-width of its 95% confidence interval.
        percent: fractions shown as percentages with two decimals (``97.31% ± 0.41%``);
            ``spec`` and ``ci_spec`` are then not used.
        spec: the format spec of the mean (``0.3502``).
        ci_spec: the format spec of the interval; default ``spec``.
    """
    if percent:
        return f"{100 * mean:.2f}%" + ("" if ci95 is None else f" ± {100 * ci95:.2f}%")
    ci_spec = spec if ci_spec is None else ci_spec
    return f"{mean:{spec}}" + ("" if ci95 is None else f" ± {ci95:{ci_spec}}")
