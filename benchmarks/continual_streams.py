"""Continual Omniglot, every learner side by side (Javed & White 2019; Beaulieu et al. 2020).

The protocol (:mod:`lifelong.continual.protocols`, ``continual-omniglot``): Omniglot evaluation
set (Lake's split), classes learned one after another, 15 training images per class each seen
once, tested on the other 5; accuracy on all classes seen at 10, 50, 100, 200, 400, 600
classes, mean and 95% CI over seeds. Published at 600 classes: OML 18.2%, ANML 63.8%, an
i.i.d.-trained oracle 71% (Beaulieu et al. 2020, Table 1).

Each entry is ``LEARNER@RUN``: a learner of :data:`lifelong.continual.learners.LEARNERS` on a
run folder. The learning rate of an SGD learner is chosen, unless given, on the *validation*
classes (Lake's 100 background validation characters, never used for meta-training by the
configs of ``configs/continual-omniglot-*.yaml``), by the accuracy after 100 classes with one
seed, from ``--lr-grid``; the test classes are used once, for the reported numbers.

Usage:
    python benchmarks/continual_omniglot.py --data-root /work/shared/data/omniglot \\
        --entry prototypes@runs/co-proto --entry oml@runs/co-oml \\
        --entry finetune@runs/co-oml --entry replay@runs/co-oml --seeds 10

Writes ``benchmarks/results/continual_omniglot.json`` and ``.png`` (``--out`` changes the
stem).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from lifelong.continual.learners import LearnerSettings
from lifelong.continual.plots import plot_results
from lifelong.continual.protocols import StreamResult, run_protocol

HERE = Path(__file__).resolve().parent
DEFAULT_GRID = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def select_lr(
    run: str, learner: str, grid: list[float], settings: LearnerSettings, args: argparse.Namespace
) -> tuple[float, dict[str, float]]:
    """The rate of ``grid`` with the best validation accuracy after ``args.val_classes``."""
    scores = {}
    for lr in grid:
        result = run_protocol(
            run,
            "continual-omniglot",
            learner,
            classes=args.val_classes,
            seeds=1,
            settings=LearnerSettings(**{**settings.__dict__, "lr": lr}),
            data_root=args.data_root,
            device=args.device,
            split="val",
            first_seed=1000,
        )
        scores[str(lr)] = result.summary()["accuracy_by_classes"][str(args.val_classes)]
        print(f"  {learner}@{run} lr {lr}: val accuracy {scores[str(lr)]:.4f}", flush=True)
    best = max(grid, key=lambda lr: scores[str(lr)])
    return best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", action="append", required=True, help="LEARNER@RUN_DIR")
    parser.add_argument("--data-root", default=None, help="folder with the Omniglot zips")
    parser.add_argument("--classes", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--lr", type=float, default=None, help="skip the search: this rate")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(DEFAULT_GRID))
    parser.add_argument("--val-classes", type=int, default=100)
    parser.add_argument("--buffer", type=int, default=500)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "continual_omniglot"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    entries, results = [], []
    for spec in args.entry:
        learner, sep, run = spec.partition("@")
        if not sep:
            parser.error(f"--entry takes LEARNER@RUN_DIR, got {spec!r}")
        settings = LearnerSettings(lr=args.lr, optimizer=args.optimizer, buffer=args.buffer)
        search = None
        if learner != "prototypes" and args.lr is None:
            lr, search = select_lr(run, learner, args.lr_grid, settings, args)
            settings = LearnerSettings(**{**settings.__dict__, "lr": lr})
        started = time.perf_counter()
        result: StreamResult = run_protocol(
            run,
            "continual-omniglot",
            learner,
            classes=args.classes,
            seeds=args.seeds,
            settings=settings,
            data_root=args.data_root,
            device=args.device,
        )
        result.learner = f"{learner}@{Path(run).name}"
        print(result.table(), flush=True)
        results.append(result)
        entries.append(
            {
                "entry": spec,
                "lr_search_val_accuracy": search,
                "seconds": round(time.perf_counter() - started, 1),
                "summary": result.summary(),
            }
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "continual-omniglot",
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
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot_results(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
