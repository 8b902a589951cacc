"""``lifelong stream``: run a lifelong-learning protocol on a trained run.

Registered in :mod:`lifelong.cli` as the ``stream`` command (bad input raises ``ValueError``
with a one-line message, which the CLI prints without a traceback). Importing this module
imports no torch: the learners, protocols and models are imported when the command runs.

Example:
    $ lifelong stream runs/omniglot-proto --protocol continual-omniglot --learner prototypes \\
        --classes 600 --seeds 10 --plot proto.png
    $ lifelong stream runs/omniglot-oml --learner replay --buffer 500 --json
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

# the names only (no torch): the learners and protocols are imported when the command runs
from lifelong.continual.classifiers.registry import DEFAULT_CLASSIFIER, classifier_names
from lifelong.continual.registry import LEARNERS, PROTOCOLS


def positive(value: float | None) -> float | None:
    """An option that is a finite number above 0 (or not given)."""
    if value is not None and not 0 < value < math.inf:
        raise typer.BadParameter(f"must be a positive number, got {value}")
    return value


def finite_options(items: list[str] | None) -> list[str] | None:
    """``--classifier-option KEY=NUMBER`` items: NaN and infinite numbers are refused (other
    malformed items are explained by ``parse_options``)."""
    for item in items or []:
        try:
            number = float(item.partition("=")[2])
        except ValueError:
            continue
        if not math.isfinite(number):
            raise typer.BadParameter(f"{item!r}: the number must be finite")
    return items


ClassifierOption = Annotated[
    str | None,
    typer.Option(
        "--classifier",
        help="The class model: "
        + ", ".join(classifier_names())
        + f" (default: {DEFAULT_CLASSIFIER}; see the README's continual-Omniglot table).",
    ),
]
ClassifierOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--classifier-option",
        help="A class model's hyper-parameter, KEY=NUMBER (repeatable).",
        callback=finite_options,
    ),
]


def stream_command(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run folder made by `lifelong train`.")
    ],
    protocol: Annotated[str, typer.Option(help=", ".join(PROTOCOLS) + ".")] = "continual-omniglot",
    classes: Annotated[
        int | None,
        typer.Option(
            help="Classes in the stream (task-sequence: tasks x 5; incremental-sine: "
            "functions). Default: "
            + ", ".join(f"{p.default_classes} ({n})" for n, p in PROTOCOLS.items())
            + ".",
            min=1,
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option(help="Streams (class orders), each a fresh learner.", min=1)
    ] = 10,
    learner: Annotated[
        str, typer.Option(help="; ".join(f"{k}: {v}" for k, v in LEARNERS.items()) + ".")
    ] = "prototypes",
    classifier: ClassifierOption = None,
    classifier_option: ClassifierOptions = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="SGD learners: learning rate (default: an OML run's inner rate).",
            callback=positive,
        ),
    ] = None,
    optimizer: Annotated[str, typer.Option(help="SGD learners: sgd or adam.")] = "sgd",
    buffer: Annotated[int, typer.Option(help="replay: buffer capacity (examples).")] = 500,
    replay_batch: Annotated[
        int, typer.Option(help="replay: buffer examples per update.", min=1)
    ] = 10,
    data_root: Annotated[
        str | None, typer.Option(help="Where the dataset is (Omniglot: its zips).")
    ] = None,
    split: Annotated[
        str, typer.Option(help="The split whose classes are streamed (val: to tune settings).")
    ] = "test",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write the curve and accuracy matrix to this PNG.")
    ] = None,
) -> None:
    """Learn classes one after another and report accuracy on all classes seen so far,
    forgetting and backward transfer (mean and 95% CI over seeds)."""
    from lifelong.continual.classifiers.registry import parse_options
    from lifelong.continual.protocols import run_protocol
    from lifelong.continual.registry import LearnerSettings

    settings = LearnerSettings(
        lr=lr,
        optimizer=optimizer,
        buffer=buffer,
        replay_batch=replay_batch,
        classifier=classifier or DEFAULT_CLASSIFIER,
        classifier_options=parse_options(classifier_option),
    )
    result = run_protocol(
        run_dir,
        protocol,
        learner,
        classes,
        seeds,
        settings,
        data_root,
        device,
        checkpoint,
        split=split,
    )
    if plot is not None:
        from lifelong.continual.plots import plot_results

        plot_results([result.summary()], plot)
    summary = result.summary()
    typer.echo(json.dumps(summary) if as_json else result.table())
