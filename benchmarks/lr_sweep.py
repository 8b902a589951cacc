"""Peak learning rate of a row's schedule, chosen on validation classes at equal iterations.

A time-to-accuracy recipe (a ``-recipe-`` row of ``lifelong reproduce``) trains for a fixed
number of iterations with its schedule (e.g. a cosine to 0, Li et al. 2020, "Budgeted
Training"); the peak rate that is best for the paper's long run need not be best for a short
one. For each ``meta_lr`` this trains the row's ``train`` section on the *train* split only
(the row's own may be train + validation) for ``--iterations``, then tests the last
checkpoint on the same fixed episodes of the *validation* classes, in the shape of each of the
row's tests. Test classes are never looked at. The episodes are shared, so each rate's
per-episode difference from the first rate gives a paired 95% interval. Iterations, not
minutes, are compared: the load of the machine does not change the result (training seconds
and the load average are recorded beside it).

Usage:
    python benchmarks/lr_sweep.py ROW --lr 0.001 0.003 0.006 [--iterations 2500]
        [--data-root DIR] [--work runs/lr-sweep] [--threads 1]

Runs already in ``--work`` (same settings) are reused, so a sweep can be extended or resumed.
Writes ``benchmarks/results/lr_sweep_<row>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from lifelong.pipeline.data import load_data
from lifelong.pipeline.evaluate import episode_metrics
from lifelong.pipeline.train import train
from lifelong.pipeline.trained import load_trained
from lifelong.reproduce import load_row, machine
from lifelong.stats import summary

HERE = Path(__file__).resolve().parent
TEST_SHAPE = ("test_ways", "test_shots", "test_queries", "eval_inner_steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", help="a row name or row file")
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--work", type=Path, default=Path("runs/lr-sweep"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    row = load_row(args.row)
    base = replace(
        row.train,
        train_split="train",
        iterations=args.iterations,
        val_every=10 * args.iterations,  # no validation during training: the last is tested
        data_root=args.data_root,
        device="cpu",
    )
    load_before = os.getloadavg()
    runs = {}
    for lr in args.lr:
        cfg = replace(base, meta_lr=lr, out=str(args.work / f"{row.name}-lr{lr:g}"))
        start = time.perf_counter()
        result = train(cfg, resume=Path(cfg.out, "config.yaml").exists(), progress=False)
        runs[lr] = {"run": cfg.out, "iterations": result.step,
                    "seconds_this_session": round(time.perf_counter() - start, 1)}  # fmt: skip
    tests = []
    for setting in row.tests:
        cfg = setting.config(base)
        episodes = load_data(cfg).sampler("val", seed=0).fixed(args.episodes, seed=0)
        # the algorithm rebuilt for the test's shape (e.g. MAML's head for its ways)
        shape = {k: getattr(cfg, k) for k in TEST_SHAPE}
        values = {
            lr: episode_metrics(load_trained(run["run"], "last", shape).algorithm, episodes)
            for lr, run in runs.items()
        }
        first = args.lr[0]
        tests.append({
            "name": setting.name,
            "episodes": f"{args.episodes} fixed {setting.name} episodes of the validation "
                        "classes, seed 0",
            "accuracy": {f"{lr:g}": summary(v) for lr, v in values.items()},
            f"paired_difference_from_{first:g}": {
                f"{lr:g}": summary(v - values[first]) for lr, v in values.items() if lr != first
            },
        })  # fmt: skip
    report = {
        "command": " ".join(["python", *sys.argv]),
        "row": row.name,
        "setting": {**base.to_dict(), "meta_lr": "swept"},
        "runs": {f"{lr:g}": run for lr, run in runs.items()},
        "machine": machine(torch.device("cpu")),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "tests": tests,
    }
    out = args.out or HERE / "results" / f"lr_sweep_{row.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(tests, indent=2))


if __name__ == "__main__":
    main()
