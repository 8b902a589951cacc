"""Omniglot loading cost: first load (empty cache: decode 32,460 PNGs), cached load, and the
memory of the tensors.

Usage:
    python benchmarks/omniglot_load.py [--root DIR] [--repeats 3]

Writes ``benchmarks/results/omniglot_load.json``. The cache is a fresh temporary folder, so the
first load always decodes; cached loads are timed in the same process (warm OS file cache),
which is what a second run of a training script sees.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import PIL
import torch

from lifelong.data.cache import cache_entries
from lifelong.data.omniglot import load_omniglot

HERE = Path(__file__).resolve().parent


def timed(**kwargs) -> tuple[float, dict]:
    start = time.perf_counter()
    splits = load_omniglot(**kwargs)
    return time.perf_counter() - start, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parents[1] / "shared/data/omniglot")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results/omniglot_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        options = {"root": args.root, "image_size": args.image_size, "cache_dir": cache}
        first, splits = timed(**options)
        cached = [timed(**options)[0] for _ in range(args.repeats)]
        no_rotations = [timed(**options, rotations=False)[0] for _ in range(args.repeats)]
        on_disk = sum(e.bytes for e in cache_entries(cache) if e.kind == "tensors")

    result = {
        "benchmark": "omniglot_load",
        "settings": {"class_split": "vinyals", "rotations": True, "image_size": args.image_size},
        "first_load_s": round(first, 2),
        "cached_load_s_median": round(statistics.median(cached), 3),
        "cached_load_s_all": [round(t, 3) for t in cached],
        "cached_load_no_rotations_s_median": round(statistics.median(no_rotations), 3),
        "splits": {
            name: {"classes": len(ds), "images": int(ds.images.shape[0]), "bytes": ds.nbytes}
            for name, ds in splits.items()
        },
        "tensor_bytes_total": sum(ds.nbytes for ds in splits.values()),
        "cache_bytes_on_disk": on_disk,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
