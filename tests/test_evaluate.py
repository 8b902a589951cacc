"""Evaluation: confidence-interval arithmetic, fixed episodes, the JSON-able result."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lifelong.algorithms.base import Algorithm, MetaLoss
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import EpisodeSampler
from lifelong.pipeline.evaluate import (
    Evaluation,
    confidence_interval,
    episode_metrics,
    eval_batch_size,
    evaluate,
)
from lifelong.stats import summary


class NearestMean(Algorithm):
    """Nearest class mean in pixel space (no parameters to learn)."""

    def meta_loss(self, batch):
        raise NotImplementedError

    def adapt(self, support_x, support_y, ways):
        means = torch.stack([support_x[support_y == k].mean(0).flatten() for k in range(ways)])
        return lambda query_x: -torch.cdist(query_x.flatten(1), means)


class AlwaysFirst(Algorithm):
    """Predicts class 0 for every query: accuracy 1/ways on balanced queries."""

    test_steps = 3

    def meta_loss(self, batch):
        return MetaLoss(torch.zeros(()), torch.zeros(()))

    def adapt(self, support_x, support_y, ways):
        return lambda query_x: torch.eye(ways)[torch.zeros(len(query_x), dtype=torch.long)]


def constant_classes(classes: int = 8, per_class: int = 6) -> ClassDataset:
    """Every image of class k has the value 30 * k: perfectly separable."""
    images = torch.cat([torch.full((per_class, 1, 4, 4), 30 * k) for k in range(classes)])
    return ClassDataset(
        images.to(torch.uint8), [per_class] * classes, [ClassInfo(str(k)) for k in range(classes)]
    )


def test_confidence_interval_is_1_96_standard_errors():
    values = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5])
    mean, ci = confidence_interval(values)
    assert mean == pytest.approx(0.7)
    assert ci == pytest.approx(1.96 * np.std(values.numpy(), ddof=1) / math.sqrt(5))
    assert confidence_interval(torch.tensor([0.25])) == (0.25, None)
    assert confidence_interval(torch.full((10,), 0.5)) == (0.5, 0.0)
    with pytest.raises(ValueError, match="no episodes"):
        confidence_interval(torch.tensor([]))
    assert summary(torch.tensor([1.0, 0.0])) == {"mean": 0.5, "ci95": 0.98}
    assert summary(torch.tensor([1 / 3]), digits=2) == {"mean": 0.33, "ci95": None}


def test_evaluate_summarises_every_fixed_episode():
    episodes = EpisodeSampler(constant_classes(), ways=4, shots=1, queries=3).fixed(7, seed=0)
    result = evaluate(AlwaysFirst(), episodes, batch_size=3, split="val")
    assert result == Evaluation(
        metric="accuracy", mean=pytest.approx(0.25), ci95=0.0, episodes=7, ways=4, shots=1,
        queries=3, split="val", inner_steps=3,
    )  # fmt: skip
    assert json.loads(json.dumps(result.to_dict()))["episodes"] == 7
    assert str(result) == "accuracy 25.00% ± 0.00% (val, 4-way 1-shot 3-query, 7 episodes)"


def test_separable_classes_are_solved_and_episodes_are_reproducible():
    sampler = EpisodeSampler(constant_classes(), ways=5, shots=2, queries=2)
    algorithm = NearestMean().train()
    result = evaluate(algorithm, sampler.fixed(20, seed=1))
    assert (result.mean, result.ci95, result.inner_steps) == (1.0, 0.0, None)
    assert algorithm.training  # the training mode is restored
    sampler.sample(5)  # the sampler's own stream moves on; the fixed set does not
    again = episode_metrics(NearestMean(), sampler.fixed(20, seed=1), batch_size=6)
    assert torch.equal(again, torch.ones(20))


def test_regression_results_are_mse():
    result = Evaluation("mse", 0.123456, 0.01, 100, 0, 10, 10, "test", 1)
    assert str(result) == "mse 0.1235 ± 0.01 (test, 10-shot 10-query, 100 episodes)"


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "size", "batch"),
    [(5, 1, 15, 28, 25), (20, 5, 5, 28, 12), (20, 5, 5, 56, 3), (5, 1, 15, 84, 3)],
)
def test_large_episodes_are_evaluated_a_few_at_a_time(ways, shots, queries, size, batch):
    """25 validation episodes of 20-way 5-shot at 56 x 56 pixels once took 13.6 GB."""
    images = torch.zeros(ways * (shots + queries), 1, size, size, dtype=torch.uint8)
    dataset = ClassDataset(
        images, [shots + queries] * ways, [ClassInfo(str(i)) for i in range(ways)]
    )
    episode = EpisodeSampler(dataset, ways, shots, queries).sample(1)
    assert eval_batch_size(episode) == batch


@pytest.mark.parametrize("batch_size", [1, 7, 25])
def test_a_fixed_set_embeds_each_image_once_with_the_results_of_the_image_path(
    batch_size, monkeypatch
):
    """ProtoNet's fixed-set metrics from embeddings computed once per image equal those of
    embedding every episode's images (eval-mode batch norm); each used image is embedded once."""
    from lifelong.algorithms.protonet import ProtoNet
    from lifelong.models.conv4 import Conv4

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12 * 6, 1, 16, 16), dtype=torch.uint8, generator=generator)
    data = ClassDataset(images, [6] * 12, [ClassInfo(str(k)) for k in range(12)])
    model = ProtoNet(Conv4(1, 16, out_features=None, hidden=8))
    model.train().encoder(torch.rand(8, 1, 16, 16))  # running statistics for eval mode
    fixed = EpisodeSampler(data, 5, 2, 3).fixed(30, seed=4)
    expected = torch.cat([model.evaluate(batch.to("cpu")) for batch in fixed.batches(4)])
    embedded: list[int] = []
    embed = model.embed
    monkeypatch.setattr(model, "embed", lambda x: embedded.append(len(x)) or embed(x))
    values = episode_metrics(model, fixed, batch_size=batch_size)
    torch.testing.assert_close(values, expected)
    assert sum(embedded) == len(fixed.index.unique()) <= len(images)
    assert model.training  # the mode is restored
