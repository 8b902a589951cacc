"""Distributed scaling: meta-iterations per second on 1 and 2 ranks, and parallel efficiency.

A meta-iteration is :meth:`lifelong.pipeline.train.Trainer.train_step`, the step of a real run: draw
this rank's share of the meta-batch, move it to the device, meta-loss, backward, all-reduce of
the meta-gradient (with 2 ranks: gloo on the CPU), gradient clipping, Adam. Settings:

- ``maml``: Finn et al. 2017 on Omniglot, 5-way 1-shot, 15 queries per class, meta-batch 32,
  strided Conv-4 with 64 filters, one inner step, second order (16 tasks per rank on 2 ranks);
- ``protonet``: Snell et al. 2017's Omniglot training episodes, 60-way 5-shot 5-query, Conv-4
  with 64 filters; meta-batch ``--protonet-meta-batch`` (default 2: one episode per rank on 2
  ranks); ``protonet_bf16``: the same with ``precision: bfloat16``.

Images are random ``uint8`` 28x28 (200 classes of 20): the compute is Omniglot's, without its
loading. Each rank is a process with ONE intra-op thread; ranks meet on 127.0.0.1. Rank 0
times every step (the all-reduce keeps the ranks in step) and the median after ``--warmup``
steps is reported. Parallel efficiency = (iterations/s on n ranks) / (n * iterations/s on
1 rank). The machine may be shared: the load averages before and after are recorded.

``--side-by-side`` finds out where the efficiency goes: for each ``n > 1`` it also times ``n``
processes that each train on their ``1/n`` share of the meta-batch at the same time *without*
communicating, and one such process alone. Alone -> side by side is what the processes cost
each other on this machine (cores, caches, memory bandwidth); side by side -> ranks is what
the communication and synchronisation cost.

On a GPU (``--device cuda --ranks 1``, what ``benchmarks/gpu_check.sh`` runs) the same steps
are timed on ``cuda:0``.

Usage:
    python benchmarks/ddp_scaling.py [--ranks 1 2] [--iterations 3] [--warmup 1]
        [--algorithms maml protonet] [--device cpu] [--out benchmarks/results/ddp_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.utils.distributed import get_free_port

from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import EpisodeSampler
from lifelong.pipeline.allocator import keep_freed_memory
from lifelong.pipeline.config import RunConfig
from lifelong.pipeline.data import DataFacts
from lifelong.pipeline.distributed import rank_seed
from lifelong.pipeline.factory import build_algorithm
from lifelong.pipeline.train import Trainer, seed_everything

HERE = Path(__file__).resolve().parent
CLASSES, PER_CLASS = 200, 20
SETTINGS: dict[str, dict[str, Any]] = {
    "maml": {
        "algorithm": "maml", "ways": 5, "shots": 1, "queries": 15, "meta_batch": 32,
        "strided": True, "inner_lr": 0.4, "inner_steps": 1,
    },
    "protonet": {"algorithm": "protonet", "ways": 60, "shots": 5, "queries": 5},
    "protonet_bf16": {
        "algorithm": "protonet", "ways": 60, "shots": 5, "queries": 5, "precision": "bfloat16",
    },
}  # fmt: skip


def random_omniglot() -> ClassDataset:
    """Random 28x28 uint8 images, 200 classes of 20 (Omniglot's shape)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CLASSES * PER_CLASS, 1, 28, 28), generator=g, dtype=torch.uint8)
    return ClassDataset(images, [PER_CLASS] * CLASSES, [ClassInfo(f"c{k}") for k in range(CLASSES)])


def config(name: str, protonet_meta_batch: int, device: str, shares: int = 1) -> RunConfig:
    """The setting's run config; ``shares``: a process trains on ``1/shares`` of the
    meta-batch on its own."""
    settings = dict(SETTINGS[name])
    if settings["algorithm"] == "protonet":
        settings["meta_batch"] = protonet_meta_batch
    settings["meta_batch"] //= shares
    return RunConfig(**settings, hidden=(64,), device=device, dataset="strokes")


def rank_main(rank: int, size: int, port: int, job: dict[str, Any], result: Path) -> None:
    """One rank: time ``job["steps"]`` meta-iterations of each setting; rank 0 writes the
    seconds of every step to ``result``."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    if device.type == "cpu":
        keep_freed_memory()
    elif size > 1:  # one GPU per rank
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    if size > 1:
        dist.init_process_group(
            "gloo" if device.type == "cpu" else "nccl",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=size,
            timeout=timedelta(seconds=600),
        )
    data = random_omniglot()
    facts = DataFacts("random-omniglot", image_shape=(1, 28, 28), classes={"train": CLASSES})
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in job["algorithms"]:
            cfg = config(name, job["protonet_meta_batch"], job["device"], job.get("shares", 1))
            seed_everything(0)
            algorithm = build_algorithm(cfg, facts)
            seed_everything(rank_seed(0, rank))
            sampler = EpisodeSampler(data, cfg.ways, cfg.shots, cfg.queries, seed=0)
            trainer = Trainer(algorithm, cfg, sampler, folder, facts, None, device, False)
            seconds = []
            for _ in range(job["steps"]):
                start = time.perf_counter()
                trainer.train_step()
                seconds.append(time.perf_counter() - start)
            times[name] = seconds
    if size > 1:
        dist.destroy_process_group()
    if rank == 0:
        result.write_text(json.dumps(times))


def measure(size: int, job: dict[str, Any], group: bool = True) -> dict[str, list[float]]:
    """Seconds of every step of rank 0, with ``size`` ranks (processes); ``group=False``:
    ``size`` processes at once that do not communicate (each its own 1-process run)."""
    context = multiprocessing.get_context("spawn")
    port = get_free_port()
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "times.json"
        ranks = [
            context.Process(target=rank_main, args=(rank, size if group else 1, port, job, result))
            for rank in range(size)
        ]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join()
        codes = [process.exitcode for process in ranks]
        if any(codes):
            raise SystemExit(f"a rank failed (exit codes {codes})")
        return json.loads(result.read_text())


def device_name(device: str) -> str:
    """The GPU's name, or the processor's model name (Linux), else the machine type."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--algorithms", nargs="+", default=["maml", "protonet"],
                        choices=list(SETTINGS))  # fmt: skip
    parser.add_argument("--protonet-meta-batch", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one rank per GPU)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--side-by-side", action="store_true",
                        help="also time the shares without communication (module doc)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ddp_scaling.json")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this PyTorch has no CUDA device")
    job = {
        "algorithms": args.algorithms,
        "steps": args.warmup + args.iterations,
        "protonet_meta_batch": args.protonet_meta_batch,
        "device": args.device,
        "threads": args.threads,
    }
    runs = []
    plan = [(size, "ranks", size, True) for size in args.ranks]
    if args.side_by_side:
        plan += [(n, "side by side", count, False) for n in args.ranks if n > 1
                 for count in (n, 1)]  # fmt: skip
    for size, mode, processes, group in plan:
        load_before = os.getloadavg()
        started = time.perf_counter()
        shares = 1 if group else size
        times = measure(processes, {**job, "shares": shares}, group)
        runs.append(
            {
                "mode": mode if processes > 1 or group else f"alone, 1/{size} of the meta-batch",
                "ranks": size if group else None,
                "processes": processes,
                "wall_s": round(time.perf_counter() - started, 1),
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "results": {
                    name: {
                        "median_s_per_iteration": round(statistics.median(t[args.warmup :]), 4),
                        "iterations_per_s": round(1 / statistics.median(t[args.warmup :]), 4),
                        "times_s": [round(x, 4) for x in t],
                    }
                    for name, t in times.items()
                },
            }
        )
    base = next((r for r in runs if r["mode"] == "ranks" and r["ranks"] == 1), None)
    efficiency = {
        str(r["ranks"]): {
            name: round(
                value["iterations_per_s"]
                / (r["ranks"] * base["results"][name]["iterations_per_s"]),
                3,
            )
            for name, value in r["results"].items()
        }
        for r in runs
        if base is not None and r["mode"] == "ranks" and r["ranks"] > 1
    }
    report = {
        "command": " ".join(["python", *sys.argv]),
        "what": "Trainer.train_step per rank, median seconds after warm-up (first warmup "
        "entries of times_s are the warm-up); efficiency = it/s(n) / (n * it/s(1))",
        "settings": {name: SETTINGS[name] for name in args.algorithms},
        "protonet_meta_batch": args.protonet_meta_batch,
        "data": f"random uint8 1x28x28 images, {CLASSES} classes of {PER_CLASS}",
        "device": args.device,
        "device_name": device_name(args.device),
        "cpu_count": os.cpu_count(),
        "threads_per_rank": args.threads,
        "torch": torch.__version__,
        "warmup": args.warmup,
        "runs": runs,
        "parallel_efficiency": efficiency,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
