"""Episode sampling speed: episodes per second of :class:`EpisodeSampler` on Omniglot-shaped data.

Two episode shapes, 5-way 1-shot 15-query and 20-way 5-shot 15-query, in batches of 32; timed
for the sampler alone (``uint8`` batches: each task from its own keyed generator, as training
draws them, and the whole batch from one generator, the cost of keying) and for the sampler plus
``.to("cpu")`` (the float conversion every training step does), with 1 torch thread and with
torch's default number.
The data is the real Omniglot meta-training split (Vinyals classes with rotations) when
:mod:`lifelong.data.omniglot` finds the archives, else a synthetic dataset of the same shape
(4800 classes x 20 images x 1x28x28).

Usage:
    python benchmarks/sampling.py [--root /work/shared/data/omniglot] [--synthetic]
                                  [--seconds 1.0] [--repeats 3] [--threads 1 2]

Writes ``benchmarks/results/sampling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import EpisodeSampler

HERE = Path(__file__).resolve().parent
SHAPES = ((5, 1, 15), (20, 5, 15))
BATCH = 32
DEFAULT_THREADS = torch.get_num_threads()


def synthetic_omniglot(classes: int = 4800, per_class: int = 20) -> ClassDataset:
    """Random ``uint8`` images of Omniglot's shape."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 1, 28, 28), dtype=torch.uint8, generator=g)
    infos = [ClassInfo(f"synthetic-{k:04d}") for k in range(classes)]
    return ClassDataset(images, [per_class] * classes, infos, name="synthetic-omniglot")


def omniglot_or_synthetic(root: str, synthetic: bool) -> tuple[ClassDataset, str]:
    """The Omniglot train split if it can be loaded, else the synthetic stand-in, and why."""
    if synthetic:
        return synthetic_omniglot(), "synthetic (asked for)"
    try:
        from lifelong.data.omniglot import load_omniglot
    except ImportError as error:
        return synthetic_omniglot(), f"synthetic (no lifelong.data.omniglot: {error})"
    try:
        return load_omniglot(root=root, class_split="vinyals")["train"], "omniglot"
    except FileNotFoundError as error:
        return synthetic_omniglot(), f"synthetic (no Omniglot data: {error})"


def episodes_per_second(step: Callable[[], object], seconds: float, repeats: int) -> list[float]:
    """Rates of ``repeats`` timed runs of ``step`` (one batch each call), each run about
    ``seconds`` long, after a warm-up."""
    for _ in range(3):
        step()
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            step()
            calls += 1
        rates.append(calls * BATCH / elapsed)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/work/shared/data/omniglot")
    parser.add_argument("--synthetic", action="store_true", help="skip the real Omniglot")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, DEFAULT_THREADS}))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sampling.json")
    args = parser.parse_args()

    dataset, source = omniglot_or_synthetic(args.root, args.synthetic)
    print(f"{dataset!r} [{source}]")
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for ways, shots, queries in SHAPES:
            sampler = EpisodeSampler(dataset, ways, shots, queries, seed=0)
            one = torch.Generator().manual_seed(0)
            for what, step in (
                ("sampler", lambda s=sampler: s.sample(BATCH)),
                ("sampler, one generator per batch", lambda s=sampler, g=one: s.draw(BATCH, g)),
                ("sampler+to_float", lambda s=sampler: s.sample(BATCH).to("cpu")),
            ):
                rates = episodes_per_second(step, args.seconds, args.repeats)
                median = statistics.median(rates)
                results.append(
                    {
                        "torch_threads": threads,
                        "ways": ways,
                        "shots": shots,
                        "queries": queries,
                        "batch_size": BATCH,
                        "measured": what,
                        "episodes_per_s_median": round(median, 1),
                        "episodes_per_s_all": [round(r, 1) for r in rates],
                        "ms_per_batch": round(1000 * BATCH / median, 3),
                    }
                )
                print(
                    f"{threads} thread(s), {ways}-way {shots}-shot {queries}-query, {what}: "
                    f"{median:,.0f} episodes/s"
                )
    report = {
        "benchmark": "sampling",
        "dataset": {
            "source": source,
            "name": dataset.name,
            "classes": len(dataset),
            "images": dataset.images.shape[0],
            "image_shape": list(dataset.image_shape),
        },
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "results": results,
        "torch": torch.__version__,
        "torch_default_threads": DEFAULT_THREADS,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # the machine is shared
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
