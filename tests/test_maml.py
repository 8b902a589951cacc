"""MAML family: the second-order meta-gradient against finite differences, the fast path
against the reference loop over tasks (every variant, float64), the defining properties of
FOMAML, ANIL and Meta-SGD, adaptation, errors, and learning sinusoids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lifelong.algorithms.functional import TaskForward, _BatchNorm
from lifelong.algorithms.maml import ANIL, FOMAML, MAML, MIN_STEP_WEIGHT, MetaSGD, step_weights
from lifelong.algorithms.registry import algorithm_class
from lifelong.algorithms.reptile import Reptile
from lifelong.data.episodes import EpisodeBatch
from lifelong.data.sinusoid import SinusoidSampler
from lifelong.models.conv4 import Conv4
from lifelong.models.mlp import MLP
from lifelong.pipeline.config import ConfigError, RunConfig

WAYS = 3


def tiny(kind: str) -> nn.Module:
    """Tiny float64 models with batch norm: Conv-4 with pooling (16x16), strided Conv-4
    (8x8), MLP with batch norm (8x8 inputs)."""
    torch.manual_seed(0)
    if kind == "conv":
        model = Conv4(1, 16, out_features=WAYS, hidden=4, track_running_stats=False)
    elif kind == "strided":
        model = Conv4(1, 8, out_features=WAYS, hidden=4, strided=True, track_running_stats=False)
    else:
        model = MLP(64, (8, 6), WAYS, batch_norm=True, track_running_stats=False)
    return model.double()


def episodes(kind: str = "conv", tasks: int = 4, shots: int = 2, queries: int = 2, seed: int = 0):
    """Random float64 episodes whose images fit ``tiny(kind)``."""
    size = 16 if kind == "conv" else 8
    g = torch.Generator().manual_seed(seed)

    def part(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(tasks, WAYS * per_class, 1, size, size, generator=g, dtype=torch.float64)
        y = torch.arange(WAYS).repeat_interleave(per_class).expand(tasks, -1).contiguous()
        return x, y

    return EpisodeBatch(*part(shots), *part(queries), WAYS, shots)


def meta_gradient(maml: MAML, batch: EpisodeBatch) -> tuple[float, float, list[torch.Tensor]]:
    out = maml.meta_loss(batch)
    params = list(maml.parameters())
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)  # FOMAML: step 0's BNWB
    return (
        out.loss.item(),
        out.metric.item(),
        [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)],
    )


def directional_difference(maml: MAML, batch: EpisodeBatch, direction: list, eps: float) -> float:
    """Central finite difference of the meta-loss along ``direction``."""
    params = list(maml.parameters())
    values = []
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * eps * d)
            values.append(maml.meta_loss(batch).loss.item())
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * eps * d)
    return (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_second_order_meta_gradient_matches_finite_differences(fast: bool, kind: str) -> None:
    batch = episodes(kind, tasks=2)
    maml = MAML(tiny(kind), inner_lr=0.5, inner_steps=2, fast=fast)
    first_order = MAML(maml.model, inner_lr=0.5, inner_steps=2, first_order=True, fast=fast)
    _, _, grads = meta_gradient(maml, batch)
    _, _, fo_grads = meta_gradient(first_order, batch)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in maml.parameters()]
        numeric = directional_difference(maml, batch, direction, eps=1e-6)
        analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, direction, strict=True))
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
        # the second-order terms matter here: first order misses the finite difference
        fo = sum(float((gr * d).sum()) for gr, d in zip(fo_grads, direction, strict=True))
        assert abs(fo - numeric) > 1e-4 * abs(numeric)


VARIANT_OPTIONS = [
    {},
    {"first_order": True},
    {"adapt": "head"},
    {"adapt": "head", "first_order": True},
    {"meta_sgd": True},
    {"per_step_lr": True, "multi_step_loss": True},
    {"meta_sgd": True, "per_step_lr": True, "first_order": True},
    {"per_step_bn": True, "per_step_lr": True, "multi_step_loss": True},
    {"per_step_bn": True, "first_order": True},
]


@pytest.mark.parametrize("options", VARIANT_OPTIONS, ids=str)
@pytest.mark.parametrize("kind", ["conv", "strided", "mlp"])
def test_fast_path_equals_reference_loop(options: dict, kind: str) -> None:
    batch = episodes(kind, tasks=5)
    reference = MAML(tiny(kind), inner_lr=0.3, inner_steps=3, fast=False, **options)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # distinct learned rates and step weights, to catch mix-ups
        for rates in [
            *(reference.inner_lrs or {}).values(),
            *(reference.step_norms or {}).values(),
        ]:
            rates.mul_(torch.rand(rates.shape, generator=g, dtype=rates.dtype) + 0.5)
        reference.step_weights.copy_(torch.tensor([0.2, 0.3, 0.5]))
    loss, metric, grads = meta_gradient(reference, batch)
    assert reference.fast_forward is None
    for task_chunk, workers in [(None, 1), (1, 2), (2, 2), (5, 1)]:
        fast = MAML(reference.model, inner_lr=0.3, inner_steps=3, **options)
        fast.load_state_dict(reference.state_dict())  # learned rates too
        fast.task_chunk, fast.workers = task_chunk, workers
        assert fast.fast_forward is not None
        fast_loss, fast_metric, fast_grads = meta_gradient(fast, batch)
        assert fast_loss == pytest.approx(loss, rel=1e-12)
        assert fast_metric == pytest.approx(metric, abs=1e-12)
        for (name, _), a, b in zip(fast.named_parameters(), grads, fast_grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(fast.evaluate(batch), reference.evaluate(batch))


def test_worker_threads_keep_the_callers_autocast() -> None:
    """Autocast is per thread: the tasks shared out to worker threads run in bfloat16 when the
    caller asked for it, as in the calling thread (else they silently ran in float32)."""
    batch = episodes("conv", tasks=4).to("cpu", torch.float32)
    model = tiny("conv").float()
    one, two = (MAML(model, inner_lr=0.3, inner_steps=1, workers=w) for w in (1, 2))
    with torch.autocast("cpu", torch.bfloat16):
        in_caller, in_workers = (meta_gradient(m, batch)[2] for m in (one, two))
    full = meta_gradient(two, batch)[2]
    for a, b in zip(in_caller, in_workers, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert not all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(in_workers, full, strict=True)
    )


@pytest.mark.parametrize("learner", [MAML, Reptile])
@pytest.mark.parametrize("fast", [True, False])
def test_the_precision_option_runs_the_tasks_under_autocast(fast: bool, learner: type) -> None:
    """``precision="bfloat16"``: what the caller's bfloat16 autocast gives (evaluation and
    adapt exactly; the meta-gradient to bfloat16 rounding, as the outer backward pass runs
    outside autocast), which is not float32's; for MAML and Reptile alike."""
    batch = episodes("conv", tasks=4).to("cpu", torch.float32)
    model = tiny("conv").float()
    option, plain = (
        learner(model, 0.3, 1, fast=fast, precision=p) for p in ("bfloat16", "float32")
    )
    with torch.autocast("cpu", torch.bfloat16):
        caller = meta_gradient(plain, batch)[2]
        caller_eval = plain.evaluate(batch)
        caller_out = plain.adapt(batch.support_x[0], batch.support_y[0], 3)(batch.query_x[0])
    own, full = meta_gradient(option, batch)[2], meta_gradient(plain, batch)[2]

    def distance(x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
        return float(torch.cat([(a - b).flatten() for a, b in zip(x, y, strict=True)]).norm())

    assert distance(own, caller) < 0.02 * distance(full, [g * 0 for g in full])
    assert distance(own, full) > 10 * distance(own, caller)
    torch.testing.assert_close(option.evaluate(batch), caller_eval)
    out = option.adapt(batch.support_x[0], batch.support_y[0], 3)(batch.query_x[0])
    torch.testing.assert_close(out, caller_out)
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        MAML(model, precision="int8")  # type: ignore[arg-type]


def test_float32_omniglot_shapes_agree() -> None:
    """The real layout (Conv-4 with 64 filters on 28x28) in float32: the fast path's
    meta-gradient equals the loop's to float tolerance."""
    torch.manual_seed(0)
    model = Conv4(1, 28, out_features=5, track_running_stats=False)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(3).expand(2, -1).contiguous()
    batch = EpisodeBatch(
        torch.rand(2, 5, 1, 28, 28, generator=g),
        labels[:, ::3].contiguous(),
        torch.rand(2, 15, 1, 28, 28, generator=g),
        labels,
        5,
        1,
    )
    _, _, grads = meta_gradient(MAML(model, fast=False), batch)
    _, _, fast = meta_gradient(MAML(model, workers=2), batch)
    scale = torch.cat([gr.flatten() for gr in grads]).norm()
    for a, b in zip(grads, fast, strict=True):
        assert (a - b).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [((5, 6, 3, 3), False), ((5, 6, 3, 3), True), ((7, 6), False)],
    ids=["nchw", "channels_last", "2d"],
)
def test_batch_norm_double_backward_is_exact(shape: tuple, channels_last: bool) -> None:
    """The hand-derived double backward against numerical derivatives and against native
    batch norm's, with gradients in either memory layout."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda *a: _BatchNorm.apply(*a, 1e-5), (x, weight, bias))
    grad_y = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)

    def second_derivatives(batch_norm) -> tuple[torch.Tensor, ...]:
        first = torch.autograd.grad(
            batch_norm(x, weight, bias), (x, weight, bias), grad_y, create_graph=True
        )
        outer = first[0].sin().sum() + first[1].square().sum() + first[2].pow(3).sum()
        return torch.autograd.grad(outer, (x, weight, grad_y))

    native = second_derivatives(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True))
    ours = second_derivatives(lambda *a: _BatchNorm.apply(*a, 1e-5))
    for a, b in zip(ours, native, strict=True):
        torch.testing.assert_close(a, b)


def test_fomaml_gradient_is_the_query_gradient_at_adapted_parameters() -> None:
    batch = episodes("conv", tasks=2)
    model = tiny("conv")
    _, _, grads = meta_gradient(MAML(model, inner_lr=0.3, inner_steps=2, first_order=True), batch)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    for episode in batch:
        params = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
        for _ in range(2):
            out = F.cross_entropy(
                functional_call(model, params, (episode.support_x,)), episode.support_y
            )
            step = torch.autograd.grad(out, list(params.values()))
            params = {
                n: (params[n] - 0.3 * s).detach().requires_grad_()
                for n, s in zip(names, step, strict=True)
            }
        query = F.cross_entropy(functional_call(model, params, (episode.query_x,)), episode.query_y)
        for e, q in zip(expected, torch.autograd.grad(query, list(params.values())), strict=True):
            e += q / len(batch)
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_step_weights_move_from_uniform_to_the_last_step(steps: int) -> None:
    """MAML++'s multi-step loss weights: uniform, then linearly to the last step, never below
    the floor, always summing to 1."""
    torch.testing.assert_close(step_weights(steps, 0, 100), torch.full((steps,), 1 / steps))
    previous = step_weights(steps, 0, 100)
    for iteration in (10, 50, 99, 100, 1000):
        w = step_weights(steps, iteration, 100)
        torch.testing.assert_close(w.sum(), torch.tensor(1.0))
        assert (w[:-1] <= previous[:-1]).all() and w[-1] >= previous[-1]
        previous = w
    if steps > 1:
        assert torch.allclose(previous[:-1], torch.tensor(MIN_STEP_WEIGHT / steps))
        half = step_weights(steps, 50, 100)
        assert torch.allclose(half[:-1], torch.tensor(0.5 / steps))


def test_the_trainer_iteration_drives_derivative_order_and_step_weight_annealing() -> None:
    """``first_order_steps=2``: iterations 0 and 1 take FOMAML's meta-gradient, iteration 2
    MAML's; ``step_weight_annealing`` sets the multi-step weights of the iteration."""
    batch = episodes("conv", tasks=2)
    options = {"inner_lr": 0.3, "inner_steps": 2, "multi_step_loss": True}
    annealed = MAML(tiny("conv"), **options, step_weight_annealing=10, first_order_steps=2)
    plain, first = MAML(tiny("conv"), **options), MAML(tiny("conv"), **options, first_order=True)
    for iteration, reference in ((0, first), (1, first), (2, plain), (7, plain)):
        annealed.at_iteration(iteration)
        weights = step_weights(2, iteration, 10)
        torch.testing.assert_close(annealed.step_weights, weights)
        reference.step_weights.copy_(weights)
        for a, b in zip(meta_gradient(annealed, batch)[2], meta_gradient(reference, batch)[2],
                        strict=True):  # fmt: skip
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="step_weight_annealing anneals the multi_step_loss"):
        MAML(tiny("mlp"), step_weight_annealing=5)


