"""Plots of stream results (matplotlib, Agg backend, PNG).

One figure: the metric on all classes seen against the number of classes learned, mean and 95%
confidence band over seeds, one line per learner (as in Javed & White 2019, Fig. 4 and
Beaulieu et al. 2020, Fig. 3); then, for each learner, the heatmap of its accuracy matrix
``R[i, j]`` (mean over seeds; rows: after evaluation ``i``, columns: group ``j``).

Plots are made from summaries (:meth:`~lifelong.continual.protocols.StreamResult.summary`,
plain JSON values), so results saved by earlier runs can be drawn next to new ones.

Example:
    >>> plot_results([r.summary() for r in (proto, oml, finetune)], "continual-omniglot.png")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def plot_results(
    summaries: Sequence[dict[str, Any]],
    path: str | Path,
    references: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Write the curves and the accuracy-matrix heatmaps of stream results (their summaries,
    one protocol) to ``path`` (PNG); returns the path. ``references``: published results to
    mark on the curve panel, ``{label: (classes, metric)}`` (accuracy as a fraction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summaries:
        raise ValueError("nothing to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = summaries[0]
    metric = first["metric"]
    percent = metric == "accuracy"
    scale = 100.0 if percent else 1.0
    count = len(summaries)
    fig, axes = plt.subplots(1, 1 + count, figsize=(5.2 * (1 + count), 4.4), squeeze=False)
    curve = axes[0, 0]
    for summary in summaries:
        by_classes = summary[f"{metric}_by_classes"]
        x = [int(n) for n in by_classes]
        mean = torch.tensor([by_classes[str(n)] for n in x], dtype=torch.float64)
        ci = torch.tensor([summary["ci95"][str(n)] or 0.0 for n in x], dtype=torch.float64)
        label = f"{summary['learner']} ({summary['seeds']} seeds)"
        curve.plot(x, scale * mean, marker="o", markersize=3, label=label)
        curve.fill_between(x, scale * (mean - ci), scale * (mean + ci), alpha=0.2)
    for label, (x_ref, y_ref) in (references or {}).items():
        curve.plot([x_ref], [scale * y_ref], marker="*", markersize=10, linestyle="", label=label)
    unit = "functions" if metric == "mse" else "classes"
    curve.set(
        xlabel=f"{unit} learned",
        ylabel=f"{metric}{' (%)' if percent else ''} on all seen {unit}",
        title=f"{first['protocol']} (mean, 95% CI over seeds)",
    )
    curve.set_ylim(0, 100 if percent else None)
    curve.grid(alpha=0.3)
    curve.legend(fontsize=8)
    matrices = [
        scale
        * torch.tensor(
            [[math.nan if v is None else v for v in row] for row in summary["accuracy_matrix"]]
        )
        for summary in summaries
    ]
    top = 100.0 if percent else max(float(m.nan_to_num(0).max()) for m in matrices)
    for ax, summary, matrix in zip(axes[0, 1:], summaries, matrices, strict=True):
        image = ax.imshow(
            matrix.numpy(), cmap="viridis" if percent else "magma_r", vmin=0, vmax=top
        )  # one colour scale for all learners
        labels = list(summary[f"{metric}_by_classes"])
        step = max(1, len(labels) // 10)
        ticks = list(range(0, len(labels), step))
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=45)
        ax.set_yticks(ticks, [labels[t] for t in ticks])
        ax.set(
            xlabel=f"group j (ends at that many {unit})",
            ylabel=f"after i ({unit} learned)",
            title=f"{summary['learner']}: R[i, j]",
        )
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
