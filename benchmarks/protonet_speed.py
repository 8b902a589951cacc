"""ProtoNet training speed: seconds per 60-way 5-shot 5-query Omniglot episode.

The training step of Snell et al. 2017 on Omniglot (60-way episodes, 28x28x1, Conv-4 with 64
filters): forward, backward and an Adam step, on one episode of random images. Variants:

- ``naive``: the plain implementation: NCHW layout, one encoder call on support + query,
  prototypes by reshape/mean, ``torch.cdist(...) ** 2``;
- ``library``: :meth:`lifelong.algorithms.protonet.ProtoNet.meta_loss` (NHWC input, one-hot
  class means, matrix-product distances);
- ``library_nchw``: the same with ``channels_last=False``;
- ``library_inplace``: the library step with Conv-4's ReLUs made in-place (a change that
  ``lifelong/models/conv4.py`` could adopt: one 120 MB activation less to allocate per step);
- ``library_bf16``: ``ProtoNet(..., precision="bfloat16")``: the encoder under
  ``torch.autocast`` in bfloat16 (AMX / AVX-512-BF16 CPUs); prototypes and distances float32.

Each allocator setting runs in its own process (they must be set before the first large
allocation): ``default`` (glibc: blocks above 32 MiB are fresh ``mmap`` pages, faulted in and
zeroed on every step: 120 MB per first-layer activation here); ``no-mmap`` (``mallopt``:
large blocks from the heap, freed memory kept for the next step); ``thp`` (PyTorch's
``THP_MEM_ALLOC_ENABLE=1``: large blocks on 2 MiB transparent huge pages). Variants are timed
in turns (one step of each per round) so that a change in the machine's load hits all of
them alike; the median over rounds after warm-up is reported, with the load average.

Usage:
    python benchmarks/protonet_speed.py [--rounds 7] [--warmup 2] [--threads 2 1]
                                        [--allocators default no-mmap thp]

Writes ``benchmarks/results/protonet_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lifelong.pipeline.allocator import keep_freed_memory

HERE = Path(__file__).resolve().parent
WAYS, SHOTS, QUERIES = 60, 5, 5
VARIANTS = ("naive", "library", "library_nchw", "library_inplace", "library_bf16")
ALLOCATORS = ("default", "no-mmap", "thp")


def cpu_model() -> str:
    """The processor's model name (Linux), else the machine type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def make_step(variant: str) -> Callable[[], None]:
    """One training step of ``variant`` on a fixed random 60-way 5-shot 5-query episode."""
    import torch
    import torch.nn.functional as F

    from lifelong.algorithms.protonet import ProtoNet
    from lifelong.data.episodes import EpisodeBatch
    from lifelong.models.conv4 import Conv4

    g = torch.Generator().manual_seed(0)

    def images(per_class: int) -> torch.Tensor:
        shape = (1, WAYS * per_class, 1, 28, 28)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)

    def labels(per_class: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat_interleave(per_class).unsqueeze(0)

    batch = EpisodeBatch(
        images(SHOTS), labels(SHOTS), images(QUERIES), labels(QUERIES), WAYS, SHOTS
    ).to("cpu")
    torch.manual_seed(0)
    encoder = Conv4(1, 28, out_features=None, hidden=64)
    if variant == "library_inplace":
        for module in encoder.modules():
            if isinstance(module, torch.nn.ReLU):
                module.inplace = True
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)

    if variant == "naive":

        def loss() -> torch.Tensor:
            episode = batch[0]
            z = encoder(torch.cat((episode.support_x, episode.query_x)))
            prototypes = z[: WAYS * SHOTS].reshape(WAYS, SHOTS, -1).mean(1)
            distances = torch.cdist(z[WAYS * SHOTS :], prototypes) ** 2
            return F.cross_entropy(-distances, episode.query_y)

    else:
        model = ProtoNet(
            encoder,
            channels_last=variant != "library_nchw",
            precision="bfloat16" if variant == "library_bf16" else "float32",
        )

        def loss() -> torch.Tensor:
            return model.meta_loss(batch).loss

    def step() -> None:
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()

    return step


def measure(variants: list[str], rounds: int, warmup: int) -> dict:
    """Seconds per step of each variant, timed in turns."""
    steps = {v: make_step(v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(warmup + rounds):
        for v in variants:
            start = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - start)
    return {
        v: {
            "median_s": round(statistics.median(t[warmup:]), 4),
            "min_s": round(min(t[warmup:]), 4),
            "times_s": [round(x, 4) for x in t[warmup:]],
        }
        for v, t in times.items()
    }


def child(args: argparse.Namespace) -> None:
    """Measure in this process (its allocator was set up by the parent or just now)."""
    if args.allocator == "no-mmap" and not keep_freed_memory():
        raise SystemExit(f"--allocator {args.allocator} needs glibc (Linux)")
    import torch

    if args.threads[0]:
        torch.set_num_threads(args.threads[0])
    load_before = os.getloadavg()
    results = measure(args.variants, args.rounds, args.warmup)
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "variants": results,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[0], help="torch threads (0: torch's default)"
    )
    parser.add_argument("--allocators", nargs="+", choices=ALLOCATORS, default=list(ALLOCATORS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--allocator", choices=ALLOCATORS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "protonet_speed.json")
    args = parser.parse_args()
    if args.allocator:
        child(args)
        return

    results: dict[str, dict] = {}
    for allocator in args.allocators:
        for threads in args.threads:
            command = [sys.executable, __file__, "--allocator", allocator]
            command += ["--rounds", str(args.rounds), "--warmup", str(args.warmup)]
            command += ["--threads", str(threads), "--variants", *args.variants]
            env = dict(os.environ)
            env.pop("THP_MEM_ALLOC_ENABLE", None)
            if allocator == "thp":
                env["THP_MEM_ALLOC_ENABLE"] = "1"
            output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            run = json.loads(output.stdout.strip().splitlines()[-1])
            results.setdefault(allocator, {})[f"threads={run['threads']}"] = run
            for variant, r in run["variants"].items():
                load = run["load_before"][0]
                print(
                    f"{allocator:8s} {run['threads']} threads {variant:13s} median "
                    f"{r['median_s']:.3f} s  min {r['min_s']:.3f} s  (load {load:.2f})"
                )

    import torch

    report = {
        "benchmark": "ProtoNet training step, Omniglot 60-way 5-shot 5-query, Conv-4 (64), "
        "28x28x1, forward + backward + Adam; seconds per step, median over rounds",
        "rounds": args.rounds,
        "warmup": args.warmup,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_note": "1/5/15-minute load averages (as uptime shows) before and after each "
        "process; the cores are shared, so loads above ~0.5 slow every variant",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
