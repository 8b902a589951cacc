"""Evaluation speed of a fixed test set: each image embedded once against every episode's
images embedded (ProtoNet; the results must be equal).

``lifelong evaluate`` and validation during training score an algorithm that
``evaluates_embeddings`` (ProtoNet) from one embedding per image of the set
(:func:`lifelong.pipeline.evaluate.embedded_metrics`); this times that against the
per-episode path on the same run and episodes.

Usage:
    python benchmarks/eval_speed.py --run RUN_DIR --data-root DIR [--ways 20 --shots 5]

Writes ``benchmarks/results/eval_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lifelong.algorithms.protonet import ProtoNet
from lifelong.pipeline.evaluate import evaluate_run
from lifelong.reproduce import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for once in (True, False):
        ProtoNet.evaluates_embeddings = once
        start = time.perf_counter()
        result = evaluate_run(
            args.run, ways=args.ways, shots=args.shots, queries=args.queries,
            episodes=args.episodes, data_root=args.data_root, device="cpu",
        )  # fmt: skip
        name = "each image embedded once" if once else "every episode's images embedded"
        results[name] = {"seconds": round(time.perf_counter() - start, 1), **result.to_dict()}
        print(name, results[name], flush=True)
    report = {
        "run": args.run,
        "results": results,
        "machine": machine(torch.device("cpu")),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "note": "wall-clock of evaluate_run, data loading included; 1 torch thread",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
