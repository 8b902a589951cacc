"""``lifelong demo``: meta-train ProtoNet and MAML for a few minutes, test them, plot them,
and learn a stream of new classes one after another with the ProtoNet embedding.

The first command of the README: it needs no data (the built-in strokes characters and
sinusoids) and fits a laptop (small models, a time budget).

Example:
    $ lifelong demo --minutes 3 --out runs/demo
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.stats import format_mean_ci

DEMO_OUT = Path("runs/demo")
STREAM_CLASSES, STREAM_SEEDS = 50, 3
"""The lifelong part: held-out strokes classes learned one after another (15 images each,
tested on 5 others), over this many seeds."""


class DemoRun(NamedTuple):
    name: str  # the run folder under --out
    method: str
    share: float  # of the training minutes
    options: dict[str, Any]


DEMO_RUNS = (  # small models, so that minutes on 2 CPU cores suffice
    DemoRun(
        "protonet", "ProtoNet, Conv-4 (32 filters)", 0.35,
        dict(algorithm="protonet", dataset="strokes", ways=5, shots=1, queries=5, meta_batch=4,
             hidden=(32,)),
    ),
    DemoRun(
        "maml", "MAML, strided Conv-4 (32 filters)", 0.45,
        dict(algorithm="maml", dataset="strokes", ways=5, shots=1, queries=5, meta_batch=4,
             hidden=(32,), strided=True, inner_lr=0.4, inner_steps=1, eval_inner_steps=3),
    ),
    DemoRun(
        "sinusoid", "MAML, MLP 40-40", 0.2,
        dict(algorithm="maml", dataset="sinusoid", backbone="mlp", shots=10, queries=10,
             meta_batch=25, inner_lr=0.01, inner_steps=1),
    ),
)  # fmt: skip


def demo_command(
    minutes: Annotated[float, typer.Option(help="Training time of the three runs.")] = 3.0,
    out: Annotated[Path, typer.Option(help="Folder of the runs, table and plot.")] = DEMO_OUT,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    episodes: Annotated[int, typer.Option(help="Test episodes per method.")] = 300,
) -> None:
    """Meta-train ProtoNet and MAML for a few minutes and test them: a table and a plot.

    ProtoNet and MAML learn the built-in strokes characters, MAML learns sinusoids; each is
    tested on held-out classes (or new sinusoids) with a 95% confidence interval, next to a
    nearest-mean classifier on raw pixels. Then 50 held-out classes arrive one after another:
    the default class model on the ProtoNet embedding against naive fine-tuning of the same
    network, accuracy on all classes seen so far. The table goes to the terminal and
    OUT/demo.json, the plot to OUT/demo.png; the runs are in OUT/protonet, OUT/maml and
    OUT/sinusoid.
    """
    import shutil

    from torch import nn

    from lifelong.algorithms.protonet import ProtoNet
    from lifelong.pipeline.data import load_data
    from lifelong.pipeline.evaluate import evaluate as evaluate_algorithm
    from lifelong.pipeline.evaluate import evaluate_run
    from lifelong.pipeline.train import train as train_run

    if minutes <= 0 or episodes < 2:
        raise ConfigError(
            f"--minutes must be positive and --episodes at least 2, got {minutes}, {episodes}"
        )
    strokes = load_data(RunConfig(**DEMO_RUNS[0].options))
    pixels = evaluate_algorithm(
        ProtoNet(nn.Flatten()), strokes.sampler("test", seed).fixed(episodes, seed)
    )
    rows = [("nearest class mean of the pixels", "strokes", 0, pixels)]
    for run in DEMO_RUNS:
        run_dir = out / run.name
        if (run_dir / "config.yaml").is_file():
            shutil.rmtree(run_dir)  # the demo's own earlier run
        cfg = RunConfig(
            **run.options, seed=seed, iterations=10**9, val_every=200, val_episodes=40,
            checkpoint_every=10**9, time_limit=run.share * minutes, out=str(run_dir),
        )  # fmt: skip
        typer.echo(f"{run.method} on {cfg.dataset}: {run.share * minutes:.1f} min", err=True)
        trained = train_run(cfg)
        result = evaluate_run(run_dir, episodes=episodes, seed=seed)
        rows.append((run.method, cfg.dataset, trained.step, result))
    table = [("method", "task", "iterations", "test result (mean ± 95% CI)")]
    for method, data, steps, e in rows:
        task = f"{data} {e.ways}-way {e.shots}-shot" if e.ways else f"{data} {e.shots}-shot"
        table.append((method, task, str(steps), str(e).split(" (")[0]))
    typer.echo(f"lifelong: {STREAM_CLASSES} new strokes classes, one after another", err=True)
    streams = lifelong_streams(out / DEMO_RUNS[0].name)
    stream_task = f"strokes, {STREAM_CLASSES} classes one by one"
    for label, summary in streams:
        end = str(STREAM_CLASSES)
        accuracy = summary["accuracy_by_classes"][end], summary["ci95"][end]
        table.append((label, stream_task, "-", format_mean_ci(*accuracy, percent=True)))
    widths = [max(len(row[c]) for row in table) for c in range(4)]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    summary = [{"method": m, "data": d, "iterations": i, **e.to_dict()} for m, d, i, e in rows]
    summary += [{"method": label, "stream": s} for label, s in streams]
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    typer.echo(f"plot: {demo_plot(out, rows, streams, seed)}")


def lifelong_streams(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """The class-incremental stream of held-out classes on the ProtoNet run: the default
    class model against naive fine-tuning (summaries of :class:`StreamResult`)."""
    from lifelong.continual.classifiers.registry import DEFAULT_CLASSIFIER
    from lifelong.continual.protocols import run_protocol

    learners = (
        ("prototypes", f"class model ({DEFAULT_CLASSIFIER}), frozen embedding"),
        ("online-finetune", "naive fine-tuning (SGD, 0.01)"),
    )
    return [
        (label, run_protocol(run_dir, "class-incremental", learner, STREAM_CLASSES,
                             STREAM_SEEDS).summary())
        for learner, label in learners
    ]  # fmt: skip


def demo_plot(
    out: Path,
    rows: list[tuple[str, str, int, Any]],
    streams: list[tuple[str, dict[str, Any]]],
    seed: int,
) -> Path:
    """Test accuracies with their CIs, validation curves, one adapted sinusoid, and the
    accuracy on all classes seen against classes learned."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from lifelong.api import load
    from lifelong.pipeline.data import load_data

    fig, (bars, curves, wave, stream) = plt.subplots(1, 4, figsize=(20, 4.2))
    strokes = [r for r in rows if r[1] == "strokes"]
    bars.bar(
        range(len(strokes)),
        [100 * r[3].mean for r in strokes],
        yerr=[100 * (r[3].ci95 or 0) for r in strokes],
        capsize=4,
        color=["0.6", "tab:blue", "tab:orange"],
    )
    bars.set_xticks(range(len(strokes)), ["pixels", "ProtoNet", "MAML"])
    bars.axhline(100 / strokes[0][3].ways, color="k", ls=":", lw=1, label="chance")
    bars.set(ylabel="test accuracy (%)", title="strokes: held-out classes, 5-way 1-shot")
    bars.legend()
    for run, color in zip(DEMO_RUNS[:2], ("tab:blue", "tab:orange"), strict=True):
        with (out / run.name / "metrics.csv").open() as f:
            log = list(csv.DictReader(f))
        for split, style, label in (
            ("train", "-", "meta-batch queries"),
            ("val", "o", "validation"),
        ):
            points = [
                (int(r["step"]), 100 * float(r["metric"])) for r in log if r["split"] == split
            ]
            steps, accuracy = torch.tensor(points).T
            if split == "train":  # a running mean over 20 iterations
                window = min(20, len(accuracy))
                accuracy = accuracy.unfold(0, window, 1).mean(1)
                steps = steps[window - 1 :]
            curves.plot(steps, accuracy, style, color=color,
                        label=f"{run.method.split(',')[0]}, {label}")  # fmt: skip
    curves.set(xlabel="iteration", ylabel="accuracy (%)", title="meta-training on strokes")
    curves.legend(fontsize=8)
    learner = load(out / "sinusoid")
    tasks = load_data(learner.config).sampler("test", seed).fixed(1, seed)
    task = next(iter(tasks.batches(1)))
    grid = torch.linspace(-5, 5, 200)
    learner.adapt(task.support_x[0], task.support_y[0])
    wave.plot(grid, tasks.curves(grid)[0], color="k", lw=1, label="true function")
    wave.plot(grid, learner.predict(grid)[:, 0], color="tab:orange", label="MAML, adapted")
    wave.scatter(task.support_x[0, :, 0], task.support_y[0, :, 0], marker="^", s=40,
                 color="tab:red", zorder=3, label="support (10 shots)")  # fmt: skip
    wave.set(xlabel="x", ylabel="y", title="sinusoid regression: one new task")
    wave.legend(fontsize=8)
    for (label, summary), color in zip(streams, ("tab:blue", "tab:red"), strict=True):
        seen = [int(n) for n in summary["accuracy_by_classes"]]
        mean = torch.tensor([summary["accuracy_by_classes"][str(n)] for n in seen]) * 100
        ci = torch.tensor([summary["ci95"][str(n)] or 0.0 for n in seen]) * 100
        stream.plot(seen, mean, color=color, label=label)
        stream.fill_between(seen, mean - ci, mean + ci, color=color, alpha=0.2)
    title = f"lifelong: new strokes classes one by one ({STREAM_SEEDS} seeds)"
    stream.set(xlabel="classes learned", ylabel="accuracy on all seen (%)", ylim=(0, 100),
               title=title)  # fmt: skip
    stream.legend(fontsize=8)
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
