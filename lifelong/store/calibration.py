"""The open-set threshold: how far from every class an image must be to be "unknown".

A class model (:mod:`lifelong.continual.classifiers`) always names the most likely class, even
for an image of a class it was never taught. :func:`calibrate` sets a threshold on the model's
*energy* (minus its class score: for the nearest mean, Snell et al. 2017, the distance to the
prototype in the run's units; for the Gaussian models, minus the log-likelihood) on classes
the run never trained on, its **validation classes**, in the regime a store is used in (a few
examples per class):

1. draw up to ``max_classes`` validation classes; for each, ``shots`` random examples teach a
   fresh class model and up to ``queries`` other examples are held out;
2. the energy of each held-out example to *its own* class is one that a genuine image of a
   known class has; the threshold is their ``quantile`` (default 0.95): about 5% of genuine
   images are then answered "unknown";
3. for the record, the same held-out examples measure the other side: the energy to the
   nearest *other* class is what an image of a class the store does not know has, and
   ``unknown_rejected`` is the share of those beyond the threshold.

Users can override the threshold per request.

Example:
    >>> calibration = calibrate(lambda k: NearestMean(protonet.embed, k), splits["val"])
    >>> calibration.threshold, calibration.unknown_rejected
    (41.7, 0.83)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lifelong.continual.classifiers.base import ClassModel
from lifelong.data.classes import ClassDataset

REPORTED_QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Calibration:
    """The threshold and what it was measured on (see the module doc).

    ``own_distance``: quantiles of the held-out examples' energies to their own class;
    ``known_accepted`` / ``unknown_rejected``: shares of held-out examples within the
    threshold of their own class / beyond it from every other class; ``accuracy``: the class
    model's accuracy among the calibration classes.
    """

    split: str
    classes: int
    shots: int
    queries: int
    quantile: float
    threshold: float
    own_distance: dict[str, float]
    known_accepted: float
    unknown_rejected: float
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def calibrate(
    model: Callable[[int], ClassModel],
    dataset: ClassDataset,
    quantile: float = 0.95,
    shots: int = 5,
    queries: int = 15,
    max_classes: int = 200,
    seed: int = 0,
    split: str = "val",
) -> Calibration:
    """Calibrate the unknown threshold of the class models ``model(num_classes)`` on
    ``dataset`` (classes the run did not train on); a class with ``n`` images uses ``min(shots,
    n - 1)`` of them as support."""
    if not 0 < quantile <= 1:
        raise ValueError(f"the calibration quantile must lie in (0, 1], got {quantile}")
    if len(dataset) < 2 or dataset.min_count < 2:
        raise ValueError(
            f"calibration needs 2 classes of 2 images or more; {dataset.name} has "
            f"{len(dataset)} classes of at least {dataset.min_count} images"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(dataset), generator=generator)[:max_classes].tolist()
    shots = max(1, min(shots, dataset.min_count - 1))
    support, held_out, labels = [], [], []
    for label, k in enumerate(chosen):
        images = dataset[k]
        order = torch.randperm(len(images), generator=generator)
        support.append(images[order[:shots]])
        held_out.append(images[order[shots : shots + queries]])
        labels += [label] * len(held_out[-1])
    learner = model(len(chosen))
    learner.observe(
        torch.cat(support).float() / 255, torch.arange(len(chosen)).repeat_interleave(shots)
    )
    y = torch.tensor(labels)
    logits = learner.predict(torch.cat(held_out).float() / 255)
    d = learner.energies(logits).double()
    own = d[torch.arange(len(y)), y]
    others = d.scatter(1, y[:, None], float("inf")).amin(1)
    threshold = float(torch.quantile(own, quantile))
    return Calibration(
        split=split,
        classes=len(chosen),
        shots=shots,
        queries=len(y),
        quantile=quantile,
        threshold=threshold,
        own_distance={str(q): float(torch.quantile(own, q)) for q in REPORTED_QUANTILES},
        known_accepted=float((own <= threshold).double().mean()),
        unknown_rejected=float((others > threshold).double().mean()),
        accuracy=float((logits.argmax(1) == y).double().mean()),
    )
