"""ClassDataset, rotation classes and class splits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.data.classes import ClassDataset, ClassInfo, split_indices

FAST = settings(max_examples=50, deadline=None)


def random_dataset(counts: list[int], shape=(1, 3, 3), seed: int = 0) -> ClassDataset:
    """Random uint8 images, ``counts[k]`` of class ``k``, named ``c0``, ``c1``..."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (sum(counts), *shape), dtype=torch.uint8, generator=g)
    infos = [ClassInfo(f"c{k}", group=f"g{k % 2}") for k in range(len(counts))]
    return ClassDataset(images, counts, infos, name="toy/train")


def test_layout_offsets_and_getitem():
    ds = random_dataset([2, 5, 1])
    assert len(ds) == 3
    assert ds.offsets.tolist() == [0, 2, 7]
    assert ds.min_count == 1
    assert ds.image_shape == (1, 3, 3)
    assert ds.nbytes == 8 * 9
    assert torch.equal(ds[1], ds.images[2:7])
    assert "toy/train" in repr(ds) and "classes=3" in repr(ds)


@pytest.mark.parametrize(
    ("images", "counts", "n_infos", "message"),
    [
        (torch.zeros(4, 1, 2, 2), [2, 2], 2, "uint8"),
        (torch.zeros(4, 2, 2, dtype=torch.uint8), [2, 2], 2, "(4, 2, 2)"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), [2, 2], 3, "3 class infos for 2 classes"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), [4, 0], 2, "without images: c1"),
        (torch.zeros(4, 1, 2, 2, dtype=torch.uint8), [2, 3], 2, "add up to 5 but there are 4"),
    ],
)
def test_constructor_rejects_inconsistent_input(images, counts, n_infos, message):
    with pytest.raises(ValueError, match="toy") as error:
        ClassDataset(images, counts, [ClassInfo(f"c{k}") for k in range(n_infos)], name="toy")
    assert message in str(error.value)


def test_from_class_tensors():
    parts = [torch.full((n, 1, 2, 2), k, dtype=torch.uint8) for k, n in enumerate([3, 1])]
    ds = ClassDataset.from_class_tensors(parts, [ClassInfo("a"), ClassInfo("b")], name="x")
    assert ds.counts.tolist() == [3, 1]
    assert torch.equal(ds[0], parts[0]) and torch.equal(ds[1], parts[1])
    with pytest.raises(ValueError, match="x: no classes"):
        ClassDataset.from_class_tensors([], [], name="x")


@FAST
@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=12),
    data=st.data(),
)
def test_subset_keeps_classes_in_the_given_order(counts, data):
    ds = random_dataset(counts)
    picked = data.draw(st.lists(st.integers(0, len(counts) - 1), min_size=1, unique=True))
    sub = ds.subset(picked, name="toy/sub")
    assert sub.name == "toy/sub"
    assert sub.classes == [ds.classes[k] for k in picked]
    assert sub.counts.tolist() == [counts[k] for k in picked]
    for j, k in enumerate(picked):
        assert torch.equal(sub[j], ds[k])


def test_subset_rejects_empty():
    with pytest.raises(ValueError, match="empty subset"):
        random_dataset([2, 2]).subset([])


def test_with_rotations_rotates_counter_clockwise_into_four_times_the_classes():
    image = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).reshape(1, 1, 2, 2)
    ds = ClassDataset(image, [1], [ClassInfo("a", group="g")], name="r")
    rotated = ds.with_rotations()
    assert len(rotated) == 4
    # 90 degrees counter-clockwise: the right column becomes the top row.
    assert rotated[1][0, 0].tolist() == [[2, 4], [1, 3]]
    assert rotated[2][0, 0].tolist() == [[4, 3], [2, 1]]
    assert rotated[3][0, 0].tolist() == [[3, 1], [4, 2]]
    assert [c.label for c in rotated.classes] == ["a", "a@rot90", "a@rot180", "a@rot270"]
    assert all(c.group == "g" and c.name == "a" for c in rotated.classes)


@FAST
@given(counts=st.lists(st.integers(1, 4), min_size=1, max_size=8), seed=st.integers(0, 99))
def test_with_rotations_is_class_major_and_exact(counts, seed):
    ds = random_dataset(counts, seed=seed)
    rotated = ds.with_rotations(name="toy/rot")
    assert len(rotated) == 4 * len(ds) and rotated.name == "toy/rot"
    assert rotated.counts.tolist() == [n for n in counts for _ in range(4)]
    for k in range(len(ds)):
        for j, angle in enumerate((0, 90, 180, 270)):
            assert rotated.classes[4 * k + j].rotation == angle
            assert torch.equal(rotated[4 * k + j], torch.rot90(ds[k], j, dims=(2, 3)))


def test_rotations_compose_and_reject_other_angles():
    twice = random_dataset([2]).with_rotations((180,)).with_rotations((270,))
    assert twice.classes[0].rotation == 90
    with pytest.raises(ValueError, match="45"):
        random_dataset([2]).with_rotations((0, 45))


def test_with_rotations_of_non_square_images_raises_a_readable_error():
    with pytest.raises(ValueError, match="2x3"):
        random_dataset([2], shape=(1, 2, 3)).with_rotations()


@FAST
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
    rest=st.booleans(),
)
def test_split_indices_is_a_seeded_partition(sizes, seed, rest):
    n = sum(sizes)
    asked = [*sizes[:-1], -1] if rest else sizes
    parts = split_indices(n, asked, seed)
    assert [len(p) for p in parts] == sizes
    assert all(p == sorted(p) for p in parts)
    assert sorted(i for p in parts for i in p) == list(range(n))  # disjoint and complete
    assert split_indices(n, asked, seed) == parts


def test_split_indices_depends_on_the_seed():
    assert split_indices(100, [50, 50], 0) != split_indices(100, [50, 50], 1)


@pytest.mark.parametrize("sizes", [[5, 6], [12, -1], [-1, 11], [3, -2, -1]])
def test_split_indices_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="cannot split 10 classes"):
        split_indices(10, sizes, 0)
