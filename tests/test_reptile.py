"""Reptile: the surrogate's gradient is theta - mean_i theta'_i (against plain SGD and
``torch.optim.Adam`` on the same mini-batches, written out), an SGD step of epsilon makes the
paper's update (also through the Trainer, with the linearly annealed step size), the fast path
equals the loop, the paper's settings are the defaults, and meta-training learns sinusoids."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_maml import WAYS, episodes, meta_gradient, tiny
from test_train import FACTS, STROKES, TRAIN, resumed_exactly
from torch.func import functional_call

from lifelong.algorithms.inner_loop import support_batches
from lifelong.algorithms.reptile import Reptile
from lifelong.data.episodes import EpisodeBatch, EpisodeSampler
from lifelong.data.sinusoid import SinusoidSampler
from lifelong.models.mlp import MLP
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.factory import build_algorithm, resolve_config
from lifelong.pipeline.train import Trainer
from lifelong.pipeline.trained import load_trained

DOUBLE = torch.float64


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


def adam_steps(model: torch.nn.Module, optimizer, x, y, steps: int, batches=None) -> list[dict]:
    """``steps`` steps of ``optimizer`` (over ``model``'s parameters), one task, on the
    mini-batches ``batches [steps, k]`` (``None``: all of the support set); each step's
    gradients."""
    grads = []
    for step in range(steps):
        index = slice(None) if batches is None else batches[step]
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.step()
    return grads


def adapted_by_adam(model: torch.nn.Module, x, y, lr: float, steps: int, batches=None) -> dict:
    """theta'_i by ``torch.optim.Adam(betas=(0, 0.999))`` on a copy of the model, one task,
    on the mini-batches ``batches [steps, k]`` (``None``: all of the support set)."""
    copied = copy.deepcopy(model)
    optimizer = torch.optim.Adam(copied.parameters(), lr=lr, betas=(0.0, 0.999))
    adam_steps(copied, optimizer, x, y, steps, batches)
    return {n: p.detach() for n, p in copied.named_parameters()}


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("inner_batch", [None, 4])
def test_adam_on_mini_batches_equals_torch_adam(fast: bool, inner_batch: int | None) -> None:
    batch = replace(episodes("conv", tasks=3), keys=torch.tensor([11, 12, 13]))
    model = tiny("conv")
    reptile = Reptile(
        model, 0.01, 4, inner_optimizer="adam", inner_batch=inner_batch, fast=fast, workers=2
    )
    _, _, grads = meta_gradient(reptile, batch)
    support = batch.support_x.shape[1]  # the mini-batches of the tasks' keys:
    drawn = support_batches(batch.keys, support, 4, inner_batch or 0, torch.device("cpu"))
    adapted = [
        adapted_by_adam(model, e.support_x, e.support_y, 0.01, 4, None if drawn is None else b)
        for e, b in zip(batch, drawn if drawn is not None else [None] * 3, strict=True)
    ]
    for (name, theta), grad in zip(model.named_parameters(), grads, strict=True):
        mean = torch.stack([a[name] for a in adapted]).mean(0)
        torch.testing.assert_close(grad, theta.detach() - mean, msg=name)


def test_mini_batches_cover_each_support_set_once_per_epoch() -> None:
    cpu, keys = torch.device("cpu"), torch.tensor([3, 4, 5])
    batches = support_batches(keys, 12, 7, 4, cpu)  # 7 steps: 2 1/3 epochs
    assert batches.shape == (3, 7, 4)
    for task in batches:
        flat = task.flatten()
        for epoch in (flat[:12], flat[12:24]):
            assert sorted(epoch.tolist()) == list(range(12))
    assert not torch.equal(batches[0], batches[1])  # each task its own shuffle
    assert torch.equal(support_batches(keys[1:], 12, 7, 4, cpu), batches[1:])  # its key's
    crossing = support_batches(keys[:1], 5, 5, 2, cpu).flatten()  # 10 of 5
    assert sorted(crossing[:5].tolist()) == sorted(crossing[5:].tolist()) == list(range(5))
    assert support_batches(keys[:2], 5, 3, 5, cpu) is None  # all: no order
    assert support_batches(keys[:2], 5, 3, 0, cpu) is None


def test_mini_batches_follow_the_task_not_the_process_that_draws_it() -> None:
    """A meta-batch shared out over processes (each draws its tasks of the stream, as the
    Trainer's ranks do) trains on the mini-batches of one process drawing it all: the
    meta-gradient of the whole is the mean of the halves'."""
    sampler = EpisodeSampler(TRAIN, WAYS, 4, 1, seed=0)
    whole, halves = sampler.tasks(0, 4), [sampler.tasks(0, 2), sampler.tasks(2, 2)]
    reptile = Reptile(MLP(64, (8, 6), WAYS), 0.01, 3, inner_optimizer="adam", inner_batch=5)
    ordered = reptile.ordered(whole.to("cpu"), 3, 5, test=False).batches
    parts = [reptile.ordered(h.to("cpu"), 3, 5, test=False).batches for h in halves]
    assert torch.equal(torch.cat(parts), ordered)
    torch.manual_seed(0)  # (the global state plays no part)
    _, _, grads = meta_gradient(reptile, whole.to("cpu"))
    shared = [meta_gradient(reptile, h.to("cpu"))[2] for h in halves]
    for grad, a, b in zip(grads, *shared, strict=True):
        torch.testing.assert_close(grad, (a + b) / 2)


def test_test_episodes_are_adapted_alike_in_any_batch() -> None:
    """The test-time mini-batches of a fixed episode follow its place in the set, not the
    evaluation batch it falls in; without keys, the first episodes of the set of seed 0."""
    fixed = EpisodeSampler(TRAIN, WAYS, 4, 1).fixed(6, seed=0)
    reptile = Reptile(MLP(64, (8, 6), WAYS), 0.01, 3, eval_inner_steps=5, eval_inner_batch=5)
    alone = torch.cat([reptile.evaluate(b.to("cpu")) for b in fixed.batches(1)])
    for size in (2, 6):
        together = torch.cat([reptile.evaluate(b.to("cpu")) for b in fixed.batches(size)])
        assert torch.equal(together, alone)
    first = next(iter(fixed.batches(1))).to("cpu")
    keyless = replace(first, keys=None)
    assert torch.equal(reptile.evaluate(keyless), reptile.evaluate(first))
    predict = reptile.adapt(first.support_x[0], first.support_y[0], WAYS)
    hits = predict(first.query_x[0]).argmax(-1) == first.query_y[0]
    assert hits.float().mean().item() == pytest.approx(alone[0].item())


@pytest.mark.parametrize("state", ["fresh", "carried"])
@pytest.mark.parametrize("kind", ["conv", "strided", "mlp"])
def test_fast_path_equals_reference_with_adam_and_mini_batches(kind: str, state: str) -> None:
    """The same meta-gradients, test adaptations and (two meta-batches on) carried state,
    whichever task groups and threads the tasks run in."""
    batch = replace(episodes(kind, tasks=4), keys=torch.arange(4))
    options = {"inner_optimizer": "adam", "inner_optimizer_state": state, "inner_batch": 4,
               "eval_inner_batch": 5}  # fmt: skip
    reference = Reptile(tiny(kind), 0.01, 3, eval_inner_steps=4, fast=False, **options)
    meta_gradient(reference, batch)
    loss, metric, grads = meta_gradient(reference, batch)
    for task_chunk, workers in [(None, 1), (1, 2), (3, 1), (3, 2)]:
        fast = Reptile(reference.model, 0.01, 3, eval_inner_steps=4, **options)
        fast.task_chunk, fast.workers = task_chunk, workers
        meta_gradient(fast, batch)
        fast_loss, fast_metric, fast_grads = meta_gradient(fast, batch)
        assert (fast_loss, fast_metric) == pytest.approx((loss, metric), rel=1e-12)
        for a, b in zip(grads, fast_grads, strict=True):
            # atol: a convolution's bias before batch norm has a zero gradient, which the
            # reference computes as rounding noise and Adam scales up to ~1e-9 (eps 1e-8)
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-8)
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(fast.state_dict()[name], value, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(fast.evaluate(batch), reference.evaluate(batch))
    predict = reference.adapt(batch.support_x[0], batch.support_y[0], WAYS)
    fast_predict = fast.adapt(batch.support_x[0], batch.support_y[0], WAYS)
    torch.testing.assert_close(fast_predict(batch.query_x[0]), predict(batch.query_x[0]))


def test_trainer_takes_linearly_annealed_sgd_steps_to_the_adapted_mean(tmp_path) -> None:
    torch.manual_seed(0)  # no batch norm: no parameter with a gradient of rounding noise
    model = MLP(64, (8, 6), WAYS, batch_norm=False)
    reptile = Reptile(model, 0.01, 2, inner_optimizer="adam", inner_batch=4)
    cfg = RunConfig(
        algorithm="reptile", ways=WAYS, shots=2, queries=1, meta_batch=2, iterations=4,
        meta_optimizer="sgd", meta_lr=1.0, lr_schedule="linear", val_every=100,
        checkpoint_every=100, out=str(tmp_path),
    )  # fmt: skip
    sampler = EpisodeSampler(TRAIN, WAYS, 2, 1, seed=0)
    trainer = Trainer(reptile, cfg, sampler, tmp_path, FACTS, progress=False)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    params = list(model.parameters())
    for step in range(4):
        batch = sampler.tasks(step * 2, 2).to("cpu")
        drawn = support_batches(batch.keys, 2 * WAYS, 2, 4, torch.device("cpu"))
        adapted = [
            adapted_by_adam(model, e.support_x, e.support_y, 0.01, 2, b)
            for e, b in zip(batch, drawn, strict=True)
        ]
        before = [p.detach().clone() for p in params]
        trainer.step = step  # (fit counts the steps)
        trainer.train_step()
        epsilon = 1 - step / 4  # meta_step 1 annealed to meta_step_final 0
        for (name, p), theta in zip(model.named_parameters(), before, strict=True):
            mean = torch.stack([a[name] for a in adapted]).mean(0)
            torch.testing.assert_close(p.detach(), theta + epsilon * (mean - theta), msg=name)


CARRIED = {"inner_optimizer": "adam", "inner_optimizer_state": "carried", "inner_batch": 4,
           "eval_inner_batch": 4}  # fmt: skip


def plain_mlp() -> torch.nn.Module:
    """A float64 MLP without batch norm (no gradient of rounding noise for Adam to scale)."""
    torch.manual_seed(0)
    return MLP(64, (8, 6), WAYS, batch_norm=False).double()


def tasks(first: int, count: int, seed: int = 0) -> EpisodeBatch:
    """Tasks of the tiny training split's stream, 4-shot (12 support images), float64."""
    return EpisodeSampler(TRAIN, WAYS, 4, 1, seed=seed).tasks(first, count).to("cpu", DOUBLE)


@pytest.mark.parametrize("fast", [False, True])
def test_carried_state_is_one_adam_kept_from_task_to_task(fast: bool) -> None:
    """Meta-batches of one task: the inner loop is one ``torch.optim.Adam(betas=(0, 0.999))``
    kept from task to task (the weights set to theta before each task, the optimizer not), as
    Nichol et al. 2018's code runs it; a test adaptation starts from that state and leaves it
    as it is."""
    model = plain_mlp()
    reptile = Reptile(model, 0.01, 3, eval_inner_steps=5, fast=fast, **CARRIED)
    outer = torch.optim.SGD(reptile.parameters(), lr=0.5)
    copied = copy.deepcopy(model)
    inner = torch.optim.Adam(copied.parameters(), lr=0.01, betas=(0.0, 0.999))

    def reset() -> None:
        with torch.no_grad():
            for mine, theta in zip(copied.parameters(), model.parameters(), strict=True):
                mine.copy_(theta)

    for step in range(3):
        batch = tasks(step, 1)
        reset()
        drawn = support_batches(batch.keys, 12, 3, 4, torch.device("cpu"))[0]
        adam_steps(copied, inner, batch.support_x[0], batch.support_y[0], 3, drawn)
        outer.zero_grad()
        reptile.meta_loss(batch).loss.backward()
        for theta, adapted in zip(model.parameters(), copied.parameters(), strict=True):
            torch.testing.assert_close(theta.grad, theta.detach() - adapted.detach())
        outer.step()
        carried = reptile.carried.start()
        assert carried.steps == 3 * (step + 1)
        for name, p in copied.named_parameters():
            m, v = carried.moments[name]
            assert int(inner.state[p]["step"]) == carried.steps
            torch.testing.assert_close(m, inner.state[p]["exp_avg"])
            torch.testing.assert_close(v, inner.state[p]["exp_avg_sq"])
    kept = {name: value.clone() for name, value in reptile.state_dict().items()}
    test = tasks(0, 1, seed=1)
    predict = reptile.adapt(test.support_x[0], test.support_y[0], WAYS)
    reset()
    tested = torch.optim.Adam(copied.parameters(), lr=0.01, betas=(0.0, 0.999))
    tested.load_state_dict(inner.state_dict())  # a copy of the state
    keys = reptile.order_keys(None, 1, test=True)
    drawn = support_batches(keys, 12, 5, 4, torch.device("cpu"))[0]
    adam_steps(copied, tested, test.support_x[0], test.support_y[0], 5, drawn)
    torch.testing.assert_close(predict(test.query_x[0]), copied(test.query_x[0]))
    reptile.evaluate(tasks(0, 3, seed=1))
    for name, value in reptile.state_dict().items():
        assert torch.equal(value, kept[name]), name


@pytest.mark.parametrize("fast", [False, True])
def test_a_meta_batch_adds_to_the_carried_state_as_its_tasks_one_after_another(fast: bool) -> None:
    """Every task of a meta-batch of n starts from the carried state (v, t); then
    v <- b2^(n k) v + sum_i sum_s (1 - b2) b2^((n - i) k + (k - s)) g_{i,s}^2, m <- the last
    task's last gradient (beta1 = 0) and t <- t + n k, with task groups and threads too."""
    reptile = Reptile(plain_mlp(), 0.01, 3, fast=fast, task_chunk=2, workers=2, **CARRIED)
    reptile.meta_loss(tasks(0, 2))  # a state to start from
    start = {
        name: (m.clone(), v.clone()) for name, (m, v) in reptile.carried.start().moments.items()
    }
    t = reptile.carried.start().steps
    batch = tasks(2, 3)
    reptile.meta_loss(batch)
    n, k, b2 = 3, 3, 0.999
    v_new = {name: b2 ** (n * k) * v for name, (_, v) in start.items()}
    drawn = support_batches(batch.keys, 12, k, 4, torch.device("cpu"))
    for i, (episode, batches) in enumerate(zip(batch, drawn, strict=True), start=1):
        copied = copy.deepcopy(reptile.model)
        adam = torch.optim.Adam(copied.parameters(), lr=0.01, betas=(0.0, 0.999))
        for name, p in copied.named_parameters():  # the carried state, as torch keeps it
            m, v = start[name]
            adam.state[p] = {"step": torch.tensor(float(t)), "exp_avg": m.clone(),
                             "exp_avg_sq": v.clone()}  # fmt: skip
        grads = adam_steps(copied, adam, episode.support_x, episode.support_y, k, batches)
        for s, g in enumerate(grads, start=1):
            for name in v_new:
                v_new[name] += (1 - b2) * b2 ** ((n - i) * k + (k - s)) * g[name] ** 2
    carried = reptile.carried.start()
    assert carried.steps == t + n * k
    for name, (m, v) in carried.moments.items():
        torch.testing.assert_close(v, v_new[name], msg=name)
        torch.testing.assert_close(m, grads[-1][name], msg=name)


def test_a_resumed_run_carries_the_inner_state_on_exactly(tmp_path) -> None:
    """The carried state is part of the checkpoint: 2 + 2 iterations resumed reach the
    state and parameters of 4 in one go (Reptile's default: carried; no schedule, which would
    anneal the first part's steps over its 2 iterations)."""
    cfg = RunConfig(
        algorithm="reptile", iterations=4, eval_inner_steps=5, lr_schedule="none", **STROKES
    )
    straight = resumed_exactly(cfg, tmp_path)
    assert int(straight["carried.t"]) == 4 * cfg.meta_batch * 5  # 5 inner steps a task
    assert straight["carried.moments"].abs().sum() > 0
    tested = load_trained(tmp_path / "straight", "last")
    assert torch.equal(tested.algorithm.carried.moments, straight["carried.moments"])


def test_carried_state_needs_adam_and_an_inner_loop() -> None:
    with pytest.raises(ValueError, match="inner_optimizer_state carried keeps Adam's state"):
        Reptile(tiny("mlp"), inner_optimizer="sgd", inner_optimizer_state="carried")
    with pytest.raises(ValueError, match="use adam, or inner_optimizer_state fresh"):
        build_algorithm(
            RunConfig(algorithm="reptile", inner_optimizer="sgd", backbone="mlp"), FACTS
        )
    fresh = RunConfig(
        algorithm="reptile", inner_optimizer="sgd", inner_optimizer_state="fresh", backbone="mlp"
    )
    assert build_algorithm(fresh, FACTS).carried is None
    with pytest.raises(ConfigError, match=r"`inner_optimizer_state` is an option of .*reptile"):
        build_algorithm(
            RunConfig(algorithm="protonet", inner_optimizer_state="carried", backbone="mlp"), FACTS
        )
    sinusoid = resolve_config(RunConfig(algorithm="reptile", dataset="sinusoid"))
    assert (sinusoid.inner_optimizer, sinusoid.inner_optimizer_state) == ("sgd", "fresh")


def test_the_papers_settings_are_the_defaults() -> None:
    cfg = resolve_config(RunConfig(algorithm="reptile", dataset="omniglot"))
    paper = {
        "meta_batch": 5, "inner_optimizer": "adam", "inner_optimizer_state": "carried",
        "inner_lr": 0.001, "inner_steps": 5,
        "inner_batch": 10, "eval_inner_steps": 50, "eval_inner_batch": 5,
        "meta_optimizer": "sgd", "meta_lr": 1.0, "lr_schedule": "linear",
    }  # fmt: skip
    assert {k: getattr(cfg, k) for k in paper} == paper
    assert cfg.source_of("inner_optimizer") == "algorithm default (reptile)"
    maml = resolve_config(RunConfig(algorithm="maml", dataset="omniglot"))
    assert (maml.inner_optimizer, maml.inner_batch, maml.meta_optimizer) == ("sgd", 0, "adam")
    assert (maml.meta_lr, maml.lr_schedule) == (1e-3, "none")
    built = Reptile.from_config(cfg, FACTS, lambda ways: tiny("mlp"))
    assert (type(built.update).__name__, built.update.beta1) == ("Adam", 0.0)
    assert (built.inner_batch, built.eval_inner_batch) == (10, 5)
    assert built.carried is not None and built.carried.moments.shape[1] == sum(
        p.numel() for p in built.model.parameters()
    )


def test_adam_refuses_second_order_and_anil_refuses_mini_batches() -> None:
    from lifelong.algorithms.maml import ANIL, FOMAML, MAML

    with pytest.raises(ValueError, match="inner_optimizer adam takes first-order steps"):
        MAML(tiny("mlp"), inner_optimizer="adam")
    FOMAML(tiny("mlp"), inner_optimizer="adam", inner_batch=2)
    with pytest.raises(ValueError, match=r"adapt='head' \(ANIL\) computes"):
        ANIL(tiny("mlp"), first_order=True, inner_batch=2)
