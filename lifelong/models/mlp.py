"""Fully connected networks of the MAML paper (Finn et al. 2017).

Sinusoid regression (section 5.1): 1-40-40-1 with ReLU. Omniglot MLP (section 5.2): hidden
layers 256-128-64-64, each with batch norm and ReLU, on flattened images.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """A multilayer perceptron on flattened inputs.

    Args:
        in_features: input size (1 for sinusoids, 784 for 28x28 images).
        hidden: widths of the hidden layers.
        out_features: output size; ``None`` makes the last hidden layer the output (embedding).
        batch_norm: batch norm before each ReLU (the MAML Omniglot MLP).
        track_running_stats: as in :class:`lifelong.models.conv4.Conv4`.

    Example:
        >>> MLP(1, (40, 40), 1)  # the MAML sinusoid network
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (40, 40),
        out_features: int | None = 1,
        batch_norm: bool = False,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h, track_running_stats=track_running_stats))
            layers.append(nn.ReLU())
            width = h
        self.features = nn.Sequential(*layers)
        self.embedding_dim = width
        self.head = None if out_features is None else nn.Linear(width, out_features)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return h if self.head is None else self.head(h)
