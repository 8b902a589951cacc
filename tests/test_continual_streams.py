"""Class and sine streams: each example once, held-out examples disjoint, seeded orders."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.continual.streams import ClassStream, SineStream, task_sequence
from lifelong.data.classes import ClassDataset, ClassInfo

BYTES = torch.tensor([1, 256])


def indexed_dataset(classes: int, per_class: int = 20) -> ClassDataset:
    """Image ``i`` is ``[1, 1, 2]`` holding the two bytes of ``i``."""
    index = torch.arange(classes * per_class)
    images = ((index[:, None] // BYTES) % 256).to(torch.uint8).reshape(-1, 1, 1, 2)
    infos = [ClassInfo(f"c{k}") for k in range(classes)]
    return ClassDataset(images, [per_class] * classes, infos, "toy/test")


def image_index(images: torch.Tensor) -> torch.Tensor:
    return (images.flatten(1).long() * BYTES).sum(-1)


@settings(max_examples=30, deadline=None)
@given(
    classes=st.integers(1, 12),
    per_step=st.sampled_from([1, 2, 3]),
    train=st.integers(1, 10),
    test=st.integers(1, 5),
    passes=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_class_stream_invariants(classes, per_step, train, test, passes, seed):
    classes = classes * per_step
    ds = indexed_dataset(40)
    stream = ClassStream(ds, classes, per_step, train, test, passes, seed)
    assert len(stream) == classes // per_step
    assert stream.boundaries == [per_step * (i + 1) for i in range(len(stream))]
    seen_train, seen_test = [], []
    for i, step in enumerate(stream):
        assert step.index == i
        assert step.classes.tolist() == list(range(i * per_step, (i + 1) * per_step))
        train_idx, test_idx = image_index(step.train_x), image_index(step.test_x)
        # every label is the image's true class (through class_ids), train and test alike
        true_class = stream.class_ids[step.train_y]
        assert torch.equal(train_idx // 20, true_class)
        assert torch.equal(test_idx // 20, stream.class_ids[step.test_y])
        # each training example exactly `passes` times, `train` distinct ones per class
        unique, counts = train_idx.unique(return_counts=True)
        assert (counts == passes).all() and unique.numel() == per_step * train
        assert test_idx.unique().numel() == per_step * test
        # each pass presents every example once before any is repeated
        first_pass = train_idx[: per_step * train]
        assert first_pass.unique().numel() == per_step * train
        seen_train.append(unique)
        seen_test.append(test_idx)
    all_train, all_test = torch.cat(seen_train), torch.cat(seen_test)
    assert all_train.unique().numel() == all_train.numel()  # no example in two steps
    assert not torch.isin(all_test, all_train).any()  # held-out examples never trained on
    assert stream.class_ids.unique().numel() == classes


def test_streams_are_seeded():
    ds = indexed_dataset(30)
    a, b, c = (ClassStream(ds, 20, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.class_ids, b.class_ids)
    assert not torch.equal(a.class_ids, c.class_ids)
    for i in (0, 7, 19):
        sa, sb = a.step(i), b.step(i)
        assert torch.equal(sa.train_x, sb.train_x) and torch.equal(sa.test_x, sb.test_x)
    # a step's content does not depend on which steps were read before
    assert torch.equal(list(a)[5].train_x, b.step(5).train_x)
    assert not torch.equal(c.step(0).train_x, a.step(0).train_x)


def test_step_to_float():
    step = ClassStream(indexed_dataset(3), 3, seed=0).step(0).to("cpu")
    assert step.train_x.dtype == torch.float32 and float(step.train_x.max()) <= 1.0
    assert step.train_y.dtype == torch.long


def test_task_sequence():
    stream = task_sequence(indexed_dataset(30), tasks=4, ways=5, shots=2, queries=3, seed=1)
    assert stream.task_aware and len(stream) == 4 and stream.boundaries == [5, 10, 15, 20]
    step = stream.step(1)
    assert step.classes.tolist() == [5, 6, 7, 8, 9]
    assert step.train_y.bincount(minlength=10)[5:].tolist() == [2] * 5
    assert step.test_y.bincount(minlength=10)[5:].tolist() == [3] * 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 31}, "a stream of 31 classes needs 31 classes, but 'toy/test' has only 30"),
        ({"train_per_class": 18}, "18 training + 5 test examples = 23 per class"),
        ({"classes": 10, "classes_per_step": 3}, "10 classes do not split into steps of 3"),
        ({"passes": 0}, "passes must be a positive integer, got 0"),
    ],
)
def test_class_stream_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ClassStream(indexed_dataset(30), **kwargs)


def test_sine_stream():
    stream = SineStream(functions=4, train_per_function=30, test_per_function=7, passes=2, seed=0)
    assert len(stream) == 4 and stream.regression
    step = stream.step(2)
    assert step.train_x.shape == (60, 5) and step.train_y.shape == (60, 1)
    assert step.test_x.shape == (7, 5)
    assert (step.train_x[:, 1:] == torch.tensor([0.0, 0.0, 1.0, 0.0])).all()
    x = step.train_x[:, 0]
    expected = stream.amplitude[2] * torch.sin(x - stream.phase[2])
    assert torch.allclose(step.train_y[:, 0], expected)
    assert not torch.isin(step.test_x[:, 0], x).any()
    assert torch.equal(SineStream(4, 30, 7, 2, seed=0).step(2).train_x, step.train_x)
