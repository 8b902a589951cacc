"""Strokes: procedural handwritten-like characters, the offline default dataset.

Each class is a random character: 2 to 5 pen strokes, each a cubic Bezier curve (a straight
line being the special case of collinear control points), often starting on an earlier stroke.
Each image of a class redraws that character the way a person would, in the spirit of the
Omniglot generative model (Lake et al. 2015, "Human-level concept learning through
probabilistic program induction"): motor noise on every control point, an affine jitter
(rotation, scale, shear, translation) and a random pen width, rendered anti-aliased at model
resolution with ink = 1 (``uint8`` 255 on a 0 background), like Omniglot after scaling.

Classes are unlimited and deterministic: class ``k`` ("stroke-0042") and its images depend only
on ``seed``, ``k``, ``per_class`` and ``image_size``, not on how many classes are made.
Rendering splats densely sampled stroke points into the canvas in one vectorised ``max``
reduction: 1200 classes of 20 images take about 4 seconds on one (shared, busy) core.

Example:
    >>> splits = load_strokes(classes=1200, per_class=20, seed=0)
    >>> splits["train"], splits["test"].classes[0]
    (ClassDataset('strokes/train', classes=960, images=19200, shape=1x28x28),
     ClassInfo(name='stroke-1080', group='strokes', rotation=0))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lifelong.data.classes import ClassDataset, ClassInfo

SPLITS = ("train", "val", "test")
MAX_STROKES = 5
RENDER_CHUNK = 1024
"""Images rendered at a time: bounds the memory of the splats (about 40 MB)."""


@dataclass(frozen=True)
class StrokeStyle:
    """The randomness of the Strokes generator. Lengths are in canvas units (the canvas spans
    ``[-1, 1]``), angles in degrees, pen widths in pixels.

    With the defaults a nearest-centroid classifier on raw pixels gets about 58% of 5-way 1-shot
    and 34% of 20-way 1-shot test queries right (chance: 20% and 5%), and a character rarely
    touches the border (3% of the images at 28x28 pixels).
    """

    extent: float = 1.1
    motor_noise: float = 0.1
    rotation: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear: float = 0.2
    translation: float = 0.12
    width: tuple[float, float] = (1.3, 2.6)


def _character(rng: np.random.Generator, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """A random character: control points ``[MAX_STROKES, 4, 2]`` (unused strokes zero) and the
    mask of its strokes ``[MAX_STROKES]``, centred, its longer side ``extent`` long."""
    n = int(rng.integers(2, MAX_STROKES + 1))
    control = np.zeros((MAX_STROKES, 4, 2))
    for s in range(n):
        if s > 0 and rng.random() < 0.6:  # start on an earlier stroke, as pens often do
            t = rng.choice([0.0, 1.0, rng.random()])
            start = _bezier(control[rng.integers(s)], t)
        else:
            start = rng.uniform(-0.7, 0.7, 2)
        angle = rng.uniform(0, 2 * math.pi)
        end = start + rng.uniform(0.5, 1.3) * np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-math.sin(angle), math.cos(angle)]) * np.linalg.norm(end - start)
        bend = 0.0 if rng.random() < 0.35 else 1.0  # straight line or curve
        offsets = bend * rng.uniform(-0.6, 0.6, (2, 1)) * normal
        inner = start + np.array([[1 / 3], [2 / 3]]) * (end - start) + offsets
        control[s] = np.stack([start, inner[0], inner[1], end])
    used = control[:n].reshape(-1, 2)
    low, high = used.min(0), used.max(0)
    control[:n] = (control[:n] - (low + high) / 2) * (extent / max(float((high - low).max()), 0.5))
    return control, np.arange(MAX_STROKES) < n


def _bezier(control: np.ndarray, t: float) -> np.ndarray:
    """The point at parameter ``t`` of the cubic Bezier curve ``control [4, 2]``."""
    u = 1 - t
    return np.array([u**3, 3 * u**2 * t, 3 * u * t**2, t**3]) @ control


def _instances(
    rng: np.random.Generator, control: np.ndarray, n: int, style: StrokeStyle
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy redrawings of one character: control points ``[n, MAX_STROKES, 4, 2]`` after
    motor noise and an affine jitter, and pen widths ``[n]``."""
    points = control + rng.normal(0, style.motor_noise, (n, *control.shape))
    theta = np.radians(rng.uniform(-style.rotation, style.rotation, n))
    scale = rng.uniform(*style.scale, (n, 2))
    shear = rng.uniform(-style.shear, style.shear, n)
    cos, sin = np.cos(theta), np.sin(theta)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_scale = np.zeros((n, 2, 2))
    shear_scale[:, 0, 0], shear_scale[:, 0, 1] = scale[:, 0], shear * scale[:, 1]
    shear_scale[:, 1, 1] = scale[:, 1]
    affine = rotate @ shear_scale  # [n, 2, 2]
    shift = rng.uniform(-style.translation, style.translation, (n, 1, 1, 2))
    points = np.einsum("nij,nskj->nski", affine, points) + shift
    return points, rng.uniform(*style.width, n)


