"""The ``lifelong`` command line: train, evaluate, predict, datasets, download, demo, stream,
reproduce, and the class store's learn, recognize, classes, forget, migrate, export, import,
serve.

Every command turns bad input (an unknown option value, settings that do not fit together or
do not fit the data, a missing run folder, an unreadable image...) into one line on stderr and
exit status 1, without a traceback (set ``LIFELONG_DEBUG=1`` to see it); usage errors exit
with 2; ``train`` stopped by SIGTERM or Ctrl-C checkpoints its step, says how to resume and
exits with 128 + the signal's number.

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
import inspect
import json
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml

from lifelong.continual.cli import ClassifierOption, ClassifierOptions, stream_command
from lifelong.demo import demo_command
from lifelong.pipeline.config import RunConfig
from lifelong.reproduce import reproduce_command

app = typer.Typer(
    name="lifelong",
    help="Meta-learning (MAML family, Prototypical Networks) on PyTorch.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
FLAGS = {f.name: f"--{f.name.replace('_', '-')}" for f in fields(RunConfig)}
DICT_OPTIONS = {
    "dataset_options": "--dataset-option",
    "task_options": "--task-option",
    "augment": "--augment",
}
"""The options given as repeatable ``--NAME-option KEY=VALUE`` flags."""
FLAGS.update(DICT_OPTIONS)


def as_flags(message: str) -> str:
    """A library message with its options (written `name`) as the command line's flags."""
    return re.sub(r"`([a-z_]+)`", lambda m: FLAGS.get(m[1], m[0]), message)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (one line, options as flags) on stderr; the caller raises the
    returned Exit."""
    typer.echo(f"error: {as_flags(' '.join(message.split()))}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input becomes one line on stderr and exit status 1 (no traceback)."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as err:
        code = 1
        if isinstance(err, RuntimeError):  # torch is loaded when training raises
            from lifelong.pipeline.train import TrainingDiverged, TrainingInterrupted

            if isinstance(err, TrainingInterrupted):
                code = 128 + err.signum  # as if the signal had ended the process
            elif not isinstance(err, TrainingDiverged):
                raise
        if os.environ.get("LIFELONG_DEBUG"):
            raise
        if isinstance(err, OSError) and err.strerror and err.filename:
            raise fail(f"{err.strerror}: {err.filename}") from None
        raise fail(str(err) or type(err).__name__, code) from None
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
def train_options() -> list[inspect.Parameter]:
    """One option per :class:`~lifelong.pipeline.config.RunConfig` field, its help and short
    flag from the field's metadata (``--x/--no-x`` for booleans; ``hidden`` as a comma list;
    ``dataset_options``, ``task_options`` and ``augment`` as repeatable ``--dataset-option
    KEY=VALUE``)."""
    hints = typing.get_type_hints(RunConfig)
    params = []
    for f in fields(RunConfig):
        meta, flag = f.metadata, f"--{f.name.replace('_', '-')}"
        names = [flag] if meta["short"] is None else [flag, meta["short"]]
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] or [
            hints[f.name]
        ]
        kind: Any = kinds[0]
        if kind is bool:
            names = [f"{flag}/--no-{flag[2:]}"]
        elif f.name in DICT_OPTIONS:
            names, kind = [DICT_OPTIONS[f.name]], list[str]
        elif typing.get_origin(kind) is not None:  # hidden: "64" or "40,40"
            kind = str
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, typer.Option(*names, help=meta["help"])],
            )
        )
    return params


def train(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML file of options.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    **flags: Any,
) -> None:
    """Meta-train a learner into --out RUN_DIR.

    Settings: the built-in defaults, then the algorithm's own (its paper's: `lifelong
    algorithms` lists them), then the --config YAML file, then the flags; RUN_DIR/config.yaml
    records every value and where it came from.
    """
    if resume:
        out = flags.get("out")
        if out is None:
            raise fail("--resume needs --out RUN_DIR")
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise fail(f"nothing to resume: {out!r} has no config.yaml")
        if config is not None:
            raise fail("--resume continues with the run's own config.yaml; leave out --config")
        base = RunConfig.from_yaml(saved)
    else:
        base = RunConfig.from_yaml(config) if config is not None else RunConfig()
    for name, flag in DICT_OPTIONS.items():
        flags[name] = _key_values(flag, flags.get(name), getattr(base, name))
    cfg = base.override(source="flag", **flags)

    from lifelong.pipeline.distributed import World
    from lifelong.pipeline.train import train as train_run

    result = train_run(cfg, resume=resume, progress=not quiet)
    summary = f"trained {result.step} iterations into {result.run_dir}"
    if result.best_metric is not None:
        summary += f"; best validation {result.best_metric:.4f} at iteration {result.best_step}"
    if World.current().is_main:  # under torchrun, one summary
        typer.echo(summary)


train.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        p
        for p in inspect.signature(train, eval_str=True).parameters.values()
        if p.kind != p.VAR_KEYWORD
    ]
    + train_options()
)
app.command("train")(clean_errors(train))


def _key_values(
    flag: str, items: list[str] | None, base: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``flag KEY=VALUE`` flags (values read as YAML: numbers, booleans, lists) over ``base``."""
    if not items:
        return None
    options = dict(base or {})
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"{flag} takes KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


