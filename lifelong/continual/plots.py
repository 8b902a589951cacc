"""Plots of stream results (matplotlib, Agg backend, PNG).

One figure: the metric on all classes seen against the number of classes learned, mean and 95%
confidence band over seeds, one line per learner (as in Javed & White 2019, Fig. 4 and
Beaulieu et al. 2020, Fig. 3); then, for each learner, the heatmap of its accuracy matrix
``R[i, j]`` (mean over seeds; rows: after evaluation ``i``, columns: group ``j``).

Example:
    >>> plot_results([proto, oml, finetune], "continual-omniglot.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lifelong.continual.protocols import StreamResult


def plot_results(results: Sequence[StreamResult], path: str | Path) -> Path:
    """Write the curves and the accuracy-matrix heatmaps of ``results`` (same protocol) to
    ``path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("nothing to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = results[0]
    percent = first.metric == "accuracy"
    scale = 100.0 if percent else 1.0
    fig, axes = plt.subplots(
        1, 1 + len(results), figsize=(5.2 * (1 + len(results)), 4.4), squeeze=False
    )
    curve = axes[0, 0]
    for result in results:
        summary = result.summary()
        x = result.boundaries
        mean = torch.tensor([summary[f"{result.metric}_by_classes"][str(n)] for n in x])
        ci = torch.tensor([summary["ci95"][str(n)] or 0.0 for n in x])
        curve.plot(x, scale * mean, marker="o", markersize=3, label=result.learner)
        curve.fill_between(x, scale * (mean - ci), scale * (mean + ci), alpha=0.2)
    unit = "functions" if first.metric == "mse" else "classes"
    curve.set(
        xlabel=f"{unit} learned",
        ylabel=f"{first.metric}{' (%)' if percent else ''} on all seen {unit}",
        title=f"{first.protocol}, {len(first.seeds)} seeds (mean, 95% CI)",
    )
    if percent:
        curve.set_ylim(0, 100)
    curve.grid(alpha=0.3)
    curve.legend(fontsize=8)
    for ax, result in zip(axes[0, 1:], results, strict=True):
        matrix = torch.stack(result.matrices()).mean(0)
        image = ax.imshow(
            scale * matrix.numpy(),
            cmap="viridis" if percent else "magma_r",
            vmin=0,
            vmax=100 if percent else None,
        )
        labels = [str(n) for n in result.boundaries]
        step = max(1, len(labels) // 10)
        ticks = list(range(0, len(labels), step))
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=45)
        ax.set_yticks(ticks, [labels[t] for t in ticks])
        ax.set(
            xlabel=f"group j (up to ... {unit})",
            ylabel=f"after i ({unit} learned)",
            title=f"{result.learner}: R[i, j]",
        )
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