@pytest.mark.parametrize("fast", [False, True])
def test_anil_adapts_only_the_head(fast: bool) -> None:
    batch = episodes("conv", tasks=2)
    anil = MAML(tiny("conv"), inner_lr=0.3, inner_steps=2, adapt="head", fast=fast)
    assert all(name.startswith("head.") for name in anil.adapted)
    sx, sy = batch.support_x, batch.support_y
    if not fast:
        sx, sy = sx[0], sy[0]
    final = anil.adaptation(sx, sy, WAYS, 2, create_graph=False, detach=True).trajectory[-1]
    for name, p in anil.model.named_parameters():
        moved = not torch.equal(final[name].detach().reshape(-1, *p.shape)[0], p.detach())
        assert moved == name.startswith("head."), name
    _, _, grads = meta_gradient(anil, batch)
    first_conv = next(n for n, _ in anil.named_parameters())
    assert first_conv == "model.features.0.0.weight"
    assert grads[0].abs().sum() > 0  # the body still learns, through the outer loop


def test_meta_sgd_rates_are_learned() -> None:
    model = tiny("mlp")
    maml = MAML(model, inner_lr=0.2, inner_steps=2, meta_sgd=True, per_step_lr=True)
    for name, p in model.named_parameters():
        rates = maml.inner_lrs[name.replace(".", ":")]
        assert rates.shape == (2, *p.shape)
        assert torch.all(rates == 0.2)
    out = maml.meta_loss(episodes("mlp"))
    out.loss.backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in maml.inner_lrs.values())
    scalar = MAML(model, inner_lr=0.2, inner_steps=3, per_step_lr=True)
    assert all(r.shape == (3,) for r in scalar.inner_lrs.values())


