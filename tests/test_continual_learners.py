"""Continual learners: prototype memory, online SGD (OML meta-test, fine-tuning, replay), the
reservoir buffer, and the learner factory's errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from lifelong.algorithms.protonet import ProtoNet
from lifelong.continual.classifiers.mean import NearestMean
from lifelong.continual.metrics import accuracy_matrix, backward_transfer, forgetting
from lifelong.continual.online import OnlineSGD
from lifelong.continual.protocols import run_stream
from lifelong.continual.registry import LEARNERS, LearnerSettings, make_learner
from lifelong.continual.replay import ReservoirBuffer
from lifelong.continual.streams import ClassStream
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.models.mlp import MLP


def clusters(classes: int = 10, per_class: int = 20, seed: int = 0) -> ClassDataset:
    """Well-separated classes: ``[1, 4, 4]`` images, a random centre per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, 1, 1, 4, 4, generator=g) * 200 + 28
    noise = torch.randn(classes, per_class, 1, 4, 4, generator=g) * 8
    images = (centres + noise).clamp(0, 255).round().to(torch.uint8).flatten(0, 1)
    infos = [ClassInfo(f"k{i}") for i in range(classes)]
    return ClassDataset(images, [per_class] * classes, infos, "clusters")


def protonet(seed: int = 0) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(MLP(16, (32,), None), channels_last=False).eval()


def test_running_mean_equals_batch_mean():
    net = protonet()
    x = torch.rand(30, 1, 4, 4)
    y = torch.tensor([0, 2, 1] * 10)
    one_by_one = NearestMean(net.embed, num_classes=4)
    for i in range(30):
        one_by_one.observe(x[i : i + 1], y[i : i + 1])
    chunked = NearestMean(net.embed, num_classes=4)
    chunked.observe(x[:7], y[:7])
    chunked.observe(x[7:], y[7:])
    with torch.no_grad():
        batch = net.prototypes(net.embed(x), y, ways=3)
    for memory in (one_by_one, chunked):
        assert torch.allclose(memory.prototypes[:3].float(), batch, atol=1e-6)
        assert memory.stats.counts.tolist() == [10, 10, 10, 0]
    logits = one_by_one.predict(x)
    assert torch.isinf(logits[:, 3]).all()  # an unseen class is never predicted
    assert torch.allclose(logits[:, :3], net.logits(net.embed(x), batch), atol=1e-4)


def test_prototypes_do_not_forget_while_finetuning_does():
    stream = ClassStream(
        clusters(), classes=10, classes_per_step=2, train_per_class=15, test_per_class=5, seed=0
    )
    net = protonet()
    means = LearnerSettings(classifier="mean")  # prototypes that never change
    prototypes = run_stream(make_learner("prototypes", net, 10, settings=means), stream)
    finetune = run_stream(
        make_learner("online-finetune", net, 10, settings=LearnerSettings(lr=0.2)), stream
    )
    R_proto = accuracy_matrix(prototypes.per_class, prototypes.boundaries)
    R_tune = accuracy_matrix(finetune.per_class, finetune.boundaries)
    assert float(R_proto[-1].mean()) > 0.95  # still knows every class
    assert forgetting(R_proto) < 0.05
    # within its group a class is told apart by prototypes that never change: exactly 0
    within = accuracy_matrix(prototypes.within_group, prototypes.boundaries)
    assert forgetting(within) == 0.0 and backward_transfer(within) == 0.0
    assert float(R_tune.diagonal().mean()) >= 0.8  # learns each new pair of classes...
    assert float(R_tune[-1, :-1].mean()) < 0.5  # ...and forgets the earlier ones
    assert forgetting(R_tune) > 0.5


def test_replay_forgets_less_than_finetuning():
    stream = ClassStream(
        clusters(), classes=10, classes_per_step=2, train_per_class=15, test_per_class=5, seed=0
    )
    net = protonet()
    results = {
        name: run_stream(
            make_learner(name, net, 10, settings=LearnerSettings(lr=0.2, buffer=50)), stream
        )
        for name in ("online-finetune", "replay")
    }
    final = {k: float(r.per_class[-1].mean()) for k, r in results.items()}
    assert final["replay"] > final["online-finetune"] + 0.2


