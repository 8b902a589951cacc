"""Reptile: the surrogate's gradient is theta - mean_i theta'_i (against plain SGD written out),
an SGD step of epsilon makes the paper's update, the fast path equals the loop, and meta-training
learns sinusoids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_maml import WAYS, episodes, meta_gradient, tiny
from torch.func import functional_call

from lifelong.algorithms.reptile import Reptile
from lifelong.data.sinusoid import SinusoidSampler
from lifelong.models.mlp import MLP


def adapted_by_hand(model: torch.nn.Module, episode, lr: float, steps: int) -> dict:
    """theta'_i: ``steps`` plain SGD steps on the support set, one task."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):
        params = {n: p.requires_grad_() for n, p in params.items()}
        out = functional_call(model, params, (episode.support_x,))
        grads = torch.autograd.grad(F.cross_entropy(out, episode.support_y), list(params.values()))
        params = {n: (p - lr * g).detach() for (n, p), g in zip(params.items(), grads, strict=True)}
    return params


@pytest.mark.parametrize("fast", [False, True])
def test_surrogate_gradient_is_theta_minus_mean_adapted(fast: bool) -> None:
    batch = episodes("conv", tasks=3)
    model = tiny("conv")
    reptile = Reptile(model, inner_lr=0.2, inner_steps=3, fast=fast, workers=2)
    loss, _, grads = meta_gradient(reptile, batch)
    adapted = [adapted_by_hand(model, episode, 0.2, 3) for episode in batch]
    queries = []
    for (name, theta), grad in zip(model.named_parameters(), grads, strict=True):
        mean = torch.stack([a[name] for a in adapted]).mean(0)
        torch.testing.assert_close(grad, theta.detach() - mean, msg=name)
    for episode, params in zip(batch, adapted, strict=True):
        out = functional_call(model, params, (episode.query_x,))
        queries.append(F.cross_entropy(out, episode.query_y).item())
    assert loss == pytest.approx(sum(queries) / len(queries))  # the value: the query loss


def test_sgd_step_makes_the_reptile_update() -> None:
    batch = episodes("mlp", tasks=2)
    model = tiny("mlp")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapted = [adapted_by_hand(model, episode, 0.1, 2) for episode in batch]
    reptile = Reptile(model, inner_lr=0.1, inner_steps=2)
    optimizer = torch.optim.SGD(reptile.parameters(), lr=0.5)
    reptile.meta_loss(batch).loss.backward()
    optimizer.step()
    for name, theta in model.named_parameters():
        mean = torch.stack([a[name] for a in adapted]).mean(0)
        expected = before[name] + 0.5 * (mean - before[name])
        torch.testing.assert_close(theta.detach(), expected, msg=name)


@pytest.mark.parametrize("kind", ["conv", "strided", "mlp"])
def test_fast_path_equals_reference_loop(kind: str) -> None:
    batch = episodes(kind, tasks=4)
    reference = Reptile(tiny(kind), inner_lr=0.2, inner_steps=3, fast=False)
    loss, metric, grads = meta_gradient(reference, batch)
    for task_chunk, workers in [(None, 1), (1, 2), (3, 1)]:
        fast = Reptile(reference.model, 0.2, 3, task_chunk=task_chunk, workers=workers)
        fast_loss, fast_metric, fast_grads = meta_gradient(fast, batch)
        assert (fast_loss, fast_metric) == pytest.approx((loss, metric), rel=1e-12)
        for a, b in zip(grads, fast_grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(fast.evaluate(batch), reference.evaluate(batch))


def test_adapt_and_errors() -> None:
    batch = episodes("conv", tasks=1)
    reptile = Reptile(tiny("conv"), inner_lr=0.2, inner_steps=2, eval_inner_steps=4)
    predict = reptile.adapt(batch.support_x[0], batch.support_y[0], WAYS)
    assert predict(batch.query_x[0]).shape == (WAYS * 2, WAYS)
    with pytest.raises(ValueError, match="inner_lr must be positive, got 0"):
        Reptile(tiny("conv"), inner_lr=0)


def test_meta_training_learns_sinusoids() -> None:
    torch.manual_seed(0)
    reptile = Reptile(MLP(1, (40, 40), 1), inner_lr=0.02, inner_steps=5, regression=True)
    optimizer = torch.optim.Adam(reptile.parameters(), lr=1e-2)
    sampler = SinusoidSampler(shots=10, queries=10, seed=0)
    test = next(sampler.fixed(200, seed=99).batches(200))
    before = reptile.evaluate(test).mean().item()
    for _ in range(100):
        optimizer.zero_grad()
        reptile.meta_loss(sampler.sample(10)).loss.backward()
        optimizer.step()
    assert reptile.evaluate(test).mean().item() < 0.5 * before
