"""The ``lifelong`` command line: train, evaluate, predict, datasets, download, demo, stream,
reproduce, and the class store's learn, recognize, classes, forget, export, import, serve.

Every command turns bad input (an unknown option value, settings that do not fit together or
do not fit the data, a missing run folder, an unreadable image...) into one line on stderr and
exit status 1, without a traceback (set ``LIFELONG_DEBUG=1`` to see it); usage errors exit
with 2.

Example:
    $ lifelong train --algorithm protonet --dataset strokes --ways 5 --shots 1 --out runs/p
    $ lifelong evaluate runs/p --episodes 1000 --json
    $ lifelong predict runs/p --support my_support/ --query q1.png q2.png
    $ lifelong stream runs/p --protocol task-sequence --json    # lifelong learning
    $ lifelong reproduce maml-omniglot-5w1s --data-root DIR      # one paper row, end to end
    $ lifelong learn runs/p --store shop.db --class mug m1.png m2.png
    $ lifelong recognize --store shop.db photo.png --json
    $ lifelong serve --store shop.db --port 8000                 # HTTP + web page
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeVar

import typer
import yaml

from lifelong.config import RunConfig
from lifelong.continual.cli import stream_command
from lifelong.distributed import World
from lifelong.reproduce import reproduce_command

app = typer.Typer(
    name="lifelong",
    help="Meta-learning (MAML family, Prototypical Networks) on PyTorch.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
DEMO_OUT = Path("runs/demo")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (one line) on stderr; the caller raises the returned Exit."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input becomes one line on stderr and exit status 1 (no traceback)."""
    from lifelong.train import TrainingDiverged

    try:
        yield
    except (ValueError, OSError, TrainingDiverged) as err:
        if os.environ.get("LIFELONG_DEBUG"):
            raise
        if isinstance(err, OSError) and err.strerror and err.filename:
            raise fail(f"{err.strerror}: {err.filename}") from None
        raise fail(str(err) or type(err).__name__) from None
    except KeyboardInterrupt:
        raise fail("interrupted", code=130) from None


