"""Streaming class models (lifelong.continual.classifiers): exact, order-independent statistics,
each model against its formula, the registry and its errors, and `lifelong stream
--classifier`."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.continual.classifiers.base import ClassStatistics
from lifelong.continual.classifiers.cl2n import CL2N
from lifelong.continual.classifiers.gaussian import Gaussian, GaussianPredictive, pooled_variance
from lifelong.continual.classifiers.mean import NearestMean
from lifelong.continual.classifiers.registry import (
    build_classifier,
    classifier_class,
    classifier_names,
    parse_options,
)
from lifelong.continual.classifiers.slda import SLDA

DIM, CLASSES = 6, 5


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``CLASSES`` Gaussian classes with different spreads, labels in order."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=g) * 3
    spread = torch.rand(CLASSES, DIM, generator=g) + 0.2
    y = torch.arange(n) % CLASSES
    x = centres[y] + torch.randn(n, DIM, generator=g) * spread[y]
    return x, y


def models(num_classes: int = CLASSES + 2) -> list:
    mean = torch.linspace(-1, 1, DIM, dtype=torch.float64)
    return [
        NearestMean(identity, num_classes),
        NearestMean(identity, num_classes, distance="cosine", temperature=0.5),
        CL2N(identity, num_classes, feature_mean=mean),
        SLDA(identity, num_classes, shrinkage=0.05),
        Gaussian(identity, num_classes, strength=3.0),
        GaussianPredictive(identity, num_classes, strength=3.0),
    ]


@pytest.mark.parametrize("index", range(6))
def test_any_order_and_chunking_gives_the_batch_model(index):
    x, y = data()
    batch = models()[index]
    batch.observe(x, y)
    queries = data(40, seed=1)[0]
    expected = batch.predict(queries)
    for seed in range(3):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        streamed = models()[index]
        for part in order.split(1 if seed == 0 else 7):
            streamed.observe(x[part], y[part])
        for name in ("counts", "sums", "squares"):
            assert torch.allclose(
                getattr(streamed.stats, name).double(), getattr(batch.stats, name).double()
            )
        got = streamed.predict(queries)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4)
    # the two classes never seen are never predicted
    assert torch.isinf(expected[:, CLASSES:]).all() and (expected[:, CLASSES:] < 0).all()


def test_a_new_class_changes_no_other_class():
    x, y = data()
    model = Gaussian(identity, CLASSES + 1)
    model.observe(x, y)
    before = model.stats.sums[:CLASSES].clone(), model.stats.squares[:CLASSES].clone()
    model.observe(torch.randn(4, DIM), torch.full((4,), CLASSES))
    assert torch.equal(model.stats.sums[:CLASSES], before[0])
    assert torch.equal(model.stats.squares[:CLASSES], before[1])


def test_nearest_mean_is_the_protonet_rule():
    x, y = data()
    model = NearestMean(identity, CLASSES, temperature=2.0)
    model.observe(x, y)
    means = torch.stack([x[y == k].mean(0) for k in range(CLASSES)])
    q = data(10, seed=2)[0]
    assert torch.allclose(model.predict(q), -torch.cdist(q, means).square() / 2, atol=1e-4)
    assert torch.allclose(model.energy(model.predict(q)), torch.cdist(q, means).square().amin(1))


def test_cl2n_centres_and_normalises():
    x, y = data()
    m = x.mean(0)
    model = CL2N(identity, CLASSES, feature_mean=m, temperature=1.0)
    model.observe(x, y)
    z = torch.nn.functional.normalize(x - m, dim=1)
    means = torch.stack([z[y == k].mean(0) for k in range(CLASSES)])
    assert torch.allclose(model.prototypes.float(), means, atol=1e-6)
    q = data(10, seed=2)[0]
    zq = torch.nn.functional.normalize(q - m, dim=1)
    assert torch.allclose(model.predict(q), -torch.cdist(zq, means).square(), atol=1e-5)


def test_slda_is_lda_with_the_shrunk_pooled_covariance():
    x, y = data()
    e = 0.2
    model = SLDA(identity, CLASSES, shrinkage=e)
    model.observe(x, y)
    x64 = x.double()
    means = torch.stack([x64[y == k].mean(0) for k in range(CLASSES)])
    centred = x64 - means[y]
    covariance = centred.T @ centred / len(y)
    shrunk = (1 - e) * covariance + e * covariance.diagonal().mean() * torch.eye(DIM)
    q = data(10, seed=2)[0].double()
    diff = q[:, None, :] - means[None]
    maha = torch.einsum("nkd,de,nke->nk", diff, torch.linalg.inv(shrunk), diff)
    assert torch.allclose(model.predict(q.float()).double(), -maha / 2, rtol=1e-4, atol=1e-4)
    # with one example per class there is no spread yet: the nearest (Euclidean) mean
    single = SLDA(identity, CLASSES)
    single.observe(x[:CLASSES], y[:CLASSES])
    nearest = torch.cdist(q.float(), x[:CLASSES]).argmin(-1)
    assert torch.equal(single.predict(q.float()).argmax(-1), nearest)
    # ... also when other classes were forgotten: subtracting their features from the Gram
    # matrix leaves rounding, not spread
    assert single.stats is not None and single.stats.gram is not None
    forgotten = 1e3 * torch.randn(500, DIM, dtype=torch.float64)
    single.stats.gram += forgotten.T @ forgotten
    single.stats.gram -= forgotten.T @ forgotten
    single._fitted = None
    assert torch.equal(single.predict(q.float()).argmax(-1), nearest)


def test_gaussian_map_and_predictive_formulas():
    x, y = data()
    alpha = 4.0
    x64 = x.double()
    stats = ClassStatistics(CLASSES, DIM)
    stats.add(x64, y)
    pooled = sum((x64[y == k] - x64[y == k].mean(0)).square().sum(0) for k in range(CLASSES)) / (
        len(y) - CLASSES
    )
    assert torch.allclose(pooled_variance(stats), pooled)
    q = data(10, seed=2)[0].double()
    scores_map, scores_t = [], []
    for k in range(CLASSES):
        own = x64[y == k]
        n, mu = len(own), own.mean(0)
        a = alpha + n / 2
        b = (alpha - 1) * pooled + (own - mu).square().sum(0) / 2
        var = b / (a - 1)
        normal = torch.distributions.Normal(mu, var.sqrt())
        scores_map.append(normal.log_prob(q).sum(1))
        t = torch.distributions.StudentT(2 * a, mu, (b / a).sqrt())
        scores_t.append(t.log_prob(q).sum(1))
    constant = DIM * 0.5 * math.log(2 * math.pi)  # dropped: the same for every class
    for cls, expected in ((Gaussian, scores_map), (GaussianPredictive, scores_t)):
        model = cls(identity, CLASSES, strength=alpha)
        model.observe(x, y)
        got = model.predict(q.float()).double()
        assert torch.allclose(got - constant, torch.stack(expected, 1), rtol=1e-4, atol=1e-3)


def test_registry_names_config_and_errors():
    assert set(classifier_names()) >= {"mean", "cl2n", "slda", "gaussian"}
    for name in classifier_names():
        cls = classifier_class(name)
        assert cls.name == name and cls.summary
    x, y = data()
    for model in models():
        model.observe(x, y)
        again = build_classifier(model.config(), identity, model.num_classes)
        again.observe(x, y)
        assert torch.equal(again.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="unknown classifier 'knn'; choose one of mean"):
        classifier_class("knn")
    with pytest.raises(ValueError, match="classifier 'slda' has no option alpha"):
        SLDA(identity, 3, alpha=2.0)
    with pytest.raises(ValueError, match="slda shrinkage must lie in"):
        SLDA(identity, 3, shrinkage=1.5)
    with pytest.raises(ValueError, match="gaussian strength must exceed 1"):
        Gaussian(identity, 3, strength=1.0)
    with pytest.raises(ValueError, match="has not seen any example yet"):
        Gaussian(identity, 3).predict(x)
    assert parse_options(["shrinkage=0.2", " strength = 5"]) == {"shrinkage": 0.2, "strength": 5}
    with pytest.raises(ValueError, match="--classifier-option takes KEY=NUMBER"):
        parse_options(["shrinkage"])
    with pytest.raises(ValueError, match="--classifier-option takes KEY=NUMBER"):
        parse_options(["shrinkage=high"])
