"""ResNet-12: shapes at both image sizes, the Conv4 interface, and a training step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.algorithms.protonet import ProtoNet
from lifelong.models.resnet12 import ResNet12

SMALL = (8, 12, 16, 20)


@pytest.mark.parametrize(("in_channels", "size"), [(3, 84), (1, 28)])
def test_shapes(in_channels: int, size: int) -> None:
    net = ResNet12(in_channels, size).eval()
    x = torch.rand(2, in_channels, size, size)
    with torch.no_grad():
        assert net(x).shape == (2, 640)
        assert net.embed(x).shape == (2, 640)
    assert net.embedding_dim == 640
    assert net.head is None
    assert sum(isinstance(m, nn.Conv2d) for m in net.features.modules()) == 16  # 12 + 4 shortcuts


def test_head_and_batch_norm_options() -> None:
    net = ResNet12(1, 28, out_features=5, track_running_stats=False, channels=SMALL)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    assert net.embedding_dim == 20
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 16
    assert all(m.running_mean is None for m in norms)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"image_size": 12}, ">= 16"), ({"channels": (64, 160, 320)}, "4 blocks")],
)
def test_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResNet12(3, **kwargs)


def test_trains_a_step() -> None:
    torch.manual_seed(0)
    net = ResNet12(3, 32, out_features=4, channels=SMALL)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(4).repeat(2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in net.parameters())
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
    with torch.no_grad():
        assert F.cross_entropy(net(x), y) < loss


def test_serves_as_protonet_encoder() -> None:
    model = ProtoNet(ResNet12(1, 28, channels=SMALL))
    support, labels = torch.rand(6, 1, 28, 28), torch.arange(3).repeat(2)
    assert model.prototypes(model.embed(support), labels, 3).shape == (3, 20)
    logits = model.adapt(support, labels, 3)(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 3)
    assert bool((logits <= 0).all())
