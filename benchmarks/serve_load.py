"""`lifelong serve` under load on loopback, and the kill -9 crash test as a figure.

A ProtoNet with the standard Conv-4 (64 filters, 28x28 grayscale, a 64-d embedding) is
trained for a few iterations on strokes (speed does not depend on its accuracy), a store is
taught 5 classes of 5 images, and a real server (``python -m lifelong serve``, one uvicorn
worker, ``OMP_NUM_THREADS`` as given) is loaded by ``--clients`` concurrent HTTP clients
(threads with one keep-alive ``httpx`` connection each, in this process) for ``--seconds``
per phase:

- ``predict``: ``POST /predict`` with one 28x28 PNG (decode, preprocess, embed, distances to
  every prototype, read from SQLite per request);
- ``add``: ``POST /examples`` with one new (distinct) 28x28 PNG to one class (embed, one
  write transaction, fsync'ed before the response).

Reported: requests per second (completed requests / wall time), latency percentiles, errors.
Then the crash test of ``tests/test_serve.py`` (the same code): ``--rounds`` times, a server
is started, ``3`` clients add distinct images to one class, and the server is killed with
SIGKILL after 3 to 12 acknowledged writes while requests are in flight; the store is then
reopened and the acknowledged examples are looked up.

The clients share the machine with the server (2 cores here), so the figures are a lower
bound for a server with cores of its own; the load average before and after is recorded.

Usage:
    python benchmarks/serve_load.py [--seconds 20] [--clients 4] [--rounds 10] [--threads 1]

Writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from protonet_speed import cpu_model  # noqa: E402
from test_serve import crash_rounds, png, serving, uploads  # noqa: E402
from test_store import CLASSES, stroke_images  # noqa: E402


def machine(load_before: tuple[float, float, float]) -> dict:
    """The CPU, its cores and the load average before and now."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def train_run(out: Path) -> Path:
    """A Conv-4 (64 filters) ProtoNet on strokes, a few iterations."""
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.train import train

    config = RunConfig(
        algorithm="protonet", dataset="strokes",
        dataset_options={"classes": CLASSES, "per_class": 6},
        ways=5, shots=1, queries=1, meta_batch=2, iterations=4, val_every=4, val_episodes=4,
        checkpoint_every=4, device="cpu", out=str(out),
    )  # fmt: skip
    train(config, progress=False)
    return out


def phase(url: str, clients: int, seconds: float, request) -> dict:
    """``clients`` threads send ``request(client, i)`` until ``seconds`` have passed."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def loop(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(10**9):
                if time.perf_counter() >= deadline:
                    return
                began = time.perf_counter()
                response = request(client, worker, i)
                took = time.perf_counter() - began
                with lock:
                    if response.status_code == 200:
                        latencies.append(took)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": round(wall, 2),
        "requests_per_second": round(len(latencies) / wall, 1),
        "latency_ms": {"p50": round(1e3 * q[49], 1), "p95": round(1e3 * q[94], 1),
                       "p99": round(1e3 * q[98], 1)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per load phase")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10, help="kill -9 rounds")
    parser.add_argument("--threads", type=int, default=1, help="the server's OMP_NUM_THREADS")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = train_run(folder / "run")
        images = stroke_images(folder / "images", classes=5)
        query = images["class0"][5].read_bytes()
        with serving(folder / "s.db", folder / "log", "--run", run) as (url, _):
            with httpx.Client(base_url=url, timeout=60) as client:
                for name, paths in images.items():
                    files = uploads([(p.name, p.read_bytes()) for p in paths[:5]])
                    client.post("/examples", data={"class_name": name}, files=files)
                health = client.get("/health").json()
            predict = phase(
                url, args.clients, args.seconds,
                lambda c, w, i: c.post("/predict", files=uploads([("q.png", query)])),
            )  # fmt: skip
            add = phase(
                url, args.clients, args.seconds,
                lambda c, w, i: c.post(
                    "/examples", data={"class_name": "load"},
                    files=uploads([(f"{w}-{i}.png", png(10**6 * w + i))]),
                ),
            )  # fmt: skip
        acknowledged, found = crash_rounds(run, folder, rounds=args.rounds)
    result = {
        "machine": machine(load_before),
        "settings": {
            "clients": args.clients,
            "seconds_per_phase": args.seconds,
            "server": "python -m lifelong serve (one uvicorn worker), "
            f"OMP_NUM_THREADS={args.threads}",
            "model": "ProtoNet, Conv-4 with 64 filters, 28x28x1 images",
            "store": f"{len(images)} classes x 5 examples before the add phase",
            "weights": health["fingerprint"][:12],
        },
        "predict_one_image": predict,
        "add_one_example": add,
        "crash": {
            "rounds": args.rounds,
            "clients": 3,
            "acknowledged": acknowledged,
            "found_after_restart": found,
            "lost": acknowledged - found,
        },
        "command": "python " + " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
