"""ANML (Beaulieu et al. 2020): the gate, an inner loop on the last layer only, a second-order
meta-gradient into the NM and the PN (finite differences in float64), meta-test consistency
with the online learner, and train + stream through the command line on strokes."""

from __future__ import annotations

import json

import pytest
import torch
from test_continual_learners import clusters

import lifelong.algorithms.oml
from lifelong.algorithms.anml import ANML
from lifelong.cli import main
from lifelong.continual.registry import make_learner
from lifelong.data.episodes import EpisodeSampler
from lifelong.data.strokes import load_strokes
from lifelong.models.mlp import MLP


def toy_anml(classes: int = 30, **kwargs) -> ANML:
    torch.manual_seed(0)
    return ANML(MLP(16, (12,), None), MLP(16, (10,), None), classes, channels_last=False, **kwargs)


def trajectories(batch_size: int = 3, seed: int = 0):
    """1-way episodes: each a trajectory of one class (4 images) and 2 fresh images."""
    sampler = EpisodeSampler(clusters(30), ways=1, shots=4, queries=2, seed=seed)
    return sampler.sample(batch_size).to("cpu")


def test_the_gate_is_elementwise_and_in_0_1():
    anml = toy_anml()
    x = torch.rand(7, 1, 4, 4)
    net = anml.body()
    gate = net.modulation(x)
    assert gate.shape == (7, net.embedding_dim) == net.pn(x).shape
    assert ((gate > 0) & (gate < 1)).all()
    assert torch.equal(net(x), net.pn(x) * gate)
    assert torch.equal(anml.embed(x), net(x))
    assert anml.prediction_network().head.in_features == net.embedding_dim == 10


def test_the_inner_loop_adapts_only_the_last_layer(monkeypatch):
    calls = []

    def spy(forward, params, names, x, y, *args, **kwargs):
        calls.append((list(params), list(names), x))
        return inner_loop(forward, params, names, x, y, *args, **kwargs)

    inner_loop = lifelong.algorithms.oml.inner_loop
    monkeypatch.setattr(lifelong.algorithms.oml, "inner_loop", spy)
    anml = toy_anml()
    batch = trajectories()
    anml.meta_loss(batch)
    assert len(calls) == 3 * 4  # one SGD step per trajectory image
    with torch.no_grad():
        features = anml.embed(batch.support_x[0])
    for params, names, x in calls:
        assert params == names == ["head.weight", "head.bias"]
        assert x.shape == (1, 10)  # one image's gated features
    assert torch.allclose(torch.cat([c[2] for c in calls[:4]]), features)


def test_reset_rows_and_the_remember_set():
    """The trajectory's row starts from zero (no gradient to its initial value); the others
    get a gradient from the remember set; without it the batch may be a single trajectory."""
    anml = toy_anml()
    batch = trajectories()
    anml.meta_loss(batch).loss.backward()
    grad = anml.prediction.head.weight.grad  # each class is in the others' remember sets
    assert (grad[batch.classes.flatten()].abs().sum(1) > 0).all()
    alone = toy_anml(remember=0)
    alone.meta_loss(batch[:1]).loss.backward()
    grad = alone.prediction.head.weight.grad
    assert grad[batch.classes[0]].abs().max() == 0
    with pytest.raises(ValueError, match=r"remember set .* meta-batch of at least 2"):
        anml.meta_loss(batch[:1])


def fixed_loss(anml: ANML, batch) -> float:
    torch.manual_seed(5)  # the same remember set
    return anml.meta_loss(batch).loss.item()


def meta_gradient(anml: ANML, batch) -> list[torch.Tensor]:
    torch.manual_seed(5)  # the same remember set
    anml.zero_grad()
    anml.meta_loss(batch).loss.backward()
    return [p.grad.clone() for p in anml.parameters()]


def test_the_meta_gradient_is_second_order_and_reaches_the_nm_and_the_pn():
    anml = toy_anml(inner_lr=0.5).double()
    batch = trajectories().to("cpu", torch.float64)
    names = [n for n, _ in anml.named_parameters()]
    exact = meta_gradient(anml, batch)
    for name, grad in zip(names, exact, strict=True):
        if name.startswith(("representation.nm.", "representation.gate.", "representation.pn.")):
            assert grad.abs().sum() > 0, name
    # finite differences along a random direction, in float64
    torch.manual_seed(1)
    direction = [torch.randn_like(p) for p in anml.parameters()]
    eps = 1e-6

    def loss_at(step: float) -> float:
        moved = toy_anml(inner_lr=0.5).double()
        with torch.no_grad():
            for p, q, d in zip(moved.parameters(), anml.parameters(), direction, strict=True):
                p.copy_(q + step * d)
        torch.manual_seed(5)
        return moved.meta_loss(batch).loss.item()

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(exact, direction, strict=True)).item()
    assert numeric == pytest.approx(analytic, rel=1e-6)
    first = meta_gradient(toy_anml(inner_lr=0.5, first_order=True).double(), batch)
    representation = [i for i, n in enumerate(names) if n.startswith("representation.")]
    gap = max((exact[i] - first[i]).abs().max().item() for i in representation)
    assert gap > 1e-6  # the second-order terms count


