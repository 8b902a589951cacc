"""EpisodeSampler: properties of N-way K-shot Q-query episodes over many random settings.

The test datasets store each image's global index in its pixels (little-endian bytes), so an
episode can be traced back to the exact images and classes it was built from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import (
    EpisodeBatch,
    EpisodeSampler,
    EpisodeSet,
    TaskSampler,
    TaskStream,
    to_device,
)
from lifelong.data.sinusoid import SinusoidSampler

FAST = settings(max_examples=50, deadline=None)
BYTES = torch.tensor([1, 256, 256**2, 256**3])


def indexed_dataset(counts: list[int], name: str = "toy/train") -> ClassDataset:
    """Image ``i`` is ``[1, 2, 2]`` holding the bytes of ``i``; class ``k`` has ``counts[k]``."""
    index = torch.arange(sum(counts))
    images = ((index[:, None] // BYTES) % 256).to(torch.uint8).reshape(-1, 1, 2, 2)
    return ClassDataset(images, counts, [ClassInfo(f"c{k}") for k in range(len(counts))], name)


def image_index(images: torch.Tensor) -> torch.Tensor:
    """The global indices ``[...]`` of images ``[..., 1, 2, 2]`` of an :func:`indexed_dataset`."""
    return (images.flatten(-3).long() * BYTES).sum(-1)


def class_of(ds: ClassDataset, index: torch.Tensor) -> torch.Tensor:
    """The class of each global image index."""
    return torch.searchsorted(ds.offsets, index, right=True) - 1


@st.composite
def sampler_settings(draw):
    counts = draw(st.lists(st.integers(2, 12), min_size=1, max_size=25))
    ways = draw(st.integers(1, len(counts)))
    shots = draw(st.integers(1, min(counts) - 1))
    queries = draw(st.integers(1, min(counts) - shots))
    seed = draw(st.integers(0, 2**32 - 1))
    return counts, ways, shots, queries, seed


@FAST
@given(setting=sampler_settings(), batch_size=st.integers(1, 6))
def test_episodes_are_well_formed(setting, batch_size):
    counts, ways, shots, queries, seed = setting
    ds = indexed_dataset(counts)
    batch = EpisodeSampler(ds, ways, shots, queries, seed=seed).sample(batch_size)

    assert batch.support_x.shape == (batch_size, ways * shots, 1, 2, 2)
    assert batch.query_x.shape == (batch_size, ways * queries, 1, 2, 2)
    assert batch.support_x.dtype == batch.query_x.dtype == torch.uint8
    assert batch.classes.shape == (batch_size, ways)
    assert (batch.ways, batch.shots, batch.queries, len(batch)) == (
        ways,
        shots,
        queries,
        batch_size,
    )
    labels = torch.arange(ways)
    assert torch.equal(batch.support_y, labels.repeat_interleave(shots).expand(batch_size, -1))
    assert torch.equal(batch.query_y, labels.repeat_interleave(queries).expand(batch_size, -1))

    support, query = image_index(batch.support_x), image_index(batch.query_x)
    for b in range(batch_size):
        classes = batch.classes[b]
        assert len(set(classes.tolist())) == ways
        # Every image of label j belongs to the class behind label j.
        assert torch.equal(class_of(ds, support[b]), classes[batch.support_y[b]])
        assert torch.equal(class_of(ds, query[b]), classes[batch.query_y[b]])
        # No image is used twice: support and query are disjoint.
        used = torch.cat([support[b], query[b]]).tolist()
        assert len(set(used)) == len(used)


def test_classes_and_images_are_drawn_uniformly_in_random_order():
    counts = [3, 12] * 10
    ds = indexed_dataset(counts)
    batch = EpisodeSampler(ds, ways=5, shots=1, queries=2, seed=0).sample(2000)
    classes = batch.classes
    # The class order is random: sorted only by chance (1 in 120 for 5 classes).
    in_order = (classes.diff(dim=1) > 0).all(dim=1).float().mean().item()
    assert 0.0 < in_order < 0.05
    # Each class at each label position, near 2000 / 20 = 100 times.
    for position in range(5):
        frequency = torch.bincount(classes[:, position], minlength=20)
        assert frequency.min() > 50 and frequency.max() < 150
    # Every image of every class is used, also in classes larger than shots + queries.
    used = image_index(torch.cat([batch.support_x, batch.query_x], 1)).unique()
    assert used.tolist() == list(range(sum(counts)))


def assert_same(a: EpisodeBatch, b: EpisodeBatch) -> None:
    for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y), field


def make_stream(kind: str, seed: int) -> TaskStream:
    if kind == "sinusoid":
        return SinusoidSampler(5, 5, seed=seed)
    return EpisodeSampler(indexed_dataset([5] * 30), 5, 1, 3, seed=seed)


@pytest.mark.parametrize("kind", ["episodes", "sinusoid"])
def test_a_task_depends_on_the_seed_and_its_index_alone(kind):
    """However the stream is read (batch sizes, ranks drawing their shares of a step, a
    resumed position), task i is the same; another seed gives other tasks."""
    reference = make_stream(kind, 7).tasks(0, 12)
    read = make_stream(kind, 7)
    assert_same(EpisodeBatch.cat([read.sample(n) for n in (4, 1, 7)]), reference)
    for ranks in (2, 3, 4):  # step t of meta-batch 4 on W ranks: rank r draws 4/W from 4t + r*4/W
        share = 12 // ranks
        drawn = [make_stream(kind, 7).tasks(r * share, share) for r in range(ranks)]
        assert_same(EpisodeBatch.cat(drawn), reference)
    resumed = make_stream(kind, 7)
    resumed.load_state_dict(make_stream(kind, 7).state_dict() | {"position": torch.tensor(5)})
    assert_same(resumed.sample(7), reference[5:12])
    assert read.state_dict()["position"] == 12
    other = make_stream(kind, 8).tasks(0, 12)
    assert not torch.equal(reference.support_x, other.support_x)
    with pytest.raises(ValueError, match="count >= 1"):
        read.tasks(3, 0)
    with pytest.raises(ValueError, match="older than keyed task streams"):
        read.load_state_dict({"generator": torch.zeros(5016, dtype=torch.uint8)})


@FAST
@given(
    setting=sampler_settings(),
    fixed_seed=st.integers(0, 1000),
    drawn_before=st.integers(0, 5),
    batch_sizes=st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
def test_fixed_sets_depend_only_on_their_seed(setting, fixed_seed, drawn_before, batch_sizes):
    counts, ways, shots, queries, seed = setting
    ds = indexed_dataset(counts)
    fresh = EpisodeSampler(ds, ways, shots, queries, seed=seed)
    used = EpisodeSampler(ds, ways, shots, queries, seed=seed + 1)
    for _ in range(drawn_before):
        used.sample(2)
    a, b = fresh.fixed(11, seed=fixed_seed), used.fixed(11, seed=fixed_seed)
    assert len(a) == len(b) == 11
    # The same tasks, whatever the samplers drew before and however they are batched.
    first = EpisodeBatch.cat(list(a.batches(batch_sizes[0])))
    assert_same(first, EpisodeBatch.cat(list(b.batches(batch_sizes[1]))))
    assert len(first) == 11
    assert [len(x) for x in a.batches(4)] == [4, 4, 3]
    # Fixed sets do not consume the sampler's own stream.
    assert_same(fresh.sample(3), EpisodeSampler(ds, ways, shots, queries, seed=seed).sample(3))


def test_fixed_sets_of_other_seeds_differ():
    sampler = EpisodeSampler(indexed_dataset([5] * 30), 5, 1, 3)
    a, b = (next(sampler.fixed(16, seed=s).batches(16)) for s in (0, 1))
    assert not torch.equal(a.classes, b.classes)


def test_rotation_classes_are_sampled_as_classes():
    base = indexed_dataset([3] * 5)
    rotated = base.with_rotations()
    batch = EpisodeSampler(rotated, ways=20, shots=1, queries=2, seed=0).sample(2)
    assert sorted(batch.classes[0].tolist()) == list(range(20))
    for episode, classes in zip(batch, batch.classes, strict=True):
        for image, label in zip(episode.support_x, episode.support_y, strict=True):
            info = rotated.classes[int(classes[label])]
            source = torch.rot90(image, -(info.rotation // 90), dims=(1, 2))
            assert int(class_of(base, image_index(source))) == int(classes[label]) // 4


def test_to_turns_images_into_floats_and_keeps_labels():
    batch = EpisodeSampler(indexed_dataset([300, 300]), 2, 1, 1, seed=0).sample(3)
    moved = batch.to("cpu")
    assert moved.support_x.dtype == torch.float32
    assert torch.equal(moved.support_x, batch.support_x.float() / 255)
    assert moved.support_y.dtype == torch.long
    assert torch.equal(moved.classes, batch.classes)
    assert torch.equal(batch[1:3].query_x, batch.query_x[1:3])
    assert torch.equal(batch[2].support_x, batch.support_x[2])


SPLIT = "omniglot/vinyals/test"


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "words"),
    [
        (4, 1, 1, ["4-way", "only 3", SPLIT]),
        (2, 3, 4, ["3 shots + 4 queries = 7", "'c1'", "only 6", SPLIT]),
        (0, 1, 1, ["ways", "0"]),
        (2, -1, 1, ["shots", "-1"]),
        (2, 1, 0, ["queries", "0"]),
    ],
)
def test_bad_settings_are_explained(ways, shots, queries, words):
    ds = indexed_dataset([8, 6, 9], name=SPLIT)
    with pytest.raises(ValueError) as error:
        EpisodeSampler(ds, ways, shots, queries)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("call", ["sample", "fixed"])
def test_empty_requests_are_rejected(call):
    sampler = EpisodeSampler(indexed_dataset([4, 4]), 2, 1, 1)
    with pytest.raises(ValueError, match="must be positive, got 0"):
        sampler.sample(0) if call == "sample" else sampler.fixed(0, seed=0)


def test_numpy_integers_are_accepted_and_booleans_rejected():
    ds = indexed_dataset([4, 4, 4])
    sampler = EpisodeSampler(ds, np.int64(2), np.int32(1), np.int16(1))
    assert sampler.sample(2).support_x.shape[1] == 2
    with pytest.raises(ValueError, match="ways must be a positive integer, got True"):
        EpisodeSampler(ds, True, 1, 1)


def test_large_fixed_sets_are_drawn_in_chunks_deterministically():
    sampler = EpisodeSampler(indexed_dataset([3] * 6), 2, 1, 1)
    big = sampler.fixed(2500, seed=4)
    assert len(big) == 2500
    assert torch.equal(big.index, sampler.fixed(2500, seed=4).index)
    assert not torch.equal(big.index[:1024], big.index[1024:2048])


def test_both_samplers_are_task_samplers_and_their_fixed_sets_episode_sets():
    samplers = [EpisodeSampler(indexed_dataset([6] * 5), 3, 2, 2), SinusoidSampler(5, 5)]
    for sampler in samplers:
        assert isinstance(sampler, TaskSampler)
        assert isinstance(sampler.fixed(3, seed=0), EpisodeSet)


def test_to_device_scales_uint8_images_and_keeps_labels():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.equal(to_device(images, "cpu"), torch.tensor([0.0, 0.2, 1.0]))
    assert to_device(images, "cpu", torch.float64).dtype == torch.float64
    labels = torch.tensor([2, 0])
    assert (
        torch.equal(to_device(labels, "cpu"), labels)
        and to_device(labels, "cpu").dtype == torch.int64
    )
    assert to_device(torch.ones(2, dtype=torch.float64), "cpu").dtype == torch.float32
