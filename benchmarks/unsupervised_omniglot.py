"""Few-shot Omniglot without labels: runs meta-trained on unlabeled images beside the
supervised ceiling, on the same test protocol, and their accuracy against training time.

Each ``--run NAME=RUN_DIR`` is tested on 1000 fixed episodes (mean ± 95% CI; the same episodes
for every run) of the run's test split at 5-way 1-shot, 5-way 5-shot, 20-way 1-shot and
20-way 5-shot, 15 queries per class. The plot shows each run's validation accuracy (its
``metrics.csv``) against minutes of training, with the published unsupervised figures as
lines. Published figures (Omniglot; each paper's own split, not ours: CACTUs and UMTRA meta-
train on 1100 characters and test on 423 others without rotations, Hsu et al. 2019 Table 1,
Khodadadeh et al. 2019 Table 2):

    CACTUs-MAML 68.84 / 87.78 / 48.09 / 73.36, CACTUs-ProtoNets 68.12 / 83.58 / 47.75 / 66.27,
    UMTRA 83.80 / 95.43 / 74.25 / 92.12  (5w1s / 5w5s / 20w1s / 20w5s)

Usage:
    python benchmarks/unsupervised_omniglot.py --data-root ../shared/data/omniglot \\
        --run umtra=runs/uns-umtra --run supervised=runs/pn-omniglot

Writes ``benchmarks/results/unsupervised_omniglot.json`` (after every run) and ``.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lifelong.pipeline.config import RunConfig
from lifelong.pipeline.evaluate import evaluate_run
from lifelong.reproduce import machine, validation_curve

SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
PUBLISHED = {
    "CACTUs-MAML (Hsu et al. 2019)": (68.84, 87.78, 48.09, 73.36),
    "CACTUs-ProtoNets (Hsu et al. 2019)": (68.12, 83.58, 47.75, 66.27),
    "UMTRA (Khodadadeh et al. 2019)": (83.80, 95.43, 74.25, 92.12),
}


def trained_minutes(run_dir: Path) -> float | None:
    with (run_dir / "metrics.csv").open(newline="") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds")]
    return max(seconds) / 60 if seconds else None


def measure(
    name: str, run_dir: Path, args: argparse.Namespace, save: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """The run's four test results and its curve, ``save``d after every result."""
    config = RunConfig.from_yaml(run_dir / "config.yaml")
    results: dict[str, Any] = {}
    record = {
        "name": name,
        "run": str(run_dir),
        "labels": config.labels,
        "task_construction": config.task_construction,
        "task_options": config.task_options,
        "algorithm": config.algorithm,
        "episode": f"{config.ways}-way {config.shots}-shot {config.queries}-query",
        "class_split": config.class_split,
        "checkpoint": args.checkpoint,
        "minutes": trained_minutes(run_dir),
        "results": results,
        "curve": [(t / 60, 100 * v) for t, v in validation_curve(run_dir)],  # minutes, %
    }
    for ways, shots in SETTINGS:
        result = evaluate_run(
            run_dir, ways=ways, shots=shots, queries=15, episodes=args.episodes,
            data_root=args.data_root, checkpoint=args.checkpoint, device="cpu",
        )  # fmt: skip
        results[f"{ways}w{shots}s"] = {"mean": 100 * result.mean, "ci95": 100 * result.ci95}
        print(f"{name} {ways}-way {shots}-shot: {100 * result.mean:.2f} ± {100 * result.ci95:.2f}")
        save(record)
    return record


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for record in records:
        if record["curve"]:
            minutes, accuracy = zip(*record["curve"], strict=True)
            label = f"{record['name']} ({'no labels' if record['labels'] == 'none' else 'labels'})"
            ax.plot(minutes, accuracy, marker=".", label=label)
    for (name, values), style in zip(PUBLISHED.items(), (":", "-.", "--"), strict=True):
        ax.axhline(
            values[0], color="grey", linestyle=style, linewidth=1, label=f"{name}: {values[0]}"
        )
    ax.set_xlabel("minutes of meta-training (this machine)")
    ax.set_ylabel("validation accuracy, %")
    ax.set_title("Omniglot without labels: validation accuracy against training time")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--out", default="benchmarks/results/unsupervised_omniglot")
    parser.add_argument(
        "--merge", action="store_true", help="Keep the other runs of an existing --out report."
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "protocol": "1000 fixed test episodes per setting, 15 queries per class, mean ± 95% CI",
        "published": {k: dict(zip(("5w1s", "5w5s", "20w1s", "20w5s"), v, strict=True))
                      for k, v in PUBLISHED.items()},
        "machine": {**machine(torch.device("cpu")), "python": platform.python_version()},
        "runs": [],
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    if args.merge and path.exists():  # keep the runs measured before, unless measured again
        names = {item.partition("=")[0] for item in args.run}
        report["runs"] = [r for r in json.loads(path.read_text())["runs"] if r["name"] not in names]
    done = list(report["runs"])
    for item in args.run:
        name, _, run = item.partition("=")

        def save(record: dict[str, Any]) -> None:
            report["runs"] = [*done, record]
            path.write_text(json.dumps(report, indent=1) + "\n")

        done.append(measure(name, Path(run), args, save))
    plot(report["runs"], out.with_suffix(".png"))


if __name__ == "__main__":
    main()
