"""OML (Javed & White 2019): meta-training reduces its loss, the reset and the second-order
meta-gradient, meta-test consistency with the online learner, sinusoid trajectories."""

from __future__ import annotations

import pytest
import torch
from test_continual_learners import clusters
from torch import nn

from lifelong.algorithms.oml import OML
from lifelong.continual.registry import make_learner
from lifelong.data.episodes import EpisodeSampler
from lifelong.data.sinusoid import SinusoidSampler
from lifelong.models.mlp import MLP


def toy_oml(classes: int = 30, **kwargs) -> OML:
    torch.manual_seed(0)
    return OML(MLP(16, (32,), None), num_classes=classes, channels_last=False, **kwargs)


def fixed_loss(oml: OML, batch) -> float:
    torch.manual_seed(123)  # the same remember set
    return oml.meta_loss(batch).loss.item()


def test_meta_training_reduces_the_loss():
    oml = toy_oml(inner_lr=0.3)
    sampler = EpisodeSampler(clusters(30, seed=1), ways=3, shots=5, queries=5, seed=0)
    held_out = sampler.fixed(8, seed=1)
    batch = next(held_out.batches(8)).to("cpu")
    before = fixed_loss(oml, batch)
    optimizer = torch.optim.Adam(oml.parameters(), lr=1e-2)
    for _ in range(40):
        out = oml.meta_loss(sampler.sample(4).to("cpu"))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = fixed_loss(oml, batch)
    assert after < 0.8 * before, (before, after)


def test_reset_rows():
    """The trajectory's output rows start from zero: their initial values get no gradient."""
    oml = toy_oml(remember=0)
    batch = EpisodeSampler(clusters(30), ways=3, shots=2, queries=2, seed=0).sample(1)
    oml.meta_loss(batch.to("cpu")).loss.backward()
    grad = oml.prediction.head.weight.grad
    assert grad[batch.classes[0]].abs().max() == 0
    assert grad.abs().sum() > 0


def test_second_order_meta_gradient():
    batch = EpisodeSampler(clusters(30), ways=3, shots=2, queries=2, seed=0).sample(3).to("cpu")
    grads = {}
    for first_order in (False, True):
        oml = toy_oml(first_order=first_order)
        torch.manual_seed(0)
        oml.meta_loss(batch).loss.backward()
        grads[first_order] = torch.cat([p.grad.flatten() for p in oml.representation.parameters()])
    assert grads[False].abs().sum() > 0
    assert (grads[False] - grads[True]).abs().max() > 1e-6  # the second-order terms count


def test_adapt_matches_the_online_learner():
    """OML's meta-test on one episode (adapt) and the continual ``online-sgd`` learner are the same
    procedure: a zero output layer, one SGD step per support example, the RLN frozen."""
    oml = toy_oml(inner_lr=0.3).eval()
    episode = EpisodeSampler(clusters(30), ways=4, shots=3, queries=5, seed=0).sample(1)
    episode = episode.to("cpu")[0]
    predict = oml.adapt(episode.support_x, episode.support_y, episode.ways)
    learner = make_learner("online-sgd", oml, num_classes=4)
    learner.observe(episode.support_x, episode.support_y)
    assert torch.allclose(predict(episode.query_x), learner.predict(episode.query_x), atol=1e-5)


def test_sine_trajectory():
    torch.manual_seed(0)
    oml = OML(
        MLP(4, (16, 16), None),
        num_classes=1,
        prediction_hidden=(16,),
        functions=3,
        online_batch=5,
        inner_lr=0.01,
    )
    assert oml.regression
    batch = SinusoidSampler(shots=10, queries=4, seed=0).sample(3)
    out = oml.meta_loss(batch)
    out.loss.backward()
    assert out.loss.item() > 0 and all(p.grad is not None for p in oml.parameters())
    with pytest.raises(ValueError, match=r"trajectories of 3 functions .* meta-batch has 2"):
        oml.meta_loss(SinusoidSampler(shots=10, queries=4).sample(2))
    predict = oml.eval().adapt(batch.support_x[0], batch.support_y[0], 0)
    assert predict(batch.query_x[0]).shape == (4, 1)


def test_errors():
    oml = toy_oml()
    one = EpisodeSampler(clusters(30), ways=3, shots=2, queries=2, seed=0).sample(1)
    with pytest.raises(ValueError, match=r"remember set .* meta-batch of at least 2"):
        oml.meta_loss(one)
    small = toy_oml(classes=10)
    with pytest.raises(ValueError, match=r"class id .* outside the PLN's 10 outputs"):
        small.meta_loss(EpisodeSampler(clusters(30), 3, 2, 2, seed=0).sample(4))
    with pytest.raises(ValueError, match="has no embedding_dim"):
        OML(nn.Linear(3, 3), num_classes=5)


def test_build_oml_for_sinusoids():
    from lifelong.pipeline.config import RunConfig
    from lifelong.pipeline.data import DataFacts
    from lifelong.pipeline.factory import build_algorithm

    def build_oml(cfg, facts):
        return build_algorithm(cfg, facts)

    facts = DataFacts("sinusoid", regression=True)
    cfg = RunConfig(
        algorithm="oml",
        dataset="sinusoid",
        backbone="mlp",
        hidden=(64, 64, 64),
        shots=20,
        inner_steps=4,
        meta_batch=5,
    )
    torch.manual_seed(0)
    oml = build_oml(cfg, facts)
    assert oml.functions == 5 and oml.online_batch == 5 and oml.regression
    first = oml.representation.features[1]
    assert first.in_features == 6  # x and a one-hot of 5 functions
    layers = [m for m in oml.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 4 and all(not m.bias.detach().any() for m in layers)
    hidden = layers[1].weight  # Kaiming normal: std sqrt(2 / fan_in)
    assert abs(float(hidden.detach().std()) - (2 / 64) ** 0.5) < 0.02
    with pytest.raises(ValueError, match="into `inner_steps` 3 equal online batches"):
        build_oml(cfg.override(inner_steps=3), facts)
    with pytest.raises(ValueError, match="at least two `hidden` layers"):
        build_oml(cfg.override(hidden=(64,)), facts)