def render(control: Tensor, mask: Tensor, width: Tensor, size: int, spacing: float = 0.5) -> Tensor:
    """Anti-aliased images ``[n, 1, size, size]`` (``uint8``, ink 255) of strokes.

    Args:
        control: cubic Bezier control points ``[n, S, 4, 2]`` as ``(x, y)`` in ``[-1, 1]``
            (``y`` grows downwards).
        mask: which strokes to draw, ``[n, S]``.
        width: pen width of each image in pixels, ``[n]``; up to 3 pixels are drawn exactly.
        size: image height and width in pixels.
        spacing: the most pixels between consecutive points sampled along a stroke.

    A pixel's ink is ``clamp(width / 2 + 0.5 - d, 0, 1)`` with ``d`` its distance to the nearest
    point sampled along the strokes (within ``spacing / 2`` of the distance to the curve): each
    point is splatted onto the 6x6 pixels around it and overlapping splats are merged with
    ``max``. A stroke gets as many points as the length of its control polygon (a bound on the
    curve's length) needs.

    Example:
        >>> line = torch.tensor([[[[-0.5, 0.0], [0.0, 0.0], [0.2, 0.0], [0.5, 0.0]]]])
        >>> render(line, torch.tensor([[True]]), torch.tensor([2.0]), 28).shape
        torch.Size([1, 1, 28, 28])
    """
    n = mask.shape[0]
    pad = 4  # a splat reaches 2 pixels before and 3 after a point's clamped floor
    side = size + 2 * pad
    image, stroke = mask.nonzero(as_tuple=True)
    curves = (control[image, stroke] + 1) * (size / 2) - 0.5  # [M, 4, 2], pixel centres at ints
    length = (curves[:, 1:] - curves[:, :-1]).norm(dim=-1).sum(-1)
    counts = (length / spacing).ceil().long().clamp_(min=1) + 1
    curve = torch.arange(len(counts)).repeat_interleave(counts)
    t = torch.arange(len(curve)) - (counts.cumsum(0) - counts)[curve]
    t = (t / (counts[curve] - 1)).to(control.dtype)
    u = 1 - t
    basis = torch.stack([u**3, 3 * u**2 * t, 3 * u * t**2, t**3], -1)  # Bernstein, [P, 4]
    points = torch.einsum("pk,pkd->dp", basis, curves[curve])  # [2, P]
    image = image[curve]
    corner = points.floor().clamp_(-2, size - 1)
    offsets = torch.arange(-2, 4, dtype=points.dtype)
    dx, dy = (corner[:, None] + offsets[:, None] - points[:, None]).square_()  # [6, P] each
    radius = width[image] / 2 + 0.5
    ink = radius - (dy[:, None] + dx[None, :]).sqrt_()  # [6, 6, P]: row, column offset
    corner = corner.long() + pad
    base = image * side * side + corner[1] * side + corner[0]
    pattern = offsets.long()[:, None] * side + offsets.long()
    canvas = torch.zeros(n * side * side, dtype=ink.dtype)
    index = (pattern[..., None] + base).reshape(-1)
    canvas.scatter_reduce_(0, index, ink.clamp_(0, 1).reshape(-1), reduce="amax")
    canvas = canvas.reshape(n, 1, side, side)[..., pad : pad + size, pad : pad + size]
    return canvas.mul(255).round_().to(torch.uint8)