@pytest.mark.parametrize("fast", [False, True])
def test_per_step_batch_norm_weights_are_meta_learned_not_adapted(fast: bool) -> None:
    """MAML++ BNWB: after step k the batch norms use row k-1 of their own weights (learned by
    the outer loop; the inner loop leaves them alone); step 0 uses the model's."""
    model = tiny("conv")
    maml = MAML(model, inner_lr=0.3, inner_steps=2, eval_inner_steps=4, per_step_bn=True, fast=fast)
    norms = {
        f"{name}.{p}"
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    assert norms and not norms & set(maml.adapted)
    assert {n.replace(":", ".") for n in maml.step_norms} == norms
    assert all(rows.shape[0] == 2 for rows in maml.step_norms.values())
    batch = episodes("conv", tasks=2)
    maml.meta_loss(batch).loss.backward()
    for rows in maml.step_norms.values():
        assert rows.grad is not None and torch.all(rows.grad.abs().sum(-1) > 0)  # both steps
    sx, sy = batch.support_x, batch.support_y
    if not fast:
        sx, sy = sx[0], sy[0]
    trajectory = maml.adaptation(sx, sy, WAYS, 4, create_graph=False, detach=True).trajectory
    for step, params in enumerate(trajectory):
        for name in norms:
            want = (
                dict(model.named_parameters())[name]
                if step == 0
                else maml.step_norms[name.replace(".", ":")][min(step, 2) - 1]
            )
            got = params[name].reshape(-1, *want.shape)[0]
            assert torch.equal(got, want.detach()), (step, name)


def test_variants_are_registered_classes() -> None:
    assert {algorithm_class(n) for n in ("maml", "fomaml", "anil", "metasgd")} == {
        MAML,
        FOMAML,
        ANIL,
        MetaSGD,
    }
    model = tiny("mlp")
    assert FOMAML(model).first_order
    assert ANIL(model, inner_steps=3).scope == "head"
    assert MetaSGD(model).inner_lrs is not None
    assert not MAML(model).first_order
    with pytest.raises(ValueError, match=r"unknown algorithm .reptil..*did you mean .reptile."):
        algorithm_class("reptil")


@pytest.mark.parametrize("fast", [False, True])
def test_adapt_returns_a_graph_free_predictor(fast: bool) -> None:
    batch = episodes("conv", tasks=1)
    maml = MAML(tiny("conv"), inner_lr=0.3, eval_inner_steps=2, fast=fast)
    predict = maml.adapt(batch.support_x[0], batch.support_y[0], WAYS)
    logits = predict(batch.query_x[0])
    assert logits.shape == (WAYS * 2, WAYS) and not logits.requires_grad
    narrow = maml.adapt(batch.support_x[0][:4], batch.support_y[0][:4], 2)
    assert narrow(batch.query_x[0]).shape == (WAYS * 2, 2)  # fewer ways: the first outputs
    with pytest.raises(ValueError, match="4-way tasks need 4 outputs, but the model's head has 3"):
        maml.adapt(batch.support_x[0], batch.support_y[0], 4)
    assert maml.evaluate(batch).shape == (1,)


def test_unsupported_models_fall_back_to_the_loop() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh())
            self.head = nn.Linear(5, WAYS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    maml = MAML(Tiny().double())
    assert maml.fast_forward is None and TaskForward.of(tiny("conv")) is not None
    out = maml.meta_loss(episodes("mlp"))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_invalid_settings_are_named() -> None:
    tracked = Conv4(1, 16, out_features=WAYS, hidden=4, track_running_stats=True)
    with pytest.raises(ValueError, match=r"'features\.0\.1' tracks running statistics"):
        MAML(tracked)
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 0 for MAML, got -1"):
        MAML(tiny("mlp"), inner_steps=-1)
    with pytest.raises(ValueError, match="multi_step_loss and per_step_bn need inner steps"):
        MAML(tiny("mlp"), inner_steps=0, multi_step_loss=True)
    with pytest.raises(ValueError, match=r"\(adapt='head'\) computes the body's features once"):
        MAML(tiny("mlp"), adapt="head", per_step_bn=True)
    with pytest.raises(ValueError, match="per_step_bn needs a model with affine batch norm"):
        MAML(MLP(1, (4,), 1), per_step_bn=True)
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 1 for Reptile, got 0"):
        Reptile(tiny("mlp"), inner_steps=0)  # no step: theta' = theta, no update
    with pytest.raises(ValueError, match="adapt must be 'all' or 'head', got 'body'"):
        MAML(tiny("mlp"), adapt="body")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a model with a `head`"):
        MAML(nn.Sequential(nn.Linear(2, 2)), adapt="head")


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_zero_training_steps_give_the_gradient_of_the_plain_query_loss(
    kind: str, fast: bool
) -> None:
    """``inner_steps=0`` is joint training on all tasks (the pre-training baseline of Finn et
    al. 2017, section 5.1); test-time adaptation still takes ``eval_inner_steps`` steps."""
    batch = episodes(kind)
    maml = MAML(tiny(kind), inner_lr=0.3, inner_steps=0, eval_inner_steps=2, fast=fast)
    loss, _, grads = meta_gradient(maml, batch)
    model = maml.model
    plain = sum(
        F.cross_entropy(model(batch.query_x[i]), batch.query_y[i]) for i in range(len(batch))
    ) / len(batch)
    expected = torch.autograd.grad(plain, list(model.parameters()))
    assert loss == pytest.approx(plain.item(), rel=1e-12)
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    adapted = maml.adapt(batch.support_x[0], batch.support_y[0], WAYS)(batch.query_x[0])
    assert not torch.allclose(adapted, model(batch.query_x[0]))  # two steps at test time
    assert RunConfig(algorithm="maml", inner_steps=0).inner_steps == 0
    with pytest.raises(ConfigError, match="`inner_steps` must be 0 or more, got -1"):
        RunConfig(algorithm="maml", inner_steps=-1)


def test_meta_training_learns_sinusoids() -> None:
    """A hundred meta-iterations cut the post-adaptation MSE on fixed test tasks."""
    torch.manual_seed(0)
    maml = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1, regression=True)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-2)
    sampler = SinusoidSampler(shots=10, queries=10, seed=0)
    test = next(sampler.fixed(200, seed=99).batches(200))
    before = maml.evaluate(test).mean().item()
    for _ in range(100):
        optimizer.zero_grad()
        maml.meta_loss(sampler.sample(10)).loss.backward()
        optimizer.step()
    assert maml.evaluate(test).mean().item() < 0.75 * before


