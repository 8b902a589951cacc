"""Prototypical Networks: prototypes, distances, the batched loss against a naive per-episode
loss, eval mode at test time, and learning an easy synthetic problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.algorithms.base import Algorithm
from lifelong.algorithms.distances import pairwise_distance
from lifelong.algorithms.embedding import eval_mode
from lifelong.algorithms.protonet import ProtoNet
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import EpisodeBatch, EpisodeSampler
from lifelong.models.conv4 import Conv4
from lifelong.models.mlp import MLP


def blocky_classes(classes: int, per_class: int, seed: int, size: int = 28) -> ClassDataset:
    """Each class a random 4x4 binary pattern of 7x7 blocks; each image that pattern plus
    strong Gaussian pixel noise."""
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for _ in range(classes):
        pattern = (torch.rand(4, 4, generator=g) < 0.5).float() - 0.5
        pattern = pattern.repeat_interleave(size // 4, 0).repeat_interleave(size // 4, 1)
        noise = torch.randn(per_class, 1, size, size, generator=g)
        tensors.append((128 + 80 * pattern + 100 * noise).clamp(0, 255).to(torch.uint8))
    infos = [ClassInfo(f"c{i}") for i in range(classes)]
    return ClassDataset.from_class_tensors(tensors, infos, name=f"blocky{seed}")


def shuffled_support(batch: EpisodeBatch, seed: int = 0) -> EpisodeBatch:
    """The same episodes with support examples in a random (not class-major) order."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(batch.support_y.shape[1], generator=g) for _ in batch])
    index = order.reshape(*order.shape, *([1] * (batch.support_x.dim() - 2)))
    return EpisodeBatch(
        batch.support_x.gather(1, index.expand_as(batch.support_x)),
        batch.support_y.gather(1, order),
        batch.query_x,
        batch.query_y,
        batch.ways,
        batch.shots,
        batch.classes,
    )


def naive_meta_loss(model: ProtoNet, batch: EpisodeBatch) -> torch.Tensor:
    """Episode by episode, two encoder calls each, class means by boolean masks, torch.cdist."""
    losses = []
    for episode in batch:
        support = model.encoder(episode.support_x)
        query = model.encoder(episode.query_x)
        prototypes = torch.stack(
            [support[episode.support_y == k].mean(0) for k in range(episode.ways)]
        )
        distances = torch.cdist(query, prototypes) ** 2
        losses.append(F.cross_entropy(-distances / model.temperature, episode.query_y))
    return torch.stack(losses).mean()


@pytest.fixture(scope="module")
def images() -> ClassDataset:
    return blocky_classes(12, 8, seed=3)


def test_prototypes_are_class_means() -> None:
    torch.manual_seed(0)
    z, labels = torch.randn(3, 11, 6), torch.randint(0, 4, (3, 11))
    labels[:, :4] = torch.arange(4)  # every class present
    prototypes = ProtoNet.prototypes(z, labels, 4)
    assert prototypes.shape == (3, 4, 6)
    for b in range(3):
        for k in range(4):
            torch.testing.assert_close(prototypes[b, k], z[b][labels[b] == k].mean(0))
    torch.testing.assert_close(ProtoNet.prototypes(z[1], labels[1], 4), prototypes[1])


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 1, 2, 5]), r"0\.\.3"),
        (torch.tensor([0, 1, 1, -1]), r"0\.\.3"),
        (torch.tensor([0, 1, 1, 3]), "without support examples"),
        (torch.tensor([0, 1, 2]), "do not match"),
    ],
)
def test_prototypes_reject_bad_labels(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProtoNet.prototypes(torch.randn(4, 3), labels, ways=4)


def test_distances() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(2, 30, 8), torch.randn(2, 5, 8)
    cdist = torch.cdist(a, b)
    torch.testing.assert_close(pairwise_distance(a, b), cdist**2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pairwise_distance(a, b, "euclidean"), cdist)
    lp = (a.unsqueeze(-2) - b.unsqueeze(-3)).abs().pow(3).sum(-1).pow(1 / 3)
    torch.testing.assert_close(pairwise_distance(a, b, "lp", p=3.0), lp)
    cosine = 1 - F.cosine_similarity(a.unsqueeze(-2), b.unsqueeze(-3), dim=-1)
    torch.testing.assert_close(pairwise_distance(a, b, "cosine"), cosine)


def test_sqeuclidean_is_never_negative() -> None:
    a = torch.randn(50, 16) * 1e3
    d = pairwise_distance(a, a)
    assert bool((d >= 0).all())
    assert float(d.diagonal().max()) < 1e-3 * float(d.max())


def test_distances_stay_float32_under_autocast() -> None:
    a, b = torch.randn(20, 8) + 30, torch.randn(4, 8) + 30
    with torch.autocast("cpu", torch.bfloat16):
        d = pairwise_distance(a, b)
        prototypes = ProtoNet.prototypes(a.bfloat16(), torch.arange(20) % 4, 4)
    assert d.dtype == prototypes.dtype == torch.float32
    torch.testing.assert_close(d, pairwise_distance(a, b))


def test_mixed_precision_encoder(images: ClassDataset) -> None:
    """``precision="bfloat16"`` runs the convolutions in bfloat16, the rest in float32; with
    the default, an autocast region opened by the caller stays in force."""
    torch.manual_seed(0)
    batch = EpisodeSampler(images, ways=4, shots=2, queries=2, seed=0).sample(2).to("cpu")
    model = ProtoNet(Conv4(1, 28, hidden=8)).eval()
    conv_dtypes = []
    model.encoder.features[0][0].register_forward_hook(
        lambda module, args, out: conv_dtypes.append(out.dtype)
    )
    x = batch.query_x[0]
    with torch.no_grad():
        full, full_z = model.batch_logits(batch), model.embed(x)
        model.precision = "bfloat16"
        mixed, mixed_z = model.batch_logits(batch), model.embed(x)
        model.precision = "float32"
        with torch.autocast("cpu", torch.bfloat16):
            outer = model.batch_logits(batch)
    assert conv_dtypes == [torch.float32] * 2 + [torch.bfloat16] * 3
    assert full.dtype == mixed.dtype == outer.dtype == mixed_z.dtype == torch.float32
    torch.testing.assert_close(mixed_z, full_z, rtol=0, atol=0.02 * float(full_z.abs().max()))
    torch.testing.assert_close(outer, mixed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "int8"}, "unknown precision"),
        ({"distance": "manhattan"}, "unknown distance"),
        ({"distance": "lp", "p": 0.0}, "p > 0"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProtoNet(nn.Flatten(), **kwargs)


@pytest.mark.parametrize("channels_last", [True, False])
def test_batched_meta_loss_matches_naive(images: ClassDataset, channels_last: bool) -> None:
    """Eval-mode batch norm makes each image's embedding independent of its batch, so the one
    forward over 3 episodes must give the naive per-episode loss and gradient."""
    torch.manual_seed(0)
    batch = EpisodeSampler(images, ways=4, shots=2, queries=3, seed=0).sample(3).to("cpu")
    batch = shuffled_support(batch)
    model = ProtoNet(Conv4(1, 28, hidden=8), temperature=2.0, channels_last=channels_last)
    model.eval()
    out = model.meta_loss(batch)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    naive = naive_meta_loss(model, batch)
    naive_grads = torch.autograd.grad(naive, list(model.parameters()))
    torch.testing.assert_close(out.loss, naive, rtol=1e-5, atol=1e-6)
    for g, n in zip(grads, naive_grads, strict=True):
        torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-6)
    accuracy = (model.batch_logits(batch).argmax(-1) == batch.query_y).float().mean()
    assert float(out.metric) == pytest.approx(float(accuracy))


