"""ResNet-12: the residual backbone of modern few-shot learning.

Oreshkin et al. 2018 (TADAM), Lee et al. 2019 (MetaOptNet), Tian et al. 2020 (RFS): four
residual blocks, each three 3x3 convolutions with batch norm and LeakyReLU(0.1) (the third
without activation), a 1x1 convolution + batch norm shortcut, LeakyReLU after the sum and a
2x2 max-pool; widths 64-160-320-640; global average pooling gives a 640-d embedding
(84x84: 84 -> 42 -> 21 -> 10 -> 5 -> 1). DropBlock regularisation (MetaOptNet) is not
included.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

NEGATIVE_SLOPE = 0.1


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, track_running_stats: bool
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
    ]


class ResidualBlock(nn.Module):
    """``pool(act(body(x) + shortcut(x)))``: body = 3 x [3x3 conv, BN] with LeakyReLU between;
    shortcut = 1x1 conv + BN."""

    def __init__(self, in_channels: int, out_channels: int, track_running_stats: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(in_channels, out_channels, 3, track_running_stats),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            *conv_bn(out_channels, out_channels, 3, track_running_stats),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            *conv_bn(out_channels, out_channels, 3, track_running_stats),
        )
        self.shortcut = nn.Sequential(*conv_bn(in_channels, out_channels, 1, track_running_stats))
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12 backbone with an optional linear head (the interface of
    :class:`lifelong.models.conv4.Conv4`).

    Args:
        in_channels: image channels (3 for miniImageNet, 1 for Omniglot).
        image_size: image height = width (at least 16: four 2x2 poolings).
        out_features: classes of the linear head; ``None`` for an embedding network.
        track_running_stats: ``False`` makes batch norm always use the batch's statistics
            (MAML-style, transductive); ``True`` is ordinary batch norm.
        channels: widths of the four blocks.

    Example:
        >>> net = ResNet12(3, 84)
        >>> net(torch.rand(2, 3, 84, 84)).shape
        torch.Size([2, 640])
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 84,
        out_features: int | None = None,
        track_running_stats: bool = True,
        channels: Sequence[int] = (64, 160, 320, 640),
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(
                f"ResNet12 pools 4 times by 2: image_size must be >= 16, got {image_size}"
            )
        if len(channels) != 4:
            raise ValueError(f"ResNet12 has 4 blocks, got channels {tuple(channels)}")
        widths = (in_channels, *channels)
        self.features = nn.Sequential(
            *(ResidualBlock(widths[i], widths[i + 1], track_running_stats) for i in range(4))
        )
        self.embedding_dim = channels[-1]
        self.head = None if out_features is None else nn.Linear(self.embedding_dim, out_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, a=NEGATIVE_SLOPE, mode="fan_out", nonlinearity="leaky_relu"
                )

    def embed(self, x: Tensor) -> Tensor:
        """Globally average-pooled features ``[n, embedding_dim]``."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return h if self.head is None else self.head(h)
