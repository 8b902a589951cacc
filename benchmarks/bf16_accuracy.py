"""Mixed precision (bfloat16) and accuracy: ProtoNet trained in float32 and in bfloat16.

``--precision bfloat16`` runs the ProtoNet encoder under ``torch.autocast`` in bfloat16
(prototypes, distances and the loss stay float32). For each seed the two runs share
everything else (initialisation, training episodes, test episodes): a short strokes run
(5-way 1-shot, 15 queries, meta-batch 4, Conv-4 with 64 filters, Adam 1e-3), then 5-way 1-shot
accuracy on the same fixed test episodes, each model in its own precision and the bf16-trained
one also in float32 (to tell the effect of training from that of inference). Because the
episodes are the same, the per-episode differences give a paired 95% interval, much tighter
than the difference of two independent intervals. Training seconds are recorded with the load
average (the machine is shared).

Usage:
    python benchmarks/bf16_accuracy.py [--iterations 300] [--episodes 500] [--seeds 0]

Writes ``benchmarks/results/bf16_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from lifelong.pipeline.config import RunConfig
from lifelong.pipeline.data import load_data
from lifelong.pipeline.evaluate import episode_metrics
from lifelong.pipeline.train import train
from lifelong.pipeline.trained import load_trained
from lifelong.stats import summary

HERE = Path(__file__).resolve().parent
SETTING = {
    "algorithm": "protonet",
    "dataset": "strokes",
    "ways": 5,
    "shots": 1,
    "queries": 15,
    "meta_batch": 4,
    "val_every": 100_000,  # no validation: the last checkpoint is tested
    "checkpoint_every": 100_000,
    "device": "cpu",
}


def run_seed(seed: int, iterations: int, episodes: int, folder: Path) -> dict:
    """Train float32 and bfloat16 with ``seed``; test both on the same episodes."""
    trained, seconds = {}, {}
    for precision in ("float32", "bfloat16"):
        cfg = RunConfig(
            **SETTING,
            iterations=iterations,
            seed=seed,
            precision=precision,
            out=str(folder / f"{precision}-{seed}"),
        )
        start = time.perf_counter()
        train(cfg, progress=False)
        seconds[precision] = round(time.perf_counter() - start, 1)
        trained[precision] = cfg.out
    data = load_data(RunConfig(**SETTING))
    test = data.sampler("test", seed=0).fixed(episodes, seed=0)

    def accuracies(run: str, precision: str) -> torch.Tensor:
        model = load_trained(run, "last", {"precision": precision}).algorithm
        return episode_metrics(model, test)

    fp32 = accuracies(trained["float32"], "float32")
    bf16 = accuracies(trained["bfloat16"], "bfloat16")
    bf16_as_fp32 = accuracies(trained["bfloat16"], "float32")
    return {
        "seed": seed,
        "train_seconds": seconds,
        "accuracy": {
            "float32": summary(fp32),
            "bfloat16": summary(bf16),
            "bfloat16_trained_tested_float32": summary(bf16_as_fp32),
        },
        "paired_difference_bf16_minus_fp32": summary(bf16 - fp32),
        "paired_difference_test_precision_only": summary(bf16 - bf16_as_fp32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bf16_accuracy.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_data(RunConfig(**SETTING))  # generated once, before any timing
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        results = [run_seed(s, args.iterations, args.episodes, Path(folder)) for s in args.seeds]
    report = {
        "command": " ".join(["python", *sys.argv]),
        "setting": {**SETTING, "iterations": args.iterations, "test_episodes": args.episodes},
        "test": "5-way 1-shot 15-query episodes of the strokes test split, seed 0",
        "torch": torch.__version__,
        "cpu_bf16": "avx512_bf16/amx_bf16" if _has_bf16_units() else "none (emulated)",
        "threads": args.threads,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _has_bf16_units() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "avx512_bf16" in text or "amx_bf16" in text


if __name__ == "__main__":
    main()