def _split_sizes(
    classes: int | Mapping[str, int], fractions: tuple[float, float, float]
) -> dict[str, int]:
    """The number of classes of each split."""
    counts = classes.values() if isinstance(classes, Mapping) else [classes]
    if not all(_whole(n) for n in counts):
        raise ValueError(
            "classes must be a number of classes or one per split, e.g. "
            f"{{train: 20, val: 8, test: 8}}; got {classes!r}"
        )
    if not isinstance(fractions, list | tuple) or not all(
        isinstance(f, int | float) and not isinstance(f, bool) for f in fractions
    ):
        raise ValueError(f"fractions must be 3 non-negative numbers, got {fractions!r}")
    if isinstance(classes, Mapping):
        unknown = sorted(set(classes) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown splits {unknown}; the splits are {SPLITS}")
        sizes = {name: int(classes.get(name, 0)) for name in SPLITS}
        negative = {name: n for name, n in sizes.items() if n < 0}
        if negative:
            raise ValueError(f"cannot make splits of a negative number of classes: {negative}")
        if sum(sizes.values()) < 1:
            raise ValueError(f"cannot make splits of no classes: {dict(classes)}")
        return sizes
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be 3 non-negative numbers, got {fractions}")
    if classes < 1:
        raise ValueError(f"cannot make splits of {classes} classes: give at least 1")
    train = round(classes * fractions[0] / sum(fractions))
    val = min(round(classes * fractions[1] / sum(fractions)), classes - train)  # both rounded up
    return {"train": train, "val": val, "test": classes - train - val}


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_strokes(
    classes: int | Mapping[str, int] = 1200,
    per_class: int = 20,
    image_size: int = 28,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    style: StrokeStyle | None = None,
) -> dict[str, ClassDataset]:
    """Generate the Strokes dataset: disjoint ``"train"``, ``"val"`` and ``"test"`` splits.

    Args:
        classes: the total number of classes, split by ``fractions``; or the number of classes
            of each split, e.g. ``{"train": 1000, "val": 100, "test": 100}`` (a split left out is
            not returned, nor is a split of no classes).
        per_class: images per class.
        image_size: height and width in pixels.
        seed: everything is a function of the seed: the same seed gives identical tensors.
        fractions: train/val/test shares of ``classes`` when it is a number.
        style: the amount of noise (default :class:`StrokeStyle`).

    Classes are numbered globally, the train classes first: ``stroke-0000`` ... Each split's
    classes are the next block of the same infinite sequence of characters.

    Example:
        >>> splits = load_strokes({"train": 64, "test": 16}, per_class=20, seed=3)
        >>> sampler = EpisodeSampler(splits["train"], ways=5, shots=1, queries=15)
    """
    for name, value in (("per_class", per_class), ("image_size", image_size), ("seed", seed)):
        if not _whole(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    if per_class < 1 or image_size < 4:
        raise ValueError(
            f"per_class must be >= 1 and image_size >= 4, got {per_class} and {image_size}"
        )
    if style is not None and not isinstance(style, StrokeStyle):
        raise ValueError(f"style must be a StrokeStyle (from Python), got {style!r}")
    sizes = _split_sizes(classes, fractions)
    style = style or StrokeStyle()
    total = sum(sizes.values())
    control = np.empty((total, per_class, MAX_STROKES, 4, 2))
    mask = np.empty((total, MAX_STROKES), dtype=bool)
    width = np.empty((total, per_class))
    for k in range(total):
        rng = np.random.default_rng([seed, k])
        prototype, mask[k] = _character(rng, style.extent)
        control[k], width[k] = _instances(rng, prototype, per_class, style)
    chunks = zip(
        torch.from_numpy(control).float().flatten(0, 1).split(RENDER_CHUNK),
        torch.from_numpy(mask).repeat_interleave(per_class, 0).split(RENDER_CHUNK),
        torch.from_numpy(width).float().flatten().split(RENDER_CHUNK),
        strict=True,
    )
    images = torch.cat([render(c, m, w, image_size) for c, m, w in chunks])
    digits = max(4, len(str(total - 1)))
    infos = [ClassInfo(f"stroke-{k:0{digits}d}", group="strokes") for k in range(total)]
    splits, start = {}, 0
    for name, size in sizes.items():
        if size > 0:
            stop = start + size
            splits[name] = ClassDataset(
                images[start * per_class : stop * per_class],
                [per_class] * size,
                infos[start:stop],
                name=f"strokes/{name}",
            )
            start = stop
    return splits
