"""Lifelong-learning protocols, every learner side by side, with the settings chosen fairly.

Runs one protocol of :mod:`lifelong.continual.protocols` for several ``LEARNER@RUN`` entries (a
learner of :data:`lifelong.continual.registry.LEARNERS` on a run folder) and writes their
summaries and one plot:

* ``continual-omniglot`` (Javed & White 2019; Beaulieu et al. 2020): the Omniglot evaluation set
  (Lake's split), classes learned one after another, 15 training images per class each seen
  once, tested on the other 5; accuracy on all classes seen at 10, 50, 100, 200, 400, 600.
  Published at 600 classes: OML 18.2%, ANML 63.8%, an i.i.d.-trained oracle 71% (Beaulieu et
  al. 2020, Table 1).
* ``incremental-sine`` (Javed & White 2019, section 4.1): MSE on 10 sine functions learned one
  after another.
* ``task-sequence``: 5-way 5-shot tasks one after another.

An entry ``prototypes:CLASSIFIER@RUN`` runs a class model of
:mod:`lifelong.continual.classifiers` (``prototypes@RUN``: the default one); its
hyper-parameters (the class's ``grid``, e.g. SLDA's shrinkage) are chosen on
``--select-seeds`` streams of the validation classes, in the same way as learning rates.

The learning rate of an SGD learner is chosen, unless ``--lr`` is given, from ``--lr-grid`` by
one stream of streams that are never reported: for image protocols a class-incremental stream
of the run's own *validation* classes (Omniglot: Lake's 100 background validation characters
with their rotations, 400 classes, never used for meta-training by
``configs/continual-omniglot-*.yaml``), for sine waves streams of other seeds (1000 on); the
score is the metric after ``--val-classes`` classes (all functions for sine waves). The
reported streams (seeds 0..seeds-1, test classes) are used once.

Usage:
    python benchmarks/continual_streams.py --data-root /work/shared/data/omniglot \\
        --entry prototypes:slda@runs/co-proto --entry prototypes:mean@runs/co-proto \\
        --entry online-sgd@runs/co-oml --entry online-finetune@runs/co-oml \\
        --entry replay@runs/co-oml --seeds 10
    python benchmarks/continual_streams.py --protocol incremental-sine \\
        --entry online-sgd@runs/sine-oml --entry online-finetune@runs/sine-oml --seeds 20

Writes ``benchmarks/results/continual_{protocol}.json`` (after every entry) and ``.png``
(``--out`` changes the stem); ``--merge REPORT.json`` takes the entries of an earlier report
into this one, so that slow entries need not be measured again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from lifelong.continual.classifiers.registry import DEFAULT_CLASSIFIER, classifier_class
from lifelong.continual.plots import plot_results
from lifelong.continual.protocols import StreamResult, run_protocol
from lifelong.continual.registry import PROTOCOLS, LearnerSettings

HERE = Path(__file__).resolve().parent
# OML's and ANML's meta-tests choose rates at the low end (validation still rising at 0.001)
DEFAULT_GRID = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)
PUBLISHED = {
    "continual-omniglot": {  # at 600 classes, as reported by Beaulieu et al. 2020
        "OML (published)": (600, 0.182),
        "ANML (published)": (600, 0.638),
        "i.i.d. oracle (published)": (600, 0.71),
    }
}


def select(
    run: str,
    learner: str,
    candidates: dict[str, LearnerSettings],
    args: argparse.Namespace,
    seeds: int = 1,
) -> tuple[str, dict[str, float]]:
    """The key of ``candidates`` (settings) with the best metric on validation streams (see
    the module doc), and every candidate's score."""
    sine = PROTOCOLS[args.protocol].regression
    scores = {}
    for key, settings in candidates.items():
        result = run_protocol(
            run,
            args.protocol if sine else "class-incremental",
            learner,
            classes=None if sine else args.val_classes,
            seeds=seeds,
            settings=settings,
            data_root=args.data_root,
            device=args.device,
            split="test" if sine else "val",
            first_seed=1000,
        )
        summary = result.summary()
        score = summary[f"{result.metric}_by_classes"][str(result.boundaries[-1])]
        worst = math.inf if sine else -math.inf  # a diverged run
        scores[key] = worst if score is None else score
        print(f"  {learner}@{run} {key}: validation {result.metric} {score}", flush=True)
    best = (min if sine else max)(candidates, key=lambda key: scores[key])
    return best, scores


