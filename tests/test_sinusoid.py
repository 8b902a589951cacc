"""Sinusoid regression tasks (MAML section 5.1)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.data.episodes import EpisodeBatch
from lifelong.data.sinusoid import SinusoidSampler

FAST = settings(max_examples=50, deadline=None)


def fit_sinusoid(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude and phase ``[B]`` of ``y = A sin(x - phase)`` fitted to points ``[B, n, 1]``:
    ``A sin(x - phase) = A cos(phase) sin x - A sin(phase) cos x`` is linear in the two weights."""
    x, y = x.double(), y.double()
    features = torch.cat([torch.sin(x), -torch.cos(x)], -1)  # [B, n, 2]
    weights = torch.linalg.lstsq(features, y).solution[..., 0]  # [B, 2]
    return weights.norm(dim=-1), torch.atan2(weights[:, 1], weights[:, 0])


@FAST
@given(
    shots=st.integers(5, 20),
    queries=st.integers(1, 20),
    batch_size=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_support_and_query_come_from_one_sinusoid_in_the_ranges(shots, queries, batch_size, seed):
    batch = SinusoidSampler(shots, queries, seed=seed).sample(batch_size)
    assert batch.support_x.shape == batch.support_y.shape == (batch_size, shots, 1)
    assert batch.query_x.shape == batch.query_y.shape == (batch_size, queries, 1)
    assert batch.support_x.dtype == batch.query_y.dtype == torch.float32
    assert (batch.ways, batch.shots, batch.queries, batch.classes) == (0, shots, queries, None)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert x.min() >= -5.0 and x.max() <= 5.0
    amplitude, phase = fit_sinusoid(batch.support_x, batch.support_y)
    assert (amplitude > 0.1 - 1e-3).all() and (amplitude < 5.0 + 1e-3).all()
    assert (phase > -1e-3).all() and (phase < math.pi + 1e-3).all()
    # The queries lie on the function fitted to the support.
    predicted = amplitude[:, None, None] * torch.sin(batch.query_x.double() - phase[:, None, None])
    torch.testing.assert_close(predicted.float(), batch.query_y, atol=1e-3, rtol=0)


def test_fixed_tasks_keep_their_functions_and_cover_the_ranges():
    tasks = SinusoidSampler(5, 10).fixed(4000, seed=0)
    assert len(tasks) == 4000
    batch = EpisodeBatch.cat(list(tasks.batches(512)))
    grid = torch.linspace(-5, 5, 101)
    curves = tasks.curves(grid)
    assert curves.shape == (4000, 101)
    amplitude, phase = tasks.amplitude, tasks.phase
    torch.testing.assert_close(curves[:, 30], amplitude * torch.sin(grid[30] - phase))
    expected = amplitude[:, None, None] * torch.sin(batch.query_x - phase[:, None, None])
    torch.testing.assert_close(batch.query_y, expected)
    # Uniform: means and extremes of U[0.1, 5], U[0, pi] and U[-5, 5].
    assert amplitude.mean().item() == pytest.approx(2.55, abs=0.1)
    assert phase.mean().item() == pytest.approx(math.pi / 2, abs=0.1)
    assert batch.support_x.mean().item() == pytest.approx(0.0, abs=0.1)
    assert 0.1 <= amplitude.min() < 0.15 and 4.95 < amplitude.max() <= 5.0
    assert 0.0 <= phase.min() < 0.05 and math.pi - 0.05 < phase.max() <= math.pi


def test_custom_ranges():
    sampler = SinusoidSampler(4, 4, amplitude=(1.0, 1.0), phase=(0.5, 0.5), x_range=(0.0, 1.0))
    tasks = sampler.fixed(50, seed=3)
    assert (tasks.amplitude == 1.0).all() and (tasks.phase == 0.5).all()
    assert tasks.x.min() >= 0.0 and tasks.x.max() <= 1.0


def assert_same(a: EpisodeBatch, b: EpisodeBatch) -> None:
    for field in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_fixed_sets_depend_only_on_their_seed():
    fresh, used = SinusoidSampler(5, 7, seed=0), SinusoidSampler(5, 7, seed=1)
    used.sample(13)
    a, b = fresh.fixed(9, seed=2), used.fixed(9, seed=2)
    assert_same(EpisodeBatch.cat(list(a.batches(4))), EpisodeBatch.cat(list(b.batches(9))))
    assert [len(x) for x in a.batches(4)] == [4, 4, 1]
    assert not torch.equal(a.amplitude, fresh.fixed(9, seed=3).amplitude)
    # A fixed set does not consume the sampler's own stream.
    assert_same(fresh.sample(2), SinusoidSampler(5, 7, seed=0).sample(2))


def test_to_keeps_float_targets():
    moved = SinusoidSampler(5, 5).sample(2).to("cpu", dtype=torch.float64)
    assert moved.support_x.dtype == moved.support_y.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shots": 0, "queries": 5}, "shots must be a positive integer, got 0"),
        ({"shots": 5, "queries": -1}, "queries must be a positive integer, got -1"),
        ({"shots": 5, "queries": 5, "amplitude": (5.0, 0.1)}, r"amplitude .* \(5.0, 0.1\)"),
        ({"shots": 5, "queries": 5, "x_range": (1.0, -1.0)}, r"x_range .* \(1.0, -1.0\)"),
    ],
)
def test_bad_settings_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SinusoidSampler(**kwargs)


@pytest.mark.parametrize("call", ["sample", "fixed"])
def test_empty_requests_are_rejected(call):
    sampler = SinusoidSampler(5, 5)
    with pytest.raises(ValueError, match="must be positive, got 0"):
        sampler.sample(0) if call == "sample" else sampler.fixed(0, seed=0)