def test_batched_meta_loss_matches_naive_in_train_mode(images: ClassDataset) -> None:
    torch.manual_seed(0)
    batch = EpisodeSampler(images, ways=5, shots=3, queries=2, seed=1).sample(2).to("cpu")
    model = ProtoNet(MLP(28 * 28, (32, 16), out_features=None))
    torch.testing.assert_close(
        model.meta_loss(shuffled_support(batch)).loss, naive_meta_loss(model, batch)
    )


def test_embed_prefers_encoder_embed() -> None:
    with_head = ProtoNet(Conv4(1, 28, out_features=7, hidden=8))
    assert with_head.embed(torch.rand(3, 1, 28, 28)).shape == (3, 8)
    plain = ProtoNet(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    assert plain.embed(torch.rand(3, 1, 28, 28)).shape == (3, 2 * 26 * 26)


def test_adapt_and_evaluate_use_eval_mode(images: ClassDataset) -> None:
    torch.manual_seed(0)
    model = ProtoNet(Conv4(1, 28, hidden=8))
    model.encoder.features[1].eval()  # a submodule in its own mode must keep it
    modes = {name: m.training for name, m in model.named_modules()}
    running = model.encoder.features[0][1].running_mean.clone()
    batch = EpisodeSampler(images, ways=3, shots=2, queries=2, seed=2).sample(2).to("cpu")
    episode = batch[0]

    predict = model.adapt(episode.support_x, episode.support_y, episode.ways)
    logits = predict(episode.query_x)
    accuracy = model.evaluate(batch)

    assert {name: m.training for name, m in model.named_modules()} == modes
    torch.testing.assert_close(model.encoder.features[0][1].running_mean, running)
    with eval_mode(model), torch.no_grad():
        prototypes = model.prototypes(model.embed(episode.support_x), episode.support_y, 3)
        expected = -pairwise_distance(model.embed(episode.query_x), prototypes)
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (episode.query_x.shape[0], 3)
    torch.testing.assert_close(accuracy, Algorithm.evaluate(model, batch))
    assert accuracy.shape == (2,)


def test_learns_easy_problem_and_tests_on_other_ways() -> None:
    """Trained on 10-way episodes of some classes, tested on 5-way 1-shot episodes of new
    classes: accuracy goes from near chance (0.2) to high in 30 steps."""
    torch.manual_seed(0)
    train, test = blocky_classes(40, 10, seed=0), blocky_classes(10, 10, seed=1)
    model = ProtoNet(Conv4(1, 28, hidden=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sampler = EpisodeSampler(train, ways=10, shots=2, queries=3, seed=0)
    evaluation = next(EpisodeSampler(test, 5, 1, 5, seed=0).fixed(20, seed=1).batches(20))
    evaluation = evaluation.to("cpu")
    before = float(model.evaluate(evaluation).mean())
    for _ in range(30):
        out = model.meta_loss(sampler.sample(2).to("cpu"))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = float(model.evaluate(evaluation).mean())
    assert before < 0.5
    assert after > 0.85, f"accuracy {after:.3f} (before training {before:.3f})"
