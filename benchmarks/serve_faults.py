"""`lifelong serve` under mixed load on loopback while it is killed with -9 and restarted.

The run and the store of ``serve_load.py`` (a Conv-4 ProtoNet on strokes; 5 classes of 5
images taught first), served by ``python -m lifelong serve`` (one uvicorn worker,
``OMP_NUM_THREADS=1``) on 127.0.0.1. ``--clients`` threads (one ``httpx`` client each) send
for ``--seconds`` a fixed mix per client: ``GET /classes``, ``POST /predict`` (one 28x28
PNG), ``GET /classes``, ``POST /predict``, ``POST /examples`` (one new, distinct 28x28 PNG to
class ``load``). ``--kills`` times, at even intervals, the server is killed with SIGKILL while
requests are in flight and started again on the same store (a new port, which the clients
follow); a client whose request fails to connect waits 50 ms and goes on with its next one.

Reported: completed requests per second and latency percentiles per kind (200 answers only),
every other status per kind, connection errors during the kill windows (from a kill until the
restarted server answers) and outside them, each server's peak resident memory (``VmHWM``), and
the examples whose ``POST /examples`` was answered 200 against those the store holds after
the last restart (listed by the last server, then read from the file, after an integrity
check): none may be lost. The clients share the machine with the server; the load average
before and after is recorded.

Usage:
    python benchmarks/serve_faults.py [--seconds 60] [--clients 8] [--kills 3]

Writes ``benchmarks/results/serve_faults.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path

import httpx
from serve_load import machine, train_run

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from test_serve import png, serving, uploads  # noqa: E402
from test_store import stroke_images  # noqa: E402

from lifelong.store import ClassStore  # noqa: E402

MIX = ("classes", "predict", "classes", "predict", "examples")
"""The requests of each client, in turn (starting at its own place)."""


class Load:
    """What the clients saw, and the server they talk to (``url``; ``down`` from a kill until
    the restarted server answers)."""

    def __init__(self, url: str) -> None:
        self.url, self.down = url, False
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[str] = Counter()
        self.connection_errors = Counter({"during_kills": 0, "otherwise": 0})
        self.acknowledged: set[str] = set()
        self.lock = threading.Lock()

    def client(self, worker: int, deadline: float, query: bytes) -> None:
        """Requests in the order of ``MIX`` until ``deadline`` (``time.monotonic``)."""
        with httpx.Client(timeout=30) as http:
            for i in range(10**7):
                if time.monotonic() >= deadline:
                    return
                kind, url = MIX[(worker + i) % len(MIX)], self.url
                image = png(10**7 * worker + i) if kind == "examples" else query
                began = time.perf_counter()
                try:
                    response = send(http, url, kind, image)
                except httpx.TransportError:
                    during = self.down or url != self.url
                    with self.lock:
                        self.connection_errors["during_kills" if during else "otherwise"] += 1
                    time.sleep(0.05)
                    continue
                took = time.perf_counter() - began
                with self.lock:
                    if response.status_code != 200:
                        self.statuses[f"{kind} {response.status_code}"] += 1
                        continue
                    self.latencies[kind].append(took)
                    if kind == "examples":
                        self.acknowledged.add(hashlib.sha256(image).hexdigest())


def send(http: httpx.Client, url: str, kind: str, image: bytes) -> httpx.Response:
    """One request of ``kind`` (see ``MIX``)."""
    if kind == "classes":
        return http.get(f"{url}/classes")
    files = uploads([("q.png", image)])
    if kind == "predict":
        return http.post(f"{url}/predict", files=files)
    return http.post(f"{url}/examples", data={"class_name": "load"}, files=files)


def peak_memory_mb(pid: int) -> float:
    """A process's peak resident memory (``VmHWM``), in MB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return round(kib / 1024, 1)


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """The 50th, 95th and 99th percentiles of ``seconds``, in ms."""
    q = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else [float("nan")] * 99
    return {f"p{p}": round(1e3 * q[p - 1], 1) for p in (50, 95, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_faults.json")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    load_before = os.getloadavg()
    servers: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as running:
        folder = Path(tmp)
        run = train_run(folder / "run")
        images = stroke_images(folder / "images", classes=5)
        store, log = folder / "s.db", folder / "log"
        url, process = running.enter_context(serving(store, log, "--run", run))
        for name, paths in images.items():
            files = uploads([(p.name, p.read_bytes()) for p in paths[:5]])
            response = httpx.post(
                f"{url}/examples", data={"class_name": name}, files=files, timeout=60
            )
            response.raise_for_status()
        load, start = Load(url), time.monotonic()
        query = images["class0"][5].read_bytes()
        threads = [
            threading.Thread(target=load.client, args=(w, start + args.seconds, query))
            for w in range(args.clients)
        ]
        for t in threads:
            t.start()
        for k in range(1, args.kills + 1):
            time.sleep(max(0.0, start + args.seconds * k / (args.kills + 1) - time.monotonic()))
            servers.append({"peak_memory_mb": peak_memory_mb(process.pid)})
            load.down, killed = True, time.monotonic()
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            url, process = running.enter_context(serving(store, log))
            load.url, load.down = url, False
            servers[-1] |= {
                "killed_at_s": round(killed - start, 2),
                "restarted_in_s": round(time.monotonic() - killed, 2),
            }
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        servers.append({"peak_memory_mb": peak_memory_mb(process.pid)})
        listed = {c["name"]: c["examples"] for c in httpx.get(f"{url}/classes").json()["classes"]}
        running.close()  # the last server stops
        with ClassStore.open(store) as db:
            integrity = db.integrity()
            stored = {e[1].sha256 for e in db.examples() if e[0] == "load"}
    found = len(load.acknowledged & stored)
    kinds = {
        kind: {
            "ok": len(seconds),
            "per_second": round(len(seconds) / wall, 1),
            "latency_ms": latency_ms(seconds),
        }
        for kind, seconds in sorted(load.latencies.items())
    }
    ok = sum(k["ok"] for k in kinds.values())
    result = {
        "machine": machine(load_before),
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "kills": args.kills,
            "mix_per_client": list(MIX),
            "server": "python -m lifelong serve (one uvicorn worker), OMP_NUM_THREADS=1",
            "model": "ProtoNet, Conv-4 with 64 filters, 28x28x1 images",
            "store": f"{len(images)} classes x 5 examples before the load",
        },
        "seconds": round(wall, 2),
        "requests_per_second": round(ok / wall, 1),
        "requests": kinds,
        "errors": {
            "by_status": dict(sorted(load.statuses.items())),
            "connection_errors": dict(load.connection_errors),
        },
        "servers": servers,
        "writes": {
            "acknowledged": len(load.acknowledged),
            "found_after_last_restart": found,
            "lost": len(load.acknowledged) - found,
            "stored": len(stored),
            "listed_by_last_server": listed.get("load", 0),
            "integrity": integrity,
        },
        "command": "python " + " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if result["writes"]["lost"] or integrity != "ok" or load.connection_errors["otherwise"]:
        sys.exit("acknowledged writes were lost, the store is damaged or the server failed")


if __name__ == "__main__":
    main()
