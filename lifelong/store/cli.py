"""``lifelong learn / recognize / classes / forget / export / import / serve``: a class store
from the command line.

Registered in :mod:`lifelong.cli` (bad input raises ``ValueError`` or ``OSError`` with a
one-line message, which the CLI prints without a traceback). Images are files or folders of
images (their image files, not recursively).

Example:
    $ lifelong learn runs/pn --store shop.db --class mug photos/mug/
    $ lifelong recognize --store shop.db new.jpg --top 3
    $ lifelong serve --store shop.db --port 8000 --token s3cret
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from lifelong.continual.cli import ClassifierOption, ClassifierOptions, positive

StoreOption = Annotated[Path, typer.Option("--store", help="The class store (an SQLite file).")]
Images = Annotated[
    list[Path], typer.Argument(metavar="IMAGE...", help="Image files or folders of images.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
RunOption = Annotated[
    Path | None, typer.Option("--run", help="The store's run folder, if it moved.")
]
DeviceOption = Annotated[str, typer.Option(help="cpu or cuda.")]


def distance(value: float | None) -> float | None:
    """A ``--threshold``: a distance, or inf (never unknown); NaN would never compare, and
    -inf would call every image unknown (as the server, which refuses both)."""
    if value is not None and (math.isnan(value) or value == -math.inf):
        raise typer.BadParameter(f"{value} is not a distance (inf: never answer unknown)")
    return value


def learn_command(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run folder made by `lifelong train`.")
    ],
    images: Images,
    store: StoreOption,
    class_name: Annotated[str, typer.Option("--class", help="The class the images show.")],
    checkpoint: Annotated[str, typer.Option(help="best or last (a new store).")] = "best",
    quantile: Annotated[
        float,
        typer.Option(
            help="A new store's unknown threshold: this quantile of the distances "
            "of validation images to their own class."
        ),
    ] = 0.95,
    classifier: ClassifierOption = None,
    classifier_option: ClassifierOptions = None,
    keep_originals: Annotated[
        bool, typer.Option(help="Keep each image file as given, beside its model-size copy.")
    ] = False,
    device: DeviceOption = "cpu",
    as_json: JsonOption = False,
) -> None:
    """Teach the store a class (new, or more examples of a known one) from a few images;
    the store is made, for this run and class model, if it does not exist."""
    from lifelong.api import image_paths
    from lifelong.continual.classifiers.registry import classifier_class, parse_options
    from lifelong.store.recognizer import ImageFile, Recognizer, open_store

    if classifier is not None:
        classifier_class(classifier)  # an unknown name, before any store is read
    options = parse_options(classifier_option)
    files = [ImageFile.read(p) for p in image_paths(images)]
    recognizer = Recognizer.load(run_dir, checkpoint, device)
    new = not store.is_file() or store.stat().st_size == 0
    with open_store(store, recognizer, True, quantile, classifier, options) as db:
        added = recognizer.learn(db, class_name, files, keep_originals=keep_originals)
        meta = db.meta
    if as_json:
        typer.echo(json.dumps({**vars(added), "new_store": new}))
        return
    if new:
        typer.echo(f"new store {store} for run {meta['run_dir']}; {threshold_line(meta)}")
    typer.echo(
        f"learned {len(added.added)} image{'s' * (len(added.added) != 1)} of {added.name!r} "
        f"({added.count} example{'s' * (added.count != 1)} now)"
    )
    if added.duplicates:
        typer.echo(f"skipped (already learned): {', '.join(added.duplicates)}")


def classifier_settings(meta: dict) -> dict:
    """The store's class model and its settings, without CL2N's feature mean."""
    config = meta.get("classifier") or {"name": "mean"}
    return {k: v for k, v in config.items() if k != "feature_mean"}


def threshold_line(meta: dict) -> str:
    """How the store answers "unknown", in words."""
    calibration, threshold = meta.get("calibration") or {}, meta.get("threshold")
    if threshold is None:
        reason = calibration.get("error", "no calibration")
        return f"never answers unknown unless given --threshold ({reason})"
    if "quantile" not in calibration:
        return f"unknown beyond energy {threshold:.4g}"
    return (
        f"unknown beyond energy {threshold:.4g} (the {calibration['quantile']} quantile of "
        f"{calibration['queries']} validation images' energies to their class, "
        f"{calibration['classes']} classes of {calibration['shots']} examples; it calls "
        f"{100 * calibration['unknown_rejected']:.0f}% of images of a class not taught unknown)"
    )


def recognize_command(
    images: Images,
    store: StoreOption,
    top: Annotated[int, typer.Option(help="Classes listed per image.")] = 1,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Unknown beyond this distance (default: the store's calibrated one; inf: never).",
            callback=distance,
        ),
    ] = None,
    run: RunOption = None,
    device: DeviceOption = "cpu",
    as_json: JsonOption = False,
) -> None:
    """Recognise images among the store's classes, or answer "unknown"."""
    from lifelong.api import image_paths
    from lifelong.store.db import ClassStore
    from lifelong.store.recognizer import ImageFile, recognizer_for

    files = [ImageFile.read(p) for p in image_paths(images)]
    recognizer = recognizer_for(store, run, device)
    with ClassStore.open(store) as db:
        results = recognizer.recognize(db, files, top, threshold)
        used = db.meta.get("threshold") if threshold is None else threshold
    if as_json:
        rows = [r.to_dict() for r in results]
        never = used is not None and math.isinf(used)  # null, as the server: JSON has no inf
        typer.echo(json.dumps({"threshold": None if never else used, "predictions": rows}))
        return
    width = max(len(r.file) for r in results)
    for r in results:
        answer = r.label if r.label is not None else f"unknown (nearest: {r.nearest})"
        line = f"{r.file:<{width}}  {answer}  {r.probability:.3f}  distance {r.distance:.4g}"
        others = ", ".join(f"{c.label} {c.probability:.3f}" for c in r.top[1:])
        typer.echo(f"{line}  [{others}]" if others else line)


