"""CL2N: nearest mean of centred, L2-normalised features (Wang et al. 2019, "SimpleShot:
Revisiting Nearest-Neighbor Classification for Few-Shot Learning", section 3.2).

Each embedding is centred by the mean feature ``m`` of the meta-training images and scaled to
unit length, ``phi(z) = (z - m) / ||z - m||``; classes are then the nearest mean of these
features under the squared Euclidean distance. ``m`` is a fixed part of the model (kept in
its :meth:`~CL2N.config`, e.g. in a class store), so the statistics stay exact sums.

Example:
    >>> m = feature_mean(protonet.embed, splits["train"])
    >>> model = CL2N(protonet.embed, num_classes=600, feature_mean=m)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lifelong.continual.classifiers.mean import NearestMean

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm
    from lifelong.data.classes import ClassDataset

MEAN_IMAGES = 4096
"""Meta-training images that :func:`feature_mean` averages (a seeded sample)."""


@torch.no_grad()
def feature_mean(
    embed: Callable[[Tensor], Tensor], dataset: ClassDataset, images: int = MEAN_IMAGES
) -> Tensor:
    """The mean embedding ``float64 [D]`` of up to ``images`` images of ``dataset`` (the
    run's meta-training split), a seeded sample, 256 at a time."""
    total = dataset.images.shape[0]
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:images]
    x = dataset.images[pick.sort().values]
    return torch.cat([embed(part.float() / 255).double() for part in x.split(256)]).mean(0)


class CL2N(NearestMean):
    """Nearest mean of centred, L2-normalised features (see the module doc).

    Args:
        embed, num_classes, chunk: as :class:`ClassModel`.
        feature_mean: ``m``, the meta-training mean embedding ``[D]`` (:func:`feature_mean`).
        temperature: logits are ``-||phi(z) - c_k||^2 / temperature`` (distances lie in
            ``[0, 4]``; the temperature only sharpens the probabilities).
    """

    name = "cl2n"
    needs_training = True
    summary = "nearest mean after centring and L2 normalisation (SimpleShot, Wang et al. 2019)"

    def __init__(
        self,
        embed: Callable[[Tensor], Tensor],
        num_classes: int,
        feature_mean: Tensor | Sequence[float],
        temperature: float = 0.1,
        chunk: int = 1024,
        **options: float,
    ) -> None:
        super().__init__(embed, num_classes, "sqeuclidean", 2.0, temperature, chunk, **options)
        self.mean = torch.as_tensor(feature_mean, dtype=torch.float64).flatten()

    @classmethod
    def from_run(
        cls,
        algorithm: Algorithm,
        num_classes: int,
        training: ClassDataset | None,
        options: dict[str, float],
    ) -> CL2N:
        """Centred by the mean embedding of the run's meta-training split ``training``."""
        if training is None:
            raise ValueError(
                "the cl2n classifier centres features by the mean of the run's meta-training "
                "images, but the run's data could not be loaded (give --data-root)"
            )
        embed = algorithm.embedding()
        return cls(embed, num_classes, feature_mean(embed, training), **options)

    def config(self) -> dict[str, Any]:
        config = {**super().config(), "feature_mean": self.mean.tolist()}
        for key in ("distance", "p"):
            del config[key]
        return config

    def features(self, z: Tensor) -> Tensor:
        return F.normalize(z.double() - self.mean.to(z.device), dim=-1)
