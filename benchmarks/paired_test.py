"""Two trained runs of a row on the same test episodes: a paired 95% interval of their difference.

``lifelong reproduce`` tests every run of a row on the same fixed episodes (seed 0), so two
runs (say a row's setting in float32 and in bfloat16) can be told apart more finely than by
their two intervals: this tests each run as ``lifelong reproduce ROW --run RUN`` does (the
row's checkpoint, each run in its own precision and settings, the row's test episodes:
:func:`lifelong.reproduce.prepared_test`) and reports each mean with its 95% interval and
the mean of the per-episode differences (second minus first) with its paired 95% interval.

Usage:
    python benchmarks/paired_test.py ROW RUN_A RUN_B [--data-root DIR] [--threads 2]

Writes ``benchmarks/results/paired_test_<row>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lifelong.pipeline.evaluate import episode_metrics
from lifelong.reproduce import describe, load_row, load_tested, machine, prepared_test
from lifelong.stats import summary

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", help="a row name or row file")
    parser.add_argument("runs", type=Path, nargs=2, help="the two run folders")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    row = load_row(args.row)
    runs = [load_tested(row, run) for run in args.runs]
    cpu = torch.device("cpu")
    tests = []
    for setting in row.tests:
        values = []
        for run in runs:
            algorithm, episodes, batch_size = prepared_test(setting, run, cpu, args.data_root)
            values.append(episode_metrics(algorithm, episodes, cpu, batch_size))
        first, second = values
        n = first.numel()
        tests.append({
            "name": setting.name,
            "episodes": f"{n} fixed {setting.name} test episodes, seed 0",
            "first": summary(first),
            "second": summary(second),
            "second_minus_first": summary(second - first),
        })  # fmt: skip
    report = {
        "command": " ".join(["python", *sys.argv]),
        "row": row.name,
        "runs": [str(run) for run in args.runs],
        "machine": machine(cpu),
        "tests": tests,
    }
    out = args.out or HERE / "results" / f"paired_test_{row.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for test in tests:
        a, b, d = (test[k] for k in ("first", "second", "second_minus_first"))
        print(
            f"{test['name']}: {describe(a['mean'], a['ci95'], row.metric)} and "
            f"{describe(b['mean'], b['ci95'], row.metric)}; second minus first "
            f"{d['mean']:+.5f} ± {d['ci95']:.5f} (paired); written to {out}"
        )


if __name__ == "__main__":
    main()
