"""What OML's published setting would cost on this machine: seconds per meta-update.

The reference network of OML on Omniglot (Javed & White 2019; github.com/khurramjaved96/mrcl,
also the OML of Beaulieu et al. 2020, whose rerun gives the 18.2% at 600 classes): a
representation of six 3x3 convolutions of 256 filters without padding (strides 1, 1, 1, 2, 1,
2; ReLU, no batch norm) on 28x28 images, 3x3x256 = 2304 features, and a prediction network
2304 -> 1024 -> classes. One meta-update: a trajectory of 20 images of one class learned by
SGD one image at a time on the prediction network (second order through the 20 steps), and
the outer loss on those images and a remember set of 64 others. It is timed here with the
library's :class:`~lifelong.algorithms.oml.OML` (its inner loop, reset and outer loss) on
random images, against the same meta-update with the config's network
(``configs/continual-omniglot-oml.yaml``: Conv-4 with the last block unpooled, 576 features,
one linear layer). The cost of the published budget is this times its number of meta-updates
(``--updates``, 20,000 as in the ANML reference command).

Usage:
    python benchmarks/oml_paper_cost.py [--threads 1] [--rounds 3] [--updates 20000]

Writes ``benchmarks/results/oml_paper_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lifelong.algorithms.oml import OML
from lifelong.data.episodes import EpisodeBatch
from lifelong.models.conv4 import Conv4
from lifelong.reproduce import machine

HERE = Path(__file__).resolve().parent
CLASSES = 963  # the reference code's meta-training classes
TRAJECTORY, REMEMBER = 20, 64


class ReferenceRepresentation(nn.Sequential):
    """The reference OML representation: six unpadded 256-filter convolutions, 2304 features."""

    embedding_dim = 2304

    def __init__(self, filters: int = 256) -> None:
        layers: list[nn.Module] = []
        for i, stride in enumerate((1, 1, 1, 2, 1, 2)):
            layers += [nn.Conv2d(1 if i == 0 else filters, filters, 3, stride), nn.ReLU()]
        super().__init__(*layers, nn.Flatten())


def batch() -> EpisodeBatch:
    """One trajectory (20 images of class 0) and 64 outer-loss images, as uint8 28x28."""
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (1, n, 1, 28, 28), dtype=torch.uint8, generator=g)

    zeros = torch.zeros(1, TRAJECTORY, dtype=torch.long)
    return EpisodeBatch(
        images(TRAJECTORY),
        zeros,
        images(REMEMBER),
        torch.zeros(1, REMEMBER, dtype=torch.long),
        ways=1,
        shots=TRAJECTORY,
        classes=torch.zeros(1, 1, dtype=torch.long),
    ).to("cpu")


def seconds_per_update(oml: OML, rounds: int) -> list[float]:
    """Wall seconds of ``meta_loss`` + ``backward`` + Adam, one warm-up first."""
    optimizer = torch.optim.Adam(oml.parameters(), lr=1e-4)
    data, times = batch(), []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        oml.meta_loss(data).loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "oml_paper_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    networks = {
        "reference (6 x 256-filter convs, 2304 features, PLN 2304-1024-963)": OML(
            ReferenceRepresentation(), CLASSES, prediction_hidden=(1024,), remember=0
        ),
        "config (Conv-4, pooling 3, 576 features, linear PLN)": OML(
            Conv4(1, 28, pooling=3), CLASSES, remember=0
        ),
    }
    results = {}
    for name, oml in networks.items():
        times = seconds_per_update(oml, args.rounds)
        median = statistics.median(times)
        results[name] = {
            "seconds_per_update": round(median, 3),
            "times_s": [round(t, 3) for t in times],
            "hours_for_updates": round(median * args.updates / 3600, 1),
        }
        print(
            f"{name}: {median:.2f} s per meta-update, {args.updates} updates: "
            f"{median * args.updates / 3600:.1f} h",
            flush=True,
        )
    report = {
        "benchmark": (
            "OML meta-update (trajectory of 20 images learned one at a time, second order; "
            "outer loss on them and 64 more; Adam), random 28x28 images"
        ),
        "cpu": machine(torch.device("cpu"))["cpu"],
        "threads": args.threads,
        "load": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "updates": args.updates,
        "networks": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