def classes_command(store: StoreOption, as_json: JsonOption = False) -> None:
    """List the store's classes, with their numbers of examples and the run."""
    from lifelong.store.db import ClassStore

    with ClassStore.open(store) as db:
        meta, rows = db.meta, db.classes()
    if as_json:
        keys = ("run_dir", "fingerprint", "classifier", "threshold", "calibration")
        summary = {k: meta.get(k) for k in keys}
        summary["classifier"] = classifier_settings(meta)
        typer.echo(json.dumps({**summary, "classes": [vars(c) for c in rows]}))
        return
    settings = " ".join(f"{k}={v}" for k, v in classifier_settings(meta).items())
    typer.echo(
        f"run {meta['run_dir']} (weights {meta['fingerprint'][:12]}), classifier "
        f"{settings}; {threshold_line(meta)}"
    )
    if not rows:
        typer.echo("no classes yet")
        return
    width = max(len(c.name) for c in rows)
    for c in rows:
        when = datetime.fromtimestamp(c.updated).isoformat(" ", "seconds")
        plural = "s" if c.examples != 1 else " "
        typer.echo(f"{c.name:<{width}}  {c.examples:>5} example{plural}  last added {when}")


def migrate_command(
    store: StoreOption,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="A newer run: every kept image is embedded by it."),
    ] = None,
    classifier: ClassifierOption = None,
    classifier_option: ClassifierOptions = None,
    checkpoint: Annotated[str, typer.Option(help="best or last (of --run).")] = "best",
    quantile: Annotated[
        float, typer.Option(help="The unknown threshold's quantile, recalibrated.")
    ] = 0.95,
    device: DeviceOption = "cpu",
) -> None:
    """Move a store to a newer run (re-embedding the images it kept) and/or another class
    model, in one transaction: the store is either all old or all new."""
    from lifelong.continual.classifiers.registry import parse_options
    from lifelong.store.recognizer import migrate_store

    if run is None and classifier is None:
        raise ValueError("migrate needs --run NEW_RUN, --classifier NAME or both")
    report = migrate_store(
        store, run, classifier, parse_options(classifier_option), checkpoint, quantile, device
    )
    typer.echo(report)


def forget_command(
    store: StoreOption,
    class_name: Annotated[str, typer.Option("--class", help="The class to forget.")],
) -> None:
    """Forget a class and all its examples."""
    from lifelong.store.db import ClassStore, check_name

    name = check_name(class_name)  # as `learn` names it
    with ClassStore.open(store) as db:
        count = db.forget(name)
    typer.echo(f"forgot {name!r} ({count} examples)")


def export_command(
    store: StoreOption,
    out: Annotated[Path, typer.Argument(metavar="FILE", help="The file to write (.safetensors).")],
) -> None:
    """Write the store to one portable file (safetensors with JSON metadata)."""
    from lifelong.store.portable import export_store

    count = export_store(store, out)
    typer.echo(f"exported {count} examples to {out}")


def import_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A file made by `lifelong export`.")],
    store: StoreOption,
    run: RunOption = None,
) -> None:
    """Make a new store from an exported file."""
    from lifelong.store.portable import import_store

    count = import_store(file, store, run)
    typer.echo(f"imported {count} examples into {store}")


def serve_command(
    store: StoreOption,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="The run folder: makes the store if it does not exist, or "
            "finds its run if it moved.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    token: Annotated[
        str | None,
        typer.Option(envvar="LIFELONG_TOKEN", help="Require `Authorization: Bearer TOKEN`."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Unknown beyond this distance, for requests that give none (default: the "
            "store's calibrated threshold).",
            callback=distance,
        ),
    ] = None,
    max_files: Annotated[int, typer.Option(help="Images per request.", min=1)] = 64,
    max_file_mb: Annotated[
        float, typer.Option(help="Megabytes per image file.", callback=positive)
    ] = 10.0,
    device: DeviceOption = "cpu",
    log_level: Annotated[str, typer.Option(help="uvicorn's: info, warning, error.")] = "info",
) -> None:
    """Serve the store over HTTP: a web page at /, the API and its OpenAPI page at /docs."""
    import uvicorn

    from lifelong.store.recognizer import Recognizer, open_store, recognizer_for
    from lifelong.store.server import Limits, create_app

    if run is not None and not store.is_file():
        recognizer = Recognizer.load(run, device=device)
        open_store(store, recognizer).close()
    else:
        recognizer = recognizer_for(store, run, device)
    limits = Limits(files=max_files, file_bytes=int(max_file_mb * 1e6))
    app = create_app(store, recognizer, token, limits, threshold)
    typer.echo(f"serving {store} at http://{host}:{port}/ (API: http://{host}:{port}/docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)