def clean_errors(command: F) -> F:
    """Run a command under :func:`user_errors`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------- train
@app.command()
@clean_errors
def train(
    algorithm: Annotated[
        str | None,
        typer.Option(
            "--algorithm",
            "-a",
            help="maml, fomaml, anil, metasgd, reptile, protonet, finetune, oml",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", "-d", help="strokes, omniglot, miniimagenet, cifar-fs, fc100, ..."
        ),
    ] = None,
    data_root: Annotated[
        str | None, typer.Option(help="Dataset folder (default: the cache folder).")
    ] = None,
    class_split: Annotated[
        str | None, typer.Option(help="Omniglot class split: vinyals or lake.")
    ] = None,
    rotations: Annotated[
        bool | None, typer.Option("--rotations/--no-rotations", help="Rotation classes.")
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Image height = width in pixels.")] = None,
    dataset_option: Annotated[
        list[str] | None,
        typer.Option(help="Loader option KEY=VALUE, repeatable (strokes: classes=200)."),
    ] = None,
    train_split: Annotated[
        str | None,
        typer.Option(help="Meta-train on train, or trainval (no validation then)."),
    ] = None,
    ways: Annotated[
        int | None, typer.Option("--ways", "-n", help="Classes per training episode.")
    ] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", "-k", help="Support examples per class.")
    ] = None,
    queries: Annotated[
        int | None, typer.Option("--queries", "-q", help="Query examples per class.")
    ] = None,
    test_ways: Annotated[int | None, typer.Option(help="Ways of validation/test episodes.")] = None,
    test_shots: Annotated[
        int | None, typer.Option(help="Shots of validation/test episodes.")
    ] = None,
    test_queries: Annotated[
        int | None, typer.Option(help="Queries of validation/test episodes.")
    ] = None,
    meta_batch: Annotated[int | None, typer.Option(help="Episodes per meta-update.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Meta-updates.")] = None,
    meta_lr: Annotated[
        float | None, typer.Option(help="Adam learning rate of the meta-update.")
    ] = None,
    lr_schedule: Annotated[str | None, typer.Option(help="none, cosine or step.")] = None,
    lr_step: Annotated[
        int | None, typer.Option(help="step schedule: iterations between decays.")
    ] = None,
    lr_gamma: Annotated[float | None, typer.Option(help="step schedule: decay factor.")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Clip the meta-gradient norm.")] = None,
    inner_lr: Annotated[
        float | None, typer.Option(help="Inner-loop (or FineTune head) learning rate.")
    ] = None,
    inner_steps: Annotated[
        int | None, typer.Option(help="Inner-loop steps while meta-training.")
    ] = None,
    eval_inner_steps: Annotated[
        int | None, typer.Option(help="Inner-loop steps at test time.")
    ] = None,
    per_step_lr: Annotated[
        bool | None,
        typer.Option("--per-step-lr/--no-per-step-lr", help="MAML++: learned rate per step."),
    ] = None,
    multi_step_loss: Annotated[
        bool | None,
        typer.Option(
            "--multi-step-loss/--no-multi-step-loss", help="MAML++: query loss after each step."
        ),
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="conv4, resnet12 or mlp.")] = None,
    hidden: Annotated[
        str | None, typer.Option(help="conv4: filters (64); mlp: widths, e.g. 40,40.")
    ] = None,
    strided: Annotated[
        bool | None, typer.Option("--strided/--no-strided", help="MAML's strided Conv-4.")
    ] = None,
    distance: Annotated[
        str | None, typer.Option(help="ProtoNet: sqeuclidean, euclidean, lp, cosine.")
    ] = None,
    distance_p: Annotated[
        float | None, typer.Option(help="ProtoNet: p of the lp distance.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="ProtoNet: logits are -distance / temperature.")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="ProtoNet/finetune encoder dtype: float32, bfloat16, float16."),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last", help="ProtoNet/finetune encoder layout."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:INDEX.")] = None,
    deterministic: Annotated[
        bool | None,
        typer.Option("--deterministic/--nondeterministic", help="Deterministic GPU kernels."),
    ] = None,
    val_every: Annotated[int | None, typer.Option(help="Validate every N iterations.")] = None,
    val_episodes: Annotated[int | None, typer.Option(help="Fixed validation episodes.")] = None,
    test_episodes: Annotated[
        int | None, typer.Option(help="Default episodes of `lifelong evaluate`.")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Checkpoint every N iterations.")
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(help="Stop after this many minutes (checkpoint and validation first)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML file of options.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Meta-train a learner into --out RUN_DIR.

    Settings: the defaults, overridden by the --config YAML file, overridden by the flags;
    the resolved settings are saved as RUN_DIR/config.yaml.
    """
    from lifelong.train import train as train_run

    given = {k: v for k, v in locals().items() if k in {f.name for f in fields(RunConfig)}}
    if resume:
        if out is None:
            raise fail("--resume needs --out RUN_DIR")
        saved = out / "config.yaml"
        if not saved.is_file():
            raise fail(f"nothing to resume: {str(out)!r} has no config.yaml")
        if config is not None:
            raise fail("--resume continues with the run's own config.yaml; leave out --config")
        base = RunConfig.from_yaml(saved)
    else:
        base = RunConfig.from_yaml(config) if config is not None else RunConfig()
    given["dataset_options"] = _key_values(dataset_option, base.dataset_options)
    cfg = base.override(**{k: None if v is None else _flag_value(v) for k, v in given.items()})
    result = train_run(cfg, resume=resume, progress=not quiet)
    summary = f"trained {result.step} iterations into {result.run_dir}"
    if result.best_metric is not None:
        summary += f"; best validation {result.best_metric:.4f} at iteration {result.best_step}"
    if World.current().is_main:  # under torchrun, one summary
        typer.echo(summary)


