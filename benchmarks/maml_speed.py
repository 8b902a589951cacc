"""MAML speed: seconds per meta-iteration, fast path vs the plain per-task loop.

The setting of Finn et al. 2017 on Omniglot: 5-way 1-shot, 15 queries per class (``--queries``;
the paper's code trains with 1), meta-batch 32, Conv-4 with 64 filters on 28x28x1 images, one
inner step (lr 0.4); a meta-iteration is ``meta_loss`` + ``backward`` (no optimiser step), on
a fixed batch of random images. Variants, each second order (true meta-gradient, ``_2nd``) and
first order (FOMAML, ``_1st``):

- ``loop``: ``MAML(model, fast=False)``: the reference, one task after the other through
  ``functional_call`` on the model, the graph of all tasks kept for ``backward``, intra-op
  threads (what learn2learn-style code does);
- ``fast``: ``MAML(model)``, the library default: :class:`~lifelong.algorithms.functional.
  TaskForward` (channels_last, first convolution as a matrix product, pooling before ReLU; NCHW
  and a batch norm with a cheap double backward on the support pass), each task differentiated
  as soon as its loss is computed, the tasks shared out to one thread per core;
- ``fast_1worker``: the same in the calling thread, intra-op threads (``workers=1``);
- ``fast_chunk1``: ``fast`` with one task at a time (``task_chunk=1``; the default groups
  small tasks, see :data:`~lifelong.algorithms.inner_loop.GROUP_ACTIVATIONS`);
- ``fast_per_step_bn``: ``fast`` with MAML++'s per-step batch-norm weights (``per_step_bn``;
  its meta-gradient has more parameters than the loop's, so ``grad_vs_loop`` skips it);
- ``fast_grouped``: all 32 tasks in one batched forward (``task_chunk=32``): larger fused
  matrix products instead of one task at a time, in the calling thread;
- ``fast_compiled``: ``fast_1worker`` with its task forward through ``torch.compile``
  (inductor); where a variant cannot run (``torch.compile`` has no double backward), the error
  is recorded instead of its times;
- ``fast_compiled_query``: ``fast_1worker`` with only the query pass compiled (it is
  differentiated once, so inductor can run it; the support pass stays eager);
- ``fast_bf16`` and ``fast_1worker_bf16``: ``fast`` and ``fast_1worker`` with
  ``precision="bfloat16"`` (the task computations under ``torch.autocast``; native on CPUs
  with AVX-512-BF16 or AMX; the flags are recorded); the meta-gradient is *not* the loop's,
  see ``grad_vs_loop``.

Variants are timed in turns (one meta-iteration of each per round) so that a change in the
machine's load hits all alike; wall and CPU seconds, median over rounds after warm-up, with
the load averages. Peak memory: each variant runs a meta-iteration in its own process, which
reports the growth of its peak resident set size over the set-up. The meta-gradients of
``fast`` and ``loop`` are compared (max abs difference / gradient norm).

Allocator (``--allocator``): ``default`` is glibc as configured by the environment (e.g.
``THP_MEM_ALLOC_ENABLE=1``, recorded); ``keep`` calls ``mallopt`` first so that freed memory
stays in the process (no ``mmap`` blocks, no trimming): otherwise every 15 MB activation of a
task is faulted in and zeroed by the kernel again, which costs about a quarter of the fast
path's time here.

``--operators N``: where the time goes, without a profiler (whose own cost is charged to
small operators): each ATen call of one meta-iteration of the first variant named (run in the
calling thread: use a ``_1worker`` variant) is timed through a ``TorchDispatchMode``, and the
``N`` slowest (operator, input shape) pairs are recorded with their calls and milliseconds,
beside the total number of calls. Large kernels are timed exactly; each call also pays the
mode's few microseconds, so the total is above a plain iteration's.

Usage:
    python benchmarks/maml_speed.py [--rounds 3] [--warmup 1] [--threads 2] [--allocator keep]
        [--variants loop fast fast_1worker fast_grouped fast_compiled fast_bf16 ...]
        [--operators 25]

Writes ``benchmarks/results/maml_speed.json``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from lifelong.algorithms.inner_loop import Adaptation
from lifelong.algorithms.maml import MAML
from lifelong.data.episodes import EpisodeBatch
from lifelong.models.conv4 import Conv4
from lifelong.pipeline.allocator import keep_freed_memory
from lifelong.reproduce import machine

HERE = Path(__file__).resolve().parent
WAYS, SHOTS, META_BATCH = 5, 1, 32


@dataclass(frozen=True)
class Variant:
    """MAML options, and which task forward is compiled: ``"all"`` (support and query
    passes), ``"query"`` or none (``""``)."""

    options: dict[str, Any] = field(default_factory=dict)
    compiled: str = ""


VARIANTS = {
    "loop": Variant({"fast": False}),
    "fast": Variant(),
    "fast_1worker": Variant({"workers": 1}),
    "fast_chunk1": Variant({"task_chunk": 1}),
    "fast_per_step_bn": Variant({"per_step_bn": True}),
    "fast_grouped": Variant({"workers": 1, "task_chunk": META_BATCH}),
    "fast_compiled": Variant({"workers": 1}, compiled="all"),
    "fast_compiled_query": Variant({"workers": 1}, compiled="query"),
    "fast_bf16": Variant({"precision": "bfloat16"}),
    "fast_1worker_bf16": Variant({"workers": 1, "precision": "bfloat16"}),
}


@dataclass(frozen=True)
class Tasks:
    """The episodes timed: query images per class, and the Conv-4 (strided, as the paper's
    Omniglot network, or with max-pooling)."""

    queries: int
    strided: bool

    @property
    def flags(self) -> list[str]:
        """The command-line flags that give this setting."""
        return ["--queries", str(self.queries)] + (["--strided"] if self.strided else [])

    @property
    def network(self) -> str:
        return "strided" if self.strided else "max-pooling"


def setting(tasks: Tasks) -> tuple[Conv4, EpisodeBatch]:
    """The model and a fixed batch of random episodes (float images in [0, 1])."""
    g = torch.Generator().manual_seed(0)

    def part(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (META_BATCH, WAYS * per_class, 1, 28, 28)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        labels = torch.arange(WAYS).repeat_interleave(per_class).expand(META_BATCH, -1)
        return images, labels.contiguous()

    batch = EpisodeBatch(*part(SHOTS), *part(tasks.queries), WAYS, SHOTS).to("cpu")
    torch.manual_seed(0)
    model = Conv4(
        1, 28, out_features=WAYS, hidden=64, strided=tasks.strided, track_running_stats=False
    )
    return model, batch


def make_step(variant: str, first_order: bool, tasks: Tasks) -> tuple[MAML, Callable[[], None]]:
    model, batch = setting(tasks)
    how = VARIANTS[variant]
    maml = MAML(model, inner_lr=0.4, inner_steps=1, first_order=first_order, **how.options)
    if how.compiled == "all":
        maml.fast_forward = torch.compile(maml.fast_forward, dynamic=False)
    elif how.compiled == "query":
        compiled, adaptation = torch.compile(maml.fast_forward, dynamic=False), maml.adaptation

        def query_compiled(*args: Any, **kwargs: Any) -> Adaptation:
            return dataclasses.replace(adaptation(*args, **kwargs), predict=compiled)

        maml.adaptation = query_compiled  # type: ignore[method-assign]

    def step() -> None:
        maml.zero_grad(set_to_none=True)
        maml.meta_loss(batch).loss.backward()

    return maml, step


def split(name: str) -> tuple[str, bool]:
    """``"fast_1worker_2nd"`` -> ``("fast_1worker", False)`` (variant, first order)."""
    variant, order = name.rsplit("_", 1)
    return variant, order == "1st"


def grad_vs_loop(names: list[str], tasks: Tasks) -> dict[str, float | None]:
    """max |grad - grad_loop| / ||grad_loop|| of one meta-iteration of each variant."""
    out: dict[str, float | None] = {}
    reference: dict[bool, Tensor] = {}
    for name in names:
        variant, first_order = split(name)
        if first_order not in reference:
            maml, step = make_step("loop", first_order, tasks)
            step()
            reference[first_order] = torch.cat([p.grad.flatten() for p in maml.parameters()])
        try:
            maml, step = make_step(variant, first_order, tasks)
            step()
        except Exception:  # recorded by timings()
            out[name] = None
            continue
        if len(list(maml.parameters())) != len(list(maml.model.parameters())):
            out[name] = None  # meta-parameters beside the model's (per_step_bn): not the loop's
            continue
        grad = torch.cat([p.grad.flatten() for p in maml.parameters()])
        ref = reference[first_order]
        out[name] = float((grad - ref).abs().max() / ref.norm())
    return out


def timings(names: list[str], rounds: int, warmup: int, tasks: Tasks) -> dict:
    """Wall and CPU seconds per meta-iteration of each variant, timed in turns (the first
    call of each, e.g. a compilation, is timed apart as ``first_s``)."""
    steps, results = {}, {}
    for n in names:
        try:
            steps[n] = make_step(*split(n), tasks)[1]
            start = time.perf_counter()
            steps[n]()
            results[n] = {"first_s": round(time.perf_counter() - start, 3)}
        except Exception as error:
            message = str(error).strip().splitlines()[0][:300]
            results[n] = {"error": f"{type(error).__name__}: {message}"}
            steps.pop(n, None)
    wall: dict[str, list[float]] = {n: [] for n in steps}
    cpu: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(warmup + rounds):
        for n, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[n].append(time.perf_counter() - start)
            cpu[n].append(time.process_time() - start_cpu)
    for n in steps:
        results[n].update(
            median_s=round(statistics.median(wall[n][warmup:]), 3),
            min_s=round(min(wall[n][warmup:]), 3),
            cpu_median_s=round(statistics.median(cpu[n][warmup:]), 3),
            times_s=[round(t, 3) for t in wall[n][warmup:]],
        )
    return results


class _OperatorTimes(TorchDispatchMode):
    """Milliseconds and calls of each (operator, first input's shape) in its scope."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        first = args[0] if args and isinstance(args[0], Tensor) else None
        key = (str(func), str(list(first.shape)) if first is not None else "")
        self.ms[key] += (time.perf_counter() - start) * 1e3
        self.calls[key] += 1
        return out


def operator_times(name: str, tasks: Tasks, top: int) -> dict[str, Any]:
    """The ``top`` slowest (operator, shape) pairs of one meta-iteration of ``name`` (after a
    warm-up iteration), with the number of ATen calls and the iteration's time in the mode."""
    step = make_step(*split(name), tasks)[1]
    step()
    start = time.perf_counter()
    with _OperatorTimes() as times:
        step()
    wall = time.perf_counter() - start
    slowest = sorted(times.ms, key=times.ms.__getitem__, reverse=True)[:top]
    return {
        "variant": name,
        "seconds_in_mode": round(wall, 3),
        "aten_calls": sum(times.calls.values()),
        "slowest": [
            {
                "op": op,
                "shape": shape,
                "calls": times.calls[op, shape],
                "ms": round(times.ms[op, shape], 2),
            }
            for op, shape in slowest
        ],
    }


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` (Linux; unlike ``ru_maxrss``
    it does not carry over the parent's peak through fork and exec), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(name: str, tasks: Tasks) -> None:
    """Child process: print the growth of the peak RSS over the set-up, in MiB."""
    _, step = make_step(*split(name), tasks)
    before = peak_rss_mib()
    step()
    print(json.dumps({"peak_growth_mib": round(peak_rss_mib() - before, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed iterations of each variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--allocator", choices=("default", "keep"), default="default")
    parser.add_argument("--queries", type=int, default=15, help="query images per class")
    parser.add_argument(
        "--strided", action="store_true", help="the paper's Omniglot Conv-4: stride 2, no pooling"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["loop", "fast", "fast_1worker"]
    )
    parser.add_argument(
        "--operators", type=int, default=0, help="record the N slowest operators (module doc)"
    )
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "maml_speed.json")
    args = parser.parse_args()
    if args.allocator == "keep" and not keep_freed_memory():
        raise SystemExit(f"--allocator {args.allocator} needs glibc (Linux)")
    torch.set_num_threads(args.threads)
    tasks = Tasks(args.queries, args.strided)
    if args.memory_of:
        peak_memory(args.memory_of, tasks)
        return

    names = [f"{v}_{order}" for order in ("2nd", "1st") for v in args.variants]
    load_before = os.getloadavg()
    results = timings(names, args.rounds, args.warmup, tasks)
    load_after = os.getloadavg()
    for n in names:
        if "error" in results[n]:
            print(f"{n:18s} {results[n]['error']}")
            continue
        command = [sys.executable, __file__, "--memory-of", n, "--threads", str(args.threads)]
        command += ["--allocator", args.allocator, *tasks.flags]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[n].update(json.loads(out.strip().splitlines()[-1]))
    for n in (n for n in names if "error" not in results[n]):
        r = results[n]
        print(
            f"{n:18s} median {r['median_s']:7.3f} s  cpu {r['cpu_median_s']:7.3f} s  "
            f"peak +{r['peak_growth_mib']:.0f} MiB"
        )
    host = machine(torch.device("cpu"))
    report = {
        "benchmark": (
            f"MAML meta-iteration (meta_loss + backward), Omniglot 5-way 1-shot "
            f"{args.queries}-query, meta-batch 32, Conv-4 (64, "
            f"{tasks.network}), 28x28x1, 1 inner step; "
            "seconds, median over rounds"
        ),
        "queries": args.queries,
        "strided": args.strided,
        "cpu": host["cpu"],
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "load_note": "1/5/15-minute load averages; the 2 cores are shared with other users",
        "allocator": args.allocator,
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "cpu_flags": host["cpu_flags"],
        "grad_vs_loop_max_abs_over_norm": grad_vs_loop(names, tasks),
        "variants": results,
    }
    if args.operators:
        report["operators"] = operator_times(names[0], tasks, args.operators)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for n in names:
        variant, first_order = split(n)
        loop = results.get(f"loop_{'1st' if first_order else '2nd'}", {}).get("median_s")
        if loop and "median_s" in results[n] and variant != "loop":
            print(f"{n}: {loop / results[n]['median_s']:.2f}x the loop")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
