"""Strokes: the procedural character dataset."""

from __future__ import annotations

import pytest
import torch

from lifelong.data.episodes import EpisodeSampler
from lifelong.data.strokes import load_strokes, render


@pytest.fixture(scope="module")
def splits():
    return load_strokes({"train": 40, "val": 10, "test": 100}, per_class=20, seed=0)


def test_splits_are_disjoint_uint8_class_datasets(splits):
    assert sorted(splits) == ["test", "train", "val"]
    assert [len(splits[s]) for s in ("train", "val", "test")] == [40, 10, 100]
    names = [c.name for s in splits.values() for c in s.classes]
    assert len(set(names)) == 150
    assert splits["train"].classes[1].name == "stroke-0001"
    assert splits["test"].classes[0].name == "stroke-0050"
    assert {c.group for c in splits["val"].classes} == {"strokes"}
    test = splits["test"]
    assert test.name == "strokes/test"
    assert test.images.dtype == torch.uint8
    assert test.images.shape == (2000, 1, 28, 28)
    assert test.counts.tolist() == [20] * 100


def test_images_are_anti_aliased_ink_on_black(splits):
    images = splits["train"].images.flatten(1)
    assert (images.amax(1) == 255).all()  # every image has ink
    ink = (images > 0).float().mean(1)
    assert ink.min() > 0.03 and ink.max() < 0.5  # strokes, not blobs
    border = torch.cat([images[:, :28], images[:, -28:], images[:, ::28], images[:, 27::28]], 1)
    assert (border > 0).any(1).float().mean() < 0.1  # characters rarely touch the border
    grey = ((images > 0) & (images < 255)).sum(1) / (images > 0).sum(1)
    assert grey.mean() > 0.2  # soft edges


def test_same_seed_same_tensors_and_classes_do_not_depend_on_the_total(splits):
    again = load_strokes({"train": 40, "val": 10, "test": 100}, per_class=20, seed=0)
    for name in splits:
        assert torch.equal(again[name].images, splits[name].images)
    fewer = load_strokes({"train": 10}, per_class=20, seed=0)["train"]
    assert torch.equal(fewer.images, splits["train"].images[:200])
    other = load_strokes({"train": 10}, per_class=20, seed=1)["train"]
    assert not torch.equal(other.images, fewer.images)


def test_fractions_split_a_total():
    parts = load_strokes(20, per_class=2, image_size=16, fractions=(0.5, 0.25, 0.25))
    assert {k: len(v) for k, v in parts.items()} == {"train": 10, "val": 5, "test": 5}
    assert parts["val"].image_shape == (1, 16, 16)
    assert sorted(load_strokes(6, per_class=1, fractions=(1, 0, 0))) == ["train"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": {"tset": 5}}, "unknown splits \\['tset'\\]"),
        ({"classes": {"train": -2, "test": 4}}, "-2"),
        ({"classes": 0}, "cannot make splits"),
        ({"classes": 10, "fractions": (1.0, -0.5, 0.5)}, "-0.5"),
        ({"classes": 10, "per_class": 0}, "per_class must be >= 1"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_strokes(**kwargs)


def test_render_draws_a_line_of_the_given_width():
    # A horizontal line through the pixel row 13 (y = -1/28 in canvas units), x = 4..23.
    y = 2 * 13.5 / 28 - 1
    line = torch.tensor([[[[-0.625, y], [-0.2, y], [0.2, y], [0.625, y]]]])
    image = render(line, torch.tensor([[True]]), torch.tensor([2.0]), 28)[0, 0].float() / 255
    column = image[:, 14]
    # ink = clamp(width / 2 + 0.5 - distance, 0, 1): 1 on the line, 0.5 one pixel away.
    assert column[13] == 1.0
    # (up to the sampling of the curve: points are at most 0.5 pixels apart)
    assert column[12] == column[14] == pytest.approx(0.5, abs=0.04)
    assert column[:11].sum() == column[16:].sum() == 0
    assert (image[13, 5:23] == 1.0).all()
    nothing = render(line, torch.tensor([[False]]), torch.tensor([2.0]), 28)
    assert not nothing.any()


def test_a_few_shot_task_that_pixels_alone_do_not_solve(splits):
    """Nearest-centroid on raw pixels, 5-way 1-shot test episodes: clearly above chance (20%),
    clearly below 100% (about 60% with the default noise)."""
    sampler = EpisodeSampler(splits["test"], ways=5, shots=1, queries=5, seed=0)
    batch = next(sampler.fixed(500, seed=0).batches(500)).to("cpu")
    distance = torch.cdist(batch.query_x.flatten(2), batch.support_x.flatten(2))
    accuracy = (distance.argmin(-1) == batch.query_y).float().mean().item()
    assert 0.4 < accuracy < 0.8
