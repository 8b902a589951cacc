"""The transfer baseline: pre-training on global class ids, per-task linear heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong.algorithms.base import Algorithm
from lifelong.algorithms.finetune import FineTune, fit_linear_head, linear_head
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import EpisodeBatch, EpisodeSampler
from lifelong.models.conv4 import Conv4
from lifelong.models.mlp import MLP


@pytest.fixture(scope="module")
def dataset() -> ClassDataset:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randint(0, 256, (6, 1, 28, 28), generator=g, dtype=torch.uint8)] * 9
    return ClassDataset.from_class_tensors(
        tensors, [ClassInfo(f"c{i}") for i in range(9)], name="toy"
    )


def gaussian_clusters(ways: int, per_class: int, seed: int, dim: int = 16) -> tuple:
    """Well separated clusters: labels ``[per_class*ways]`` and points around fixed means."""
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(ways, dim, generator=torch.Generator().manual_seed(42))
    labels = torch.arange(ways).repeat(per_class)
    return means[labels] + 0.3 * torch.randn(len(labels), dim, generator=g), labels


def test_meta_loss_uses_global_class_ids(dataset: ClassDataset) -> None:
    torch.manual_seed(0)
    batch = EpisodeSampler(dataset, ways=3, shots=2, queries=1, seed=0).sample(2).to("cpu")
    model = FineTune(MLP(28 * 28, (16,), out_features=None), num_classes=9)
    out = model.meta_loss(batch)

    logits, targets = [], []
    for b, episode in enumerate(batch):
        for x, y in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
            logits.append(model.classifier(model.encoder(x)))
            targets.append(torch.tensor([int(batch.classes[b, int(label)]) for label in y]))
    expected = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    torch.testing.assert_close(out.loss, expected)
    assert 0 <= float(out.metric) <= 1


def test_meta_loss_rejects_batches_without_valid_class_ids(dataset: ClassDataset) -> None:
    batch = EpisodeSampler(dataset, ways=3, shots=1, queries=1, seed=0).sample(1).to("cpu")
    model = FineTune(MLP(28 * 28, (8,), out_features=None), num_classes=5)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        model.meta_loss(
            EpisodeBatch(
                batch.support_x,
                batch.support_y,
                batch.query_x,
                batch.query_y,
                3,
                1,
                torch.tensor([[0, 1, 7]]),
            )
        )
    no_classes = EpisodeBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, 3, 1)
    with pytest.raises(ValueError, match="no `classes`"):
        model.meta_loss(no_classes)


def test_needs_an_embedding_size() -> None:
    with pytest.raises(ValueError, match="embedding_dim"):
        FineTune(torch.nn.Flatten(), num_classes=5)
    assert FineTune(torch.nn.Flatten(), 5, embedding_dim=784).classifier.in_features == 784


def test_head_fitting_separates_easy_embeddings() -> None:
    support, support_y = gaussian_clusters(5, 3, seed=0)
    query, query_y = gaussian_clusters(5, 20, seed=1)
    weight, bias = fit_linear_head(support, support_y, ways=5, steps=100, lr=0.01)
    assert weight.shape == (5, 16) and bias.shape == (5,)
    assert bool((linear_head(support, weight, bias).argmax(-1) == support_y).all())
    assert float((linear_head(query, weight, bias).argmax(-1) == query_y).float().mean()) > 0.95


def test_batched_heads_equal_heads_fitted_one_by_one() -> None:
    episodes = [gaussian_clusters(4, 2, seed=s) for s in range(3)]
    features = torch.stack([f for f, _ in episodes])
    labels = torch.stack([y for _, y in episodes])
    weight, bias = fit_linear_head(features, labels, 4, steps=20, weight_decay=1e-2)
    for b, (f, y) in enumerate(episodes):
        w, c = fit_linear_head(f, y, 4, steps=20, weight_decay=1e-2)
        torch.testing.assert_close(weight[b], w)
        torch.testing.assert_close(bias[b], c)


def test_adapt_freezes_encoder_and_uses_eval_mode(dataset: ClassDataset) -> None:
    torch.manual_seed(0)
    model = FineTune(Conv4(1, 28, hidden=8), num_classes=9, head_steps=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = EpisodeSampler(dataset, ways=4, shots=2, queries=2, seed=1).sample(2).to("cpu")
    episode = batch[1]
    predict = model.adapt(episode.support_x, episode.support_y, episode.ways)
    logits = predict(episode.query_x)
    accuracy = model.evaluate(batch)

    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])  # running statistics included
    assert logits.shape == (8, 4)
    torch.testing.assert_close(accuracy, Algorithm.evaluate(model, batch))


def test_pretraining_then_adapting_classifies_new_tasks() -> None:
    """Embeddings pre-trained on 6 classes of clusters, heads fitted on 3-way tasks."""
    torch.manual_seed(0)
    points, labels = gaussian_clusters(6, 30, seed=0)
    model = FineTune(MLP(16, (32,), out_features=None), num_classes=6, head_steps=50)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = F.cross_entropy(model.classifier(model.encoder(points)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    support, support_y = gaussian_clusters(6, 1, seed=1)
    query, query_y = gaussian_clusters(6, 10, seed=2)
    keep_s, keep_q = support_y >= 3, query_y >= 3
    predict = model.adapt(support[keep_s], support_y[keep_s] - 3, ways=3)
    accuracy = (predict(query[keep_q]).argmax(-1) == query_y[keep_q] - 3).float().mean()
    assert float(accuracy) > 0.95
