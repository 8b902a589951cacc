"""Seeded image augmentations written with torch ops (there is no torchvision here).

One random affine map per image (integer shift, rotation, scale: a random crop and resize is a
scale below 1 with a shift) and an optional smooth random displacement (elastic distortion,
Simard et al. 2003), sampled with one ``grid_sample``; then strokes made thicker or thinner
(a 3 x 3 grey-scale dilation or erosion, as different pens draw them), then random pixel
dropout. Every
random number comes from the generator passed in, so a run that is resumed from its sampler's
state draws exactly the augmentations it would have drawn. Images stay ``uint8``
``[n, C, H, W]``; what moves in from outside the image is 0 (the dark background of Omniglot
and strokes; zero padding for colour images).

Used by the task constructions of learning without labels (:mod:`lifelong.unlabeled`) and,
with a run's ``augment`` option, on the training episodes of labelled meta-training.

Example:
    >>> augment = Augmentation(shift=6, dropout=0.1)      # UMTRA's Omniglot setting
    >>> views = augment(images, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Augmentation:
    """A random view of each image.

    Args:
        shift: largest translation in pixels along each axis (whole pixels, uniform).
        rotate: largest rotation in degrees (uniform in ``[-rotate, rotate]``).
        scale: smallest zoom factor of the content; each image is zoomed by a factor uniform
            in ``[scale, 1/scale]`` (1: none). Below 1 the view shows a smaller part of the
            image enlarged, or the whole image shrunk.
        dropout: probability of setting each pixel to 0 (all channels).
        elastic: largest displacement in pixels of a smooth random field (a 4 x 4 grid of
            uniform displacements, upsampled bicubically); 0: none.
        stroke: probability of changing the strokes' width: dilated with ``stroke / 2``,
            eroded with ``stroke / 2`` (ink is bright on a dark background).
    """

    shift: float = 0.0
    rotate: float = 0.0
    scale: float = 1.0
    dropout: float = 0.0
    elastic: float = 0.0
    stroke: float = 0.0

    def __post_init__(self) -> None:
        for name in ("shift", "rotate", "elastic"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"augmentation `{name}` must be 0 or more, got {value}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"augmentation `scale` must be in (0, 1], got {self.scale}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"augmentation `dropout` must be in [0, 1), got {self.dropout}")
        if not 0 <= self.stroke <= 1:
            raise ValueError(f"augmentation `stroke` must be in [0, 1], got {self.stroke}")

    @classmethod
    def options(cls, **paper: float) -> dict[str, float]:
        """Every field with its default, ``paper``'s values over them: the augmentation options
        of a task construction."""
        return {**{f.name: f.default for f in fields(cls)}, **paper}

    @classmethod
    def of(cls, settings: Mapping[str, float | str]) -> Augmentation:
        """The augmentation of a construction's ``settings`` (the keys that are fields)."""
        return cls(**{f.name: float(settings[f.name]) for f in fields(cls)})

    @classmethod
    def parse(cls, given: Mapping[str, object]) -> Augmentation:
        """The augmentation of user options ``given`` (e.g. a run's ``augment``: ``{shift:
        2, rotate: 10}``), the others at their defaults; a one-line ``ValueError`` names an
        unknown key or a value that is not a number."""
        names = [f.name for f in fields(cls)]
        values = {}
        for key, value in given.items():
            if key not in names:
                known = ", ".join(names)
                raise ValueError(f"`augment` has no option {key!r}; its options: {known}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"`augment` {key} must be a number, got {value!r}")
            values[key] = float(value)
        return cls(**values)

    @property
    def geometric(self) -> bool:
        return self.shift > 0 or self.rotate > 0 or self.scale < 1 or self.elastic > 0

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """A random view of each of ``images`` (``uint8 [n, C, H, W]``)."""
        n, _, height, width = images.shape
        out = images
        if self.geometric:
            out = self._affine(images, generator)
        if self.stroke > 0:
            out = self._stroke(out, generator)
        if self.dropout > 0:
            keep = torch.rand(n, 1, height, width, generator=generator) >= self.dropout
            out = out * keep
        return out

    def _affine(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        shifts = torch.randint(
            -int(self.shift), int(self.shift) + 1, (n, 2), generator=generator
        ).float()
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(self.rotate)
        log_scale = (torch.rand(n, generator=generator) * 2 - 1) * math.log(1 / self.scale)
        zoom = torch.exp(-log_scale)  # grid coordinates shrink when the content is enlarged
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        # affine_grid maps output to input coordinates in [-1, 1]: a pixel is 2/size wide
        theta = torch.stack(
            [
                torch.stack([cos, -sin, -2 * shifts[:, 0] / width], dim=1),
                torch.stack([sin, cos, -2 * shifts[:, 1] / height], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
        if self.elastic > 0:  # pixels to grid units: 2 / size
            coarse = (torch.rand(n, 2, 4, 4, generator=generator) * 2 - 1) * self.elastic
            field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
            scale = torch.tensor([2 / width, 2 / height]).view(1, 1, 1, 2)
            grid = grid + field.permute(0, 2, 3, 1) * scale
        exact = self.rotate == 0 and self.scale == 1 and self.elastic == 0  # whole-pixel shifts
        moved = F.grid_sample(
            images.float(), grid, mode="nearest" if exact else "bilinear", align_corners=False
        )
        return moved.round_().clamp_(0, 255).to(torch.uint8)

    def _stroke(self, images: Tensor, generator: torch.Generator) -> Tensor:
        x = images.float()
        dilated = F.max_pool2d(x, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
        choice = torch.rand(x.shape[0], 1, 1, 1, generator=generator)
        half = self.stroke / 2
        out = torch.where(choice < half, dilated, torch.where(choice < 2 * half, eroded, x))
        return out.to(torch.uint8)