def _flag_value(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _key_values(items: list[str] | None, base: dict[str, Any] | None) -> dict[str, Any] | None:
    """``KEY=VALUE`` flags (values read as YAML: numbers, booleans, lists) over ``base``."""
    if not items:
        return None
    options = dict(base or {})
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--dataset-option takes KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


# --------------------------------------------------------------------------------- evaluate
@app.command()
@clean_errors
def evaluate(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run folder made by `lifelong train`.")
    ],
    split: Annotated[str, typer.Option(help="Split to draw episodes from.")] = "test",
    ways: Annotated[
        int | None, typer.Option("--ways", "-n", help="Default: the run's test ways.")
    ] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", "-k", help="Default: the run's test shots.")
    ] = None,
    queries: Annotated[
        int | None, typer.Option("--queries", "-q", help="Default: the run's test queries.")
    ] = None,
    episodes: Annotated[
        int | None, typer.Option(help="Default: 1000 (600 on miniImageNet).")
    ] = None,
    inner_steps: Annotated[
        int | None, typer.Option(help="Adaptation steps (default: the run's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fixed episode set.")] = 0,
    data_root: Annotated[
        str | None, typer.Option(help="Where the dataset is, if it moved.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (default: the run's).")
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Test a run: mean accuracy (or MSE) and 95% confidence interval on fixed episodes."""
    from lifelong.evaluate import evaluate_run

    result = evaluate_run(
        run_dir,
        split,
        ways,
        shots,
        queries,
        episodes,
        inner_steps,
        seed,
        data_root,
        device,
        checkpoint,
    )
    typer.echo(json.dumps(result.to_dict()) if as_json else str(result))


# --------------------------------------------------------------------------------- predict
@app.command()
@clean_errors
def predict(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run folder made by `lifelong train`.")
    ],
    more: Annotated[
        list[Path] | None, typer.Argument(metavar="[QUERY]...", help="More query images.")
    ] = None,
    support: Annotated[
        Path | None, typer.Option(help="Folder with one sub-folder of images per class.")
    ] = None,
    query: Annotated[
        list[Path] | None, typer.Option(help="Query image file or folder (repeatable).")
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:INDEX.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Learn new classes from a few images (--support), then classify --query images.

    Query images are files or folders of images, given with --query or after the options:
    `lifelong predict RUN --support DIR --query a.png b.png more/`.
    """
    from lifelong.api import image_folder, image_paths, load

    if support is None or not (query or more):
        raise fail("predict needs --support DIR and at least one --query image or folder")
    learner = load(run_dir, checkpoint, device)
    if learner.facts.regression:
        raise fail(f"{str(run_dir)!r} is a regression run; predict classifies images")
    paths, labels = image_folder(support)
    queries = image_paths([*(query or []), *(more or [])], what="query ")
    predictions = learner.adapt(paths, labels).predict(queries)
    if as_json:
        rows = [
            {
                "path": str(p),
                "label": r.label,
                "probability": r.probability,
                "probabilities": r.probabilities,
            }
            for p, r in zip(queries, predictions, strict=True)
        ]
        typer.echo(json.dumps({"classes": learner.classes, "predictions": rows}))
        return
    width = max(len(str(p)) for p in queries)
    for p, r in zip(queries, predictions, strict=True):
        typer.echo(f"{p!s:<{width}}  {r.label}  {r.probability:.3f}")


# --------------------------------------------------------------------------------- data
@app.command()
@clean_errors
def datasets() -> None:
    """List the datasets: cached (with size), downloadable, and what each is."""
    from lifelong.data.registry import DATASETS, cached_datasets

    cached = cached_datasets()
    width = max(len(name) for name in DATASETS)
    for name, info in DATASETS.items():
        size = sum(entry.bytes for entry in cached.get(name, []))
        status = f"cached {size / 1e6:.0f} MB" if size else ""
        status = status or ("downloadable" if info.downloadable else "")
        typer.echo(f"{name:<{width}}  {status:<15} {info.description}")


@app.command()
@clean_errors
def download(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A dataset name (see `lifelong datasets`).")
    ],
    root: Annotated[
        Path | None, typer.Option(help="Target folder (default: the cache folder).")
    ] = None,
) -> None:
    """Download a dataset (checksums verified)."""
    from lifelong.data.registry import download_dataset

    where = download_dataset(name, root)
    typer.echo(f"{name}: {where}")