def test_meta_training_reduces_the_loss():
    anml = toy_anml(classes=10, inner_lr=0.3)
    sampler = EpisodeSampler(clusters(10, seed=1), ways=1, shots=4, queries=2, seed=0)
    held_out = next(sampler.fixed(6, seed=1).batches(6)).to("cpu")
    before = fixed_loss(anml, held_out)
    optimizer = torch.optim.Adam(anml.parameters(), lr=3e-2)
    for _ in range(60):
        optimizer.zero_grad()
        anml.meta_loss(sampler.sample(4).to("cpu")).loss.backward()
        optimizer.step()
    assert fixed_loss(anml, held_out) < 0.8 * before


def test_adapt_matches_the_online_learner():
    """The meta-test on one episode (adapt) and the continual ``online-sgd`` learner are the
    same procedure: the gated representation frozen, a zero last layer, one SGD step per
    image at the inner rate."""
    anml = toy_anml().eval()
    episode = EpisodeSampler(clusters(30), ways=4, shots=3, queries=5, seed=0).sample(1)
    episode = episode.to("cpu")[0]
    predict = anml.adapt(episode.support_x, episode.support_y, episode.ways)
    learner = make_learner("online-sgd", anml, num_classes=4)
    assert learner.optimizer.param_groups[0]["lr"] == anml.online_lr == 0.1
    learner.observe(episode.support_x, episode.support_y)
    assert torch.allclose(predict(episode.query_x), learner.predict(episode.query_x), atol=1e-5)
    assert not any(p.requires_grad for p in learner.body.parameters())


def test_errors():
    with pytest.raises(ValueError, match="has no embedding_dim"):
        ANML(torch.nn.Linear(3, 3), MLP(16, (10,), None), num_classes=5)
    with pytest.raises(ValueError, match=r"class id .* outside ANML's 10 outputs"):
        toy_anml(classes=10).meta_loss(trajectories())


def test_build_from_a_config():
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts
    from lifelong.pipeline.factory import build_algorithm, resolve_config

    facts = DataFacts("strokes", image_shape=(1, 28, 28), classes={"train": 40, "val": 8})
    cfg = RunConfig(algorithm="anml", ways=1, shots=4, queries=2, hidden=(8,))
    assert resolve_config(cfg).inner_lr == 0.1 and resolve_config(cfg).meta_batch == 5
    anml = build_algorithm(cfg, facts)
    assert anml.prediction.head.out_features == 40 and anml.online_lr == 0.1
    assert anml.representation.nm is not anml.representation.pn
    assert anml.can_back_store() and not anml.splittable
    strokes = load_strokes({"train": 40}, per_class=6, seed=0)["train"]
    anml.meta_loss(EpisodeSampler(strokes, 1, 4, 2, seed=0).sample(3).to("cpu")).loss.backward()
    for net in (anml.representation.nm, anml.representation.pn):  # Conv-4s: every conv learns
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 4 and all(m.weight.grad.abs().sum() > 0 for m in convs)
    with pytest.raises(ValueError, match="one SGD step per trajectory image"):
        build_algorithm(cfg.override(inner_steps=2), facts)


def test_train_and_stream_through_the_command_line(tmp_path, capsys):
    """``lifelong train --algorithm anml`` on strokes, then ``lifelong stream`` on the run with
    the representation frozen and the last layer learned online (``--learner online-sgd``)."""
    run = tmp_path / "anml"
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "train", "--algorithm", "anml", "--dataset", "strokes",
                "--dataset-option", "classes={train: 20, val: 10, test: 10}",
                "--dataset-option", "per_class=20",
                "--ways", "1", "--shots", "5", "--queries", "2", "--meta-batch", "3",
                "--test-ways", "3", "--test-shots", "2", "--test-queries", "2",
                "--hidden", "8", "--iterations", "4", "--val-every", "2", "--val-episodes", "4",
                "--checkpoint-every", "4", "--out", str(run), "--quiet",
            ]
        )  # fmt: skip
    assert exit_.value.code == 0
    assert 'algorithm: "anml"  # from: flag' in (run / "config.yaml").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "stream", str(run), "--protocol", "task-sequence", "--classes", "10",
                "--seeds", "1", "--learner", "online-sgd", "--json",
            ]
        )  # fmt: skip
    assert exit_.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["learner"] == "online-sgd" and summary["settings"]["lr"] == 0.1
    assert 0.0 <= summary["accuracy_by_classes"]["10"] <= 1.0