def classifier_candidates(settings: LearnerSettings) -> dict[str, LearnerSettings]:
    """Settings for every point of the class model's hyper-parameter grid."""
    grid = classifier_class(settings.classifier).grid
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return {
        ",".join(f"{k}={v:g}" for k, v in point.items()) or "defaults": replace(
            settings, classifier_options=point
        )
        for point in points
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="continual-omniglot", choices=list(PROTOCOLS))
    parser.add_argument("--entry", action="append", default=[], help="LEARNER@RUN_DIR")
    parser.add_argument(
        "--merge", action="append", default=[], help="a JSON report of this script to include"
    )
    parser.add_argument("--data-root", default=None, help="folder with the Omniglot zips")
    parser.add_argument("--classes", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--lr", type=float, default=None, help="skip the search: this rate")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(DEFAULT_GRID))
    parser.add_argument("--val-classes", type=int, default=400)
    parser.add_argument(
        "--select-seeds", type=int, default=3, help="validation streams per classifier setting"
    )
    parser.add_argument("--buffer", type=int, default=500)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: results/continual_{protocol}")
    args = parser.parse_args()
    args.out = args.out or str(HERE / "results" / f"continual_{args.protocol.replace('-', '_')}")
    if not args.entry and not args.merge:
        parser.error("nothing to do: give --entry LEARNER@RUN_DIR (or --merge REPORT.json)")
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in args.merge:  # entries measured by earlier runs of this script
        earlier = json.loads(Path(path).read_text())
        if earlier["benchmark"] != args.protocol:
            parser.error(f"{path} holds {earlier['benchmark']} results, not {args.protocol}")
        entries += [{"command": earlier["command"], **e} for e in earlier["entries"]]
    report = {
        "benchmark": args.protocol,
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
        },
        "entries": entries,
    }

    for spec in args.entry:
        learner, sep, run = spec.partition("@")
        if not sep:
            parser.error(f"--entry takes LEARNER[:CLASSIFIER]@RUN_DIR, got {spec!r}")
        learner, _, classifier = learner.partition(":")
        settings = LearnerSettings(
            lr=args.lr,
            optimizer=args.optimizer,
            buffer=args.buffer,
            classifier=classifier or DEFAULT_CLASSIFIER,
        )
        search = None
        if learner == "prototypes":
            candidates = classifier_candidates(settings)
            if len(candidates) > 1:
                best, search = select(run, learner, candidates, args, args.select_seeds)
                settings = candidates[best]
        elif args.lr is None:
            candidates = {str(lr): replace(settings, lr=lr) for lr in args.lr_grid}
            best, search = select(run, learner, candidates, args)
            settings = candidates[best]
        started = time.perf_counter()
        result: StreamResult = run_protocol(
            run,
            args.protocol,
            learner,
            classes=args.classes,
            seeds=args.seeds,
            settings=settings,
            data_root=args.data_root,
            device=args.device,
        )
        result.learner = f"{learner}{':' + classifier if classifier else ''}@{Path(run).name}"
        print(result.table(), flush=True)
        entries.append(
            {
                "command": report["command"],
                "entry": spec,
                "search_validation": search,
                "seconds": round(time.perf_counter() - started, 1),
                "summary": result.summary(),
            }
        )
        # written after every entry, so that a long benchmark keeps what it measured
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot_results(
        [e["summary"] for e in entries], out.with_suffix(".png"), PUBLISHED.get(args.protocol)
    )
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