# --------------------------------------------------------------------------------- demo
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


@app.command()
@clean_errors
def demo(
    minutes: Annotated[float, typer.Option(help="Training time of the three runs.")] = 3.0,
    out: Annotated[Path, typer.Option(help="Folder of the runs, table and plot.")] = DEMO_OUT,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    episodes: Annotated[int, typer.Option(help="Test episodes per method.")] = 300,
) -> None:
    """Meta-train ProtoNet and MAML for a few minutes and test them: a table and a plot.

    ProtoNet and MAML learn the built-in strokes characters, MAML learns sinusoids; each is
    tested on held-out classes (or new sinusoids) with a 95% confidence interval, next to a
    nearest-mean classifier on raw pixels. The table goes to the terminal and OUT/demo.json,
    the plot to OUT/demo.png; the runs are in OUT/protonet, OUT/maml and OUT/sinusoid.
    """
    import shutil

    from torch import nn

    from lifelong.algorithms.protonet import ProtoNet
    from lifelong.build import load_data
    from lifelong.evaluate import evaluate as evaluate_algorithm
    from lifelong.evaluate import evaluate_run
    from lifelong.train import train as train_run

    if minutes <= 0 or episodes < 2:
        raise fail(
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
    widths = [max(len(row[c]) for row in table) for c in range(4)]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    summary = [{"method": m, "data": d, "iterations": i, **e.to_dict()} for m, d, i, e in rows]
    (out / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    typer.echo(f"plot: {demo_plot(out, rows, seed)}")


def demo_plot(out: Path, rows: list[tuple[str, str, int, Any]], seed: int) -> Path:
    """Test accuracies with their CIs, validation curves, and one adapted sinusoid."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from lifelong.api import load
    from lifelong.build import load_data

    fig, (bars, curves, wave) = plt.subplots(1, 3, figsize=(15, 4.2))
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
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


app.command("stream")(clean_errors(stream_command))
app.command("reproduce")(clean_errors(reproduce_command))

# The class store (lifelong/store): learn, recognize, classes, forget, export, import, serve.
from lifelong.store import cli as store_cli  # noqa: E402

app.command("learn")(clean_errors(store_cli.learn_command))
app.command("recognize")(clean_errors(store_cli.recognize_command))
app.command("classes")(clean_errors(store_cli.classes_command))
app.command("forget")(clean_errors(store_cli.forget_command))
app.command("export")(clean_errors(store_cli.export_command))
app.command("import")(clean_errors(store_cli.import_command))
app.command("serve")(clean_errors(store_cli.serve_command))


def main(argv: list[str] | None = None) -> None:
    """The ``lifelong`` console script (``argv``: the arguments, default ``sys.argv[1:]``).
    Usage errors (an unknown flag, a value of the wrong type) are printed as one line too."""
    try:
        code = app(args=argv, prog_name="lifelong", standalone_mode=False)
    except typer.Abort:
        sys.exit(1)
    except Exception as err:
        if not (hasattr(err, "exit_code") and hasattr(err, "format_message")):
            raise  # not a usage error (click's ClickException, vendored or not)
        message = " ".join(err.format_message().split())
        if message:  # (no message: the help was shown because no command was given)
            hint = f" (see {err.ctx.command_path} --help)" if getattr(err, "ctx", None) else ""
            typer.echo(f"error: {message}{hint}", err=True)
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
