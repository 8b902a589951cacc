"""Meta-training without labels: the augmentations, UMTRA's tasks, that no label of the
training split is read, unlabeled image folders, the options' checks and the command line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_strokes import tiny_strokes_run
from typer.testing import CliRunner

from lifelong.cli import app
from lifelong.data.augment import Augmentation
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.folder import UNLABELED, load_folder
from lifelong.pipeline import train as train_module
from lifelong.pipeline.checkpoint import load_checkpoint
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import load_data
from lifelong.pipeline.train import train
from lifelong.unlabeled.umtra import UMTRA

STROKES = tiny_strokes_run(ways=4, labels="none", task_construction="umtra")


def pool(n: int = 30, size: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=generator) > 0.7).to(torch.uint8) * 255


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by (dy, dx) whole pixels, zeros coming in."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def shift_of(view: torch.Tensor, image: torch.Tensor, reach: int) -> tuple[int, int] | None:
    """The whole-pixel shift within ``reach`` that makes ``image`` into ``view``, if any."""
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if torch.equal(shifted(image, dy, dx), view):
                return dy, dx
    return None


# ----------------------------------------------------------------------------- augmentations
def test_a_shift_moves_each_image_by_whole_pixels_within_its_range():
    images = pool(40)
    views = Augmentation(shift=3)(images, torch.Generator().manual_seed(1))
    assert views.dtype == torch.uint8 and views.shape == images.shape
    shifts = [shift_of(v, x, 3) for v, x in zip(views, images, strict=True)]
    assert None not in shifts
    assert len(set(shifts)) > 5  # the shifts differ between images


def test_dropout_clears_about_its_share_of_pixels_and_nothing_else():
    images = torch.full((50, 1, 20, 20), 200, dtype=torch.uint8)
    views = Augmentation(dropout=0.3)(images, torch.Generator().manual_seed(0))
    assert set(views.unique().tolist()) <= {0, 200}
    assert abs(float((views == 0).float().mean()) - 0.3) < 0.02


def test_rotation_and_scale_keep_shape_and_range_and_the_same_seed_gives_the_same_views():
    images = pool(8, 16)
    augment = Augmentation(shift=2, rotate=20, scale=0.8, dropout=0.1)
    first = augment(images, torch.Generator().manual_seed(5))
    again = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.shape == images.shape
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(6)))
    identity = Augmentation()(images, torch.Generator())
    assert torch.equal(identity, images)


def test_strokes_get_thicker_or_thinner_and_elastic_fields_move_ink_smoothly():
    images = torch.zeros(40, 1, 16, 16, dtype=torch.uint8)
    images[:, :, 4:12, 6:10] = 255  # a bar 4 pixels wide
    views = Augmentation(stroke=1.0)(images, torch.Generator().manual_seed(0))
    ink = (views > 0).sum(dim=(1, 2, 3)).tolist()
    assert set(ink) == {10 * 6, 6 * 2}  # dilated by one pixel each side, or eroded
    assert 10 < ink.count(60) < 30  # about half of each
    bent = Augmentation(elastic=2.0)(images, torch.Generator().manual_seed(1))
    assert bent.shape == images.shape and bent.dtype == torch.uint8
    assert not torch.equal(bent, images)
    moved = (bent.float() - images.float()).abs().mean(dim=(1, 2, 3))
    assert bool((moved < 255 * 0.25).all())  # displaced by at most 2 pixels, not scrambled


@pytest.mark.parametrize(
    ("options", "message"),
    [({"shift": -1}, "shift"), ({"elastic": -1}, "elastic"), ({"stroke": 1.5}, "stroke"),
     ({"scale": 0}, "scale"), ({"scale": 1.5}, "scale"),
     ({"dropout": 1.0}, "dropout"), ({"rotate": -5}, "rotate")],
)  # fmt: skip
def test_bad_augmentations_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**options)


# ----------------------------------------------------------------------------- UMTRA
def test_umtra_tasks_are_random_images_with_augmented_copies_as_queries():
    images = pool(30)
    tasks = UMTRA(images, ways=5, shots=2, queries=3, seed=0, options={"shift": 2, "dropout": 0})
    batch = tasks.sample(4)
    assert batch.support_x.shape == (4, 10, 1, 12, 12) and batch.query_x.shape == (4, 15, 1, 12, 12)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert batch.classes is None
    for episode in batch:
        anchors = episode.support_x[::2]  # the first shot of each class is the image itself
        index = [int((images == a).all(dim=(1, 2, 3)).nonzero()[0]) for a in anchors]
        assert len(set(index)) == 5  # N distinct images
        for view, label in zip(
            [*episode.support_x, *episode.query_x],
            [*episode.support_y, *episode.query_y],
            strict=True,
        ):
            assert shift_of(view, anchors[label], 2) is not None


def test_umtra_streams_are_seeded_resumable_and_fixed_sets_repeat():
    first = UMTRA(pool(), ways=3, shots=1, queries=2, seed=3)
    second = UMTRA(pool(), ways=3, shots=1, queries=2, seed=3)
    first.sample(2)
    state = first.state_dict()
    a = first.sample(2)
    second.load_state_dict(state)
    b = second.sample(2)
    assert torch.equal(a.query_x, b.query_x) and torch.equal(a.support_x, b.support_x)
    fixed = [x.query_x for x in first.fixed(5, seed=1).batches(2)]
    again = [x.query_x for x in second.fixed(5, seed=1).batches(2)]
    assert [x.shape[0] for x in fixed] == [2, 2, 1]
    assert all(torch.equal(x, y) for x, y in zip(fixed, again, strict=True))


def test_umtra_refuses_unknown_options_and_too_small_pools():
    with pytest.raises(ValueError, match="umtra has no `task_options` 'size'; its options"):
        UMTRA(pool(), 3, 1, 1, options={"size": 3})
    with pytest.raises(ValueError, match="`task_options` shift must be a number"):
        UMTRA(pool(), 3, 1, 1, options={"shift": "big"})
    with pytest.raises(ValueError, match="40-way tasks need 40 images, but the pool holds 30"):
        UMTRA(pool(30), 40, 1, 1)


# ----------------------------------------------------------------------------- no label is read
def relabelled(split: ClassDataset) -> ClassDataset:
    """The same images, cut into other classes with other names."""
    counts = [1] * (split.images.shape[0] - 3) + [3]
    return ClassDataset(split.images, counts, [ClassInfo(f"x{i}") for i in range(len(counts))])


def test_training_without_labels_never_reads_the_training_labels(tmp_path, monkeypatch):
    cfg = RunConfig(**STROKES, iterations=3, out=str(tmp_path / "a"))
    train(cfg, progress=False)
    data = load_data(cfg)
    splits = {**data.splits, "train": relabelled(data.splits["train"])}
    monkeypatch.setattr(
        train_module, "load_data", lambda config: dataclasses.replace(data, splits=splits)
    )
    train(cfg.override(out=str(tmp_path / "b")), progress=False)
    a = load_checkpoint(tmp_path / "a", "last")["algorithm"]
    b = load_checkpoint(tmp_path / "b", "last")["algorithm"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": "dataset"}, "`task_construction` makes tasks without labels"),
        ({"task_construction": None}, "`labels` none needs a `task_construction`"),
        ({"algorithm": "finetune"}, "finetune learns the classes of the training split"),
        ({"task_options": {"size": 1}}, "umtra has no `task_options` 'size'"),
    ],
)
def test_settings_that_cannot_work_without_labels_are_refused(changes, message, tmp_path):
    cfg = RunConfig(**{**STROKES, **changes}, iterations=1, out=str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        train(cfg, progress=False)


def test_an_unknown_task_construction_is_a_config_error():
    with pytest.raises(ConfigError, match="`task_construction` must be one of umtra"):
        RunConfig(task_construction="simclr")


# ----------------------------------------------------------------------------- unlabeled folders
def write_images(folder, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = (rng.random((16, 16)) > 0.7).astype(np.uint8) * 255
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_a_folder_of_images_without_class_folders_is_an_unlabeled_training_split(tmp_path):
    write_images(tmp_path / "only", 12, 0)
    splits = load_folder(tmp_path / "only", image_size=16, cache_dir=tmp_path / "cache")
    assert list(splits) == ["train"] and [c.name for c in splits["train"].classes] == [UNLABELED]
    assert splits["train"].images.shape == (12, 1, 16, 16)

    root = tmp_path / "mixed"
    write_images(root / "train", 10, 1)
    for split in ("val", "test"):
        for name in "abc":
            write_images(root / split / name, 4, ord(name))
    splits = load_folder(root, image_size=16, cache_dir=tmp_path / "cache")
    assert len(splits["train"]) == 1 and len(splits["val"]) == 3 and len(splits["test"]) == 3
    (root / "val" / "a" / "0.png").rename(root / "val" / "loose.png")
    for name in "abc":
        for image in (root / "val" / name).iterdir():
            image.unlink()
        (root / "val" / name).rmdir()
    with pytest.raises(ValueError, match="only the training images may be unlabeled"):
        load_folder(root, image_size=16, cache_dir=tmp_path / "cache")


def test_the_command_line_trains_without_labels_on_an_unlabeled_folder_and_evaluates(tmp_path):
    root = tmp_path / "images"
    write_images(root / "train", 20, 1)
    for split in ("val", "test"):
        for name in "abc":
            write_images(root / split / name, 4, ord(name) + len(split))
    common = ["--dataset", "folder", "--data-root", str(root), "--image-size", "16",
              "--ways", "3", "--queries", "2", "--hidden", "8", "--iterations", "2",
              "--val-every", "2", "--val-episodes", "2", "--quiet"]  # fmt: skip
    runner = CliRunner()
    labelled = runner.invoke(app, ["train", *common, "--out", str(tmp_path / "x")])
    assert labelled.exit_code == 1
    assert "is unlabeled images (no class folders): meta-train with --labels none" in (
        labelled.output
    )
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", *common, "--labels", "none", "--task-construction", "umtra",
         "--task-option", "shift=2", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = RunConfig.from_yaml(run / "config.yaml")
    assert (saved.labels, saved.task_construction, saved.task_options) == (
        "none",
        "umtra",
        {"shift": 2},
    )
    evaluated = runner.invoke(app, ["evaluate", str(run), "--episodes", "3"])
    assert evaluated.exit_code == 0 and "3-way 1-shot" in evaluated.output
    flags = ["--labels", "none", "--task-construction", "umtra", "--task-option", "shift"]
    bad = runner.invoke(app, ["train", *common, *flags, "--out", str(tmp_path / "y")])
    assert bad.exit_code == 1 and "--task-option takes KEY=VALUE, got 'shift'" in bad.output
