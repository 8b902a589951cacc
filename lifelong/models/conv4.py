"""Conv-4: the four-block convolutional backbone of few-shot learning.

Vinyals et al. 2016 (Matching Networks), Finn et al. 2017 (MAML, section 5.2) and Snell et al.
2017 (Prototypical Networks): 4 x [3x3 conv, ``hidden`` filters, batch norm, ReLU, 2x2
max-pool]. Options give MAML's Omniglot variant (stride-2 convolutions instead of pooling,
features averaged over space), its miniImageNet variant (32 filters), and fewer pooled blocks
(``pooling=3`` on 28 x 28 Omniglot: a 3 x 3 x 64 = 576-d embedding for the cost of the 64-d
one, the last convolution's output kept whole).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_block(
    in_channels: int, out_channels: int, strided: bool, track_running_stats: bool, pool: bool
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, stride=2 if strided else 1, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.ReLU(),
    ]
    if pool and not strided:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Conv-4 backbone with an optional linear head.

    Args:
        in_channels: image channels (1 for Omniglot, 3 for miniImageNet).
        image_size: image height = width, to size the head.
        out_features: classes of the linear head; ``None`` for an embedding network (ProtoNet).
        hidden: filters per block (64; 32 in MAML's miniImageNet model).
        strided: MAML's Omniglot variant: stride-2 convolutions, no pooling, spatial mean.
        pooling: how many blocks, from the first, end in max-pooling (4).
        track_running_stats: ``False`` makes batch norm always use the batch's statistics, as
            MAML does (per-task statistics, transductive); ``True`` is ordinary batch norm.

    Example:
        >>> net = Conv4(1, 28, out_features=5, track_running_stats=False)
        >>> net(torch.rand(10, 1, 28, 28)).shape
        torch.Size([10, 5])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        out_features: int | None = None,
        hidden: int = 64,
        strided: bool = False,
        track_running_stats: bool = True,
        pooling: int = 4,
    ) -> None:
        super().__init__()
        self.strided = strided
        self.features = nn.Sequential(
            *(
                conv_block(
                    in_channels if i == 0 else hidden,
                    hidden,
                    strided,
                    track_running_stats,
                    pool=i < pooling,
                )
                for i in range(4)
            )
        )
        with torch.no_grad():
            was_training = self.features.training
            self.features.eval() if track_running_stats else None
            dummy = self.embed(torch.zeros(2, in_channels, image_size, image_size))
            self.features.train(was_training)
        self.embedding_dim = dummy.shape[1]
        self.head = None if out_features is None else nn.Linear(self.embedding_dim, out_features)

    def embed(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return h.mean(dim=(2, 3)) if self.strided else h.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return h if self.head is None else self.head(h)