@app.command()
@clean_errors
def algorithms() -> None:
    """List the algorithms: their paper defaults and what they can do."""
    from lifelong.algorithms.registry import algorithm_classes

    for name, cls in algorithm_classes().items():
        facts = [
            fact
            for fact, true in (
                ("fixed head", cls.fixed_head),
                ("per-task batch norm", cls.task_batch_norm),
                ("regression", cls.solves_regression),
                ("one process only", not cls.splittable),
                ("backs a class store", cls.can_back_store()),
            )
            if true
        ]
        defaults = ", ".join(f"{k}={v}" for k, v in cls.defaults.items()) or "-"
        typer.echo(f"{name:<9} {cls.__name__:<9} defaults: {defaults}; {', '.join(facts)}")
        for dataset, values in cls.dataset_defaults.items():
            typer.echo(f"{'':<19} on {dataset}: {', '.join(f'{k}={v}' for k, v in values.items())}")


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
    test_rotations: Annotated[
        bool | None,
        typer.Option(
            help="--no-test-rotations: the unrotated test classes only (default: the run's)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Test a run: mean accuracy (or MSE) and 95% confidence interval on fixed episodes."""
    from lifelong.pipeline.evaluate import evaluate_run

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
        test_rotations,
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
    classifier: ClassifierOption = None,
    classifier_option: ClassifierOptions = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Learn new classes from a few images (--support), then classify --query images.

    Query images are files or folders of images, given with --query or after the options:
    `lifelong predict RUN --support DIR --query a.png b.png more/`.
    """
    from lifelong.api import image_folder, image_paths, load
    from lifelong.continual.classifiers.registry import DEFAULT_CLASSIFIER, parse_options

    if support is None or not (query or more):
        raise fail("predict needs --support DIR and at least one --query image or folder")
    options = parse_options(classifier_option)
    learner = load(run_dir, checkpoint, device, classifier or DEFAULT_CLASSIFIER, options)
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


app.command("demo")(clean_errors(demo_command))
app.command("stream")(clean_errors(stream_command))
app.command("reproduce")(clean_errors(reproduce_command))

# The class store (lifelong/store): learn, recognize, classes, forget, export, import, serve.
from lifelong.store import cli as store_cli  # noqa: E402

app.command("learn")(clean_errors(store_cli.learn_command))
app.command("recognize")(clean_errors(store_cli.recognize_command))
app.command("classes")(clean_errors(store_cli.classes_command))
app.command("forget")(clean_errors(store_cli.forget_command))
app.command("migrate")(clean_errors(store_cli.migrate_command))
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