def test_small_tasks_run_side_by_side_on_the_cpu() -> None:
    """The default task group: as many tasks as keep the first convolution's outputs within
    GROUP_ACTIVATIONS values; dense models (no convolution) take the whole batch."""

    def batch(ways: int, shots: int, queries: int, size: int = 28) -> EpisodeBatch:
        x = torch.zeros(32, ways * max(shots, queries), 1, size, size)
        y = torch.zeros(32, ways * max(shots, queries), dtype=torch.long)
        return EpisodeBatch(
            x[:, : ways * shots], y[:, : ways * shots], x[:, : ways * queries],
            y[:, : ways * queries], ways, shots,
        )  # fmt: skip

    def chunk(strided: bool, *shape: int) -> int:
        model = Conv4(1, 28, out_features=5, hidden=64, strided=strided, track_running_stats=False)
        return MAML(model)._default_chunk(batch(*shape))

    assert chunk(True, 5, 1, 1) == 32  # the paper's Omniglot setting: 10 images a task
    assert chunk(True, 5, 1, 15) == 4
    assert chunk(False, 5, 1, 15) == 1  # 64 x 28 x 28 values an image: one task at a time
    mlp = MAML(MLP(784, (8,), 5, batch_norm=True, track_running_stats=False))
    assert mlp._default_chunk(batch(5, 1, 15)) == 32