def test_online_sgd_updates_the_head_only_when_frozen():
    torch.manual_seed(0)
    body, head = nn.Linear(4, 3), nn.Linear(3, 2)
    before_body = body.weight.detach().clone()
    before_head = head.weight.detach().clone()
    learner = OnlineSGD(body, head, lr=0.1, num_classes=2)
    learner.observe(torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
    assert torch.equal(body.weight, before_body)
    assert not torch.equal(head.weight, before_head)


def test_online_sgd_one_example_at_a_time():
    """Online SGD takes one step per example, in order: the same as a hand-written loop."""
    torch.manual_seed(0)
    head = nn.Linear(3, 4)
    reference = nn.Linear(3, 4)
    reference.load_state_dict(head.state_dict())
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    OnlineSGD(nn.Identity(), head, lr=0.2, num_classes=4).observe(x, y)
    seen = torch.zeros(4, dtype=torch.bool)
    seen[:3] = True
    for i in range(6):
        logits = reference(x[i : i + 1]).masked_fill(~seen, float("-inf"))
        loss = nn.functional.cross_entropy(logits, y[i : i + 1])
        reference.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.2 * p.grad
    assert torch.allclose(head.weight, reference.weight, atol=1e-6)
    assert torch.allclose(head.weight[3], reference.weight[3])  # unseen class untouched


def test_reservoir_bound_and_uniformity():
    capacity, n, runs = 10, 50, 600
    hits = torch.zeros(n)
    for seed in range(runs):
        buffer = ReservoirBuffer(capacity, seed=seed)
        for start in range(0, n, 7):  # offered in chunks of any size
            chunk = torch.arange(start, min(start + 7, n))
            buffer.add(chunk.float().unsqueeze(1), chunk)
            assert len(buffer) == min(capacity, int(chunk[-1]) + 1)
        assert buffer.added == n
        stored = buffer.y[: len(buffer)]
        assert stored.unique().numel() == capacity  # no duplicates
        assert torch.equal(buffer.x[: len(buffer), 0].long(), stored)  # pairs stay together
        hits[stored] += 1
    frequency = hits / runs
    # every example is kept with probability capacity / n = 0.2, early or late alike
    assert (frequency - capacity / n).abs().max() < 0.08
    assert abs(float(frequency[:10].mean()) - 0.2) < 0.04
    assert abs(float(frequency[-10:].mean()) - 0.2) < 0.04


def test_reservoir_sample():
    buffer = ReservoirBuffer(5, seed=0)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(2)
    buffer.add(torch.arange(3).float().unsqueeze(1), torch.arange(3))
    _, y = buffer.sample(10)
    assert sorted(y.tolist()) == [0, 1, 2]  # at most what is stored, no repeats


def test_learner_errors():
    net = protonet()
    with pytest.raises(ValueError, match="at least 1 example, got --buffer 0"):
        make_learner("replay", net, 10, settings=LearnerSettings(buffer=0))
    with pytest.raises(ValueError, match="unknown learner 'ewc'; choose one of prototypes"):
        make_learner("ewc", net, 10)
    for old, new in (("oml", "online-sgd"), ("finetune", "online-finetune")):
        with pytest.raises(ValueError, match=f"^learner '{old}' was renamed: use --learner {new}$"):
            make_learner(old, net, 10)
    with pytest.raises(ValueError, match="a replay buffer needs room for at least 1 example"):
        ReservoirBuffer(0)
    regression = protonet()
    regression.regression = True
    with pytest.raises(ValueError, match="prototype memory classifies by class means, but this"):
        make_learner("prototypes", regression, 10)
    learner = make_learner("prototypes", net, 3)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2, got 0\.\.3"):
        learner.observe(torch.rand(2, 1, 4, 4), torch.tensor([0, 3]))


def test_the_registry_names_every_learner_without_torch():
    assert list(LEARNERS) == ["prototypes", "online-sgd", "online-finetune", "replay"]
    assert all(isinstance(v, str) and v and "\n" not in v for v in LEARNERS.values())
    code = (
        "import sys, lifelong.continual.cli, lifelong.continual.registry; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
