"""Class-indexed in-memory image datasets.

Every few-shot dataset in `lifelong` is a :class:`ClassDataset`: all images of all classes in
one contiguous ``uint8`` tensor ``[total, C, H, W]`` at model resolution, plus the number of
images of each class and its metadata. Class ``k`` occupies
``images[offsets[k] : offsets[k] + counts[k]]``, so an episode is index arithmetic and one gather
(see :mod:`lifelong.data.episodes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class ClassInfo:
    """Metadata of one class: its name, its group (e.g. the Omniglot alphabet) and, for rotation
    classes, the rotation in degrees applied to the source class."""

    name: str
    group: str = ""
    rotation: int = 0

    @property
    def label(self) -> str:
        return self.name if self.rotation == 0 else f"{self.name}@rot{self.rotation}"


class ClassDataset:
    """Images grouped by class, in memory, as one ``uint8`` tensor ``[total, C, H, W]``.

    Args:
        images: all images, class after class.
        counts: number of images of each class, in the same order.
        classes: one :class:`ClassInfo` per class.
        name: a human-readable name of the dataset and split (used in error messages),
            e.g. ``"omniglot/vinyals/test"``.

    Example:
        >>> ds = ClassDataset.from_class_tensors(
        ...     [torch.zeros(3, 1, 28, 28, dtype=torch.uint8)] * 2,
        ...     [ClassInfo("a"), ClassInfo("b")], name="toy")
        >>> len(ds), ds[1].shape
        (2, torch.Size([3, 1, 28, 28]))
    """

    def __init__(
        self,
        images: Tensor,
        counts: Sequence[int] | Tensor,
        classes: Sequence[ClassInfo],
        name: str = "dataset",
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"{name}: images must be a uint8 tensor [total, C, H, W], "
                f"got {images.dtype} of shape {tuple(images.shape)}"
            )
        counts_t = torch.as_tensor(counts, dtype=torch.long).reshape(-1)
        if len(classes) != len(counts_t):
            raise ValueError(f"{name}: {len(classes)} class infos for {len(counts_t)} classes")
        if bool((counts_t <= 0).any()):
            empty = [classes[i].label for i in torch.nonzero(counts_t <= 0).flatten().tolist()]
            raise ValueError(f"{name}: classes without images: {', '.join(empty[:5])}")
        if int(counts_t.sum()) != images.shape[0]:
            raise ValueError(
                f"{name}: class counts add up to {int(counts_t.sum())} "
                f"but there are {images.shape[0]} images"
            )
        self.images = images.contiguous()
        self.counts = counts_t
        self.offsets = torch.cumsum(counts_t, 0) - counts_t
        self.classes = list(classes)
        self.name = name

    @classmethod
    def from_class_tensors(
        cls, tensors: Sequence[Tensor], classes: Sequence[ClassInfo], name: str = "dataset"
    ) -> ClassDataset:
        """Build from one ``uint8 [n_k, C, H, W]`` tensor per class."""
        if not tensors:
            raise ValueError(f"{name}: no classes")
        return cls(torch.cat(list(tensors)), [t.shape[0] for t in tensors], classes, name)

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, k: int) -> Tensor:
        start = int(self.offsets[k])
        return self.images[start : start + int(self.counts[k])]

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ClassDataset({self.name!r}, classes={len(self)}, images={self.images.shape[0]}, "
            f"shape={c}x{h}x{w})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def min_count(self) -> int:
        return int(self.counts.min())

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def subset(self, indices: Sequence[int] | Tensor, name: str | None = None) -> ClassDataset:
        """The classes at ``indices`` (in that order) as a new dataset."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            raise ValueError(f"{self.name}: an empty subset of classes")
        counts = self.counts[idx]
        image_idx = torch.cat(
            [
                torch.arange(int(o), int(o) + int(n))
                for o, n in zip(self.offsets[idx], counts, strict=True)
            ]
        )
        return ClassDataset(
            self.images[image_idx],
            counts,
            [self.classes[i] for i in idx.tolist()],
            name or self.name,
        )

    def with_rotations(
        self, angles: Sequence[int] = ROTATIONS, name: str | None = None
    ) -> ClassDataset:
        """Each class rotated by each of ``angles`` (multiples of 90 degrees, counter-clockwise)
        as a new class, as in the Omniglot experiments of Santoro et al. 2016, Vinyals et al. 2016,
        Finn et al. 2017 and Snell et al. 2017. Classes come out class-major:
        ``(class 0, angle 0), (class 0, angle 90), ...``."""
        for a in angles:
            if a % 90 != 0:
                raise ValueError(f"rotations must be multiples of 90 degrees, got {a}")
        _, h, w = self.image_shape
        if h != w and any(a % 180 for a in angles):
            raise ValueError(
                f"{self.name}: rotating {h}x{w} images by 90 degrees changes their shape; "
                "rotation classes need square images"
            )
        pieces, infos = [], []
        for k, info in enumerate(self.classes):
            for a in angles:
                pieces.append(torch.rot90(self[k], k=(a // 90) % 4, dims=(2, 3)))
                infos.append(replace(info, rotation=(info.rotation + a) % 360))
        return ClassDataset.from_class_tensors(pieces, infos, name or self.name)


def split_indices(n: int, sizes: Sequence[int], seed: int) -> list[list[int]]:
    """A seeded random partition of ``range(n)`` into consecutive parts of the given sizes
    (``-1`` in the last place takes the rest)."""
    sizes = list(sizes)
    if sizes and sizes[-1] == -1:
        sizes[-1] = n - sum(sizes[:-1])
    if any(s < 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"cannot split {n} classes into parts of sizes {sizes}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    parts, start = [], 0
    for s in sizes:
        parts.append(sorted(order[start : start + s]))
        start += s
    return parts
