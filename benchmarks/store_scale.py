"""The class store at scale: cost of adding a class and of recognising an image at 1k, 10k
and 100k classes, for every class model.

Embeddings go through the store's own API (:meth:`ClassStore.add`, one write transaction
fsync'ed per class, as ``lifelong learn`` and ``POST /examples`` do; each example with its
784-byte image, as an Omniglot store keeps them). Recognition is what a request does after the
image is embedded (:func:`lifelong.store.recognizer.store_model`: read the statistics, fit the
class model, score every class): the embedding network's own cost (about a millisecond per
28x28 image for Conv-4 on this CPU) is left out, since it does not grow with the classes.

Classes are synthetic: a random 64-d centre each (the Conv-4 embedding's size) and 5 examples
around it. Reported at each size: milliseconds per added class (median over the last
``--probe`` adds), milliseconds to recognise a batch of 1 and of 16 images (median of 5), the
process's peak RSS and the store file's size. Recognition is timed twice: the first after a
write (the statistics read and the model fitted), and with the fitted model kept (what a
:class:`~lifelong.store.recognizer.Recognizer` does until the store's generation changes).

Usage:
    python benchmarks/store_scale.py [--sizes 1000 10000 100000] [--classifiers mean slda]

Writes ``benchmarks/results/store_scale.json`` (after every size).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lifelong.continual.classifiers.base import ClassModel
from lifelong.continual.classifiers.registry import classifier_class, classifier_names
from lifelong.store.db import ClassStore, ExampleFile
from lifelong.store.recognizer import store_model

HERE = Path(__file__).resolve().parent
DIM, SHOTS, IMAGE = 64, 5, bytes(784)


def identity(z: torch.Tensor) -> torch.Tensor:
    return z


def config_of(name: str) -> dict:
    """The class model's config with its defaults (CL2N: a zero feature mean)."""
    cls = classifier_class(name)
    extra = {"feature_mean": [0.0] * DIM} if cls.needs_training else {}
    model: ClassModel = cls(identity, 1, **extra)
    return model.config()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 3)


def measure(name: str, sizes: list[int], probe: int, folder: Path) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    meta = {"embedding_dim": DIM, "image_shape": [1, 28, 28], "classifier": config_of(name)}
    rows = []
    with ClassStore.create(folder / f"{name}.db", meta) as store:
        added, times = 0, []
        for size in sizes:
            while added < size:
                centre = torch.randn(1, DIM, generator=generator)
                z = centre + 0.3 * torch.randn(SHOTS, DIM, generator=generator)
                files = [
                    ExampleFile(f"{added}-{i}", f"{added:09d}{i:055d}", IMAGE) for i in range(SHOTS)
                ]
                started = time.perf_counter()
                store.add(f"class {added}", z, files)
                if added >= size - probe:
                    times.append(time.perf_counter() - started)
                added += 1
            after_write, cached = {}, {}
            for batch in (1, 16):
                queries = torch.randn(batch, DIM, generator=generator)
                fresh, kept = [], []
                for _ in range(5):
                    started = time.perf_counter()
                    _, model = store_model(store, identity)
                    model.predict(queries).argmax(-1)
                    fresh.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    model.predict(queries).argmax(-1)
                    kept.append(time.perf_counter() - started)
                after_write[str(batch)], cached[str(batch)] = median_ms(fresh), median_ms(kept)
            row = {
                "classifier": name,
                "classes": size,
                "add_class_ms": median_ms(times[-probe:]),
                "recognise_after_write_ms": after_write,
                "recognise_cached_ms": cached,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "store_mb": round((folder / f"{name}.db").stat().st_size / 1e6, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--classifiers", nargs="+", default=["mean"], choices=classifier_names())
    parser.add_argument("--probe", type=int, default=200, help="adds timed at each size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "store_scale.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "benchmark": "store_scale",
        "machine": {"cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads},
        "dim": DIM,
        "examples_per_class": SHOTS,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        for name in args.classifiers:
            report["rows"] += measure(name, sorted(args.sizes), args.probe, Path(folder))
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
