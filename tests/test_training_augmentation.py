"""Augmented training episodes (a run's ``augment``): the sampler's views, that evaluation is
never augmented, that a task stays a function of (seed, index), and the option's checks."""

from __future__ import annotations

import pytest
import torch
from tiny_strokes import tiny_strokes_run
from typer.testing import CliRunner

from lifelong.cli import app
from lifelong.data.augment import Augmentation
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import EpisodeBatch, EpisodeSampler
from lifelong.pipeline.checkpoint import load_checkpoint
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import load_data
from lifelong.pipeline.train import train

STROKES = tiny_strokes_run(strided=True)

AUGMENT = Augmentation(shift=2, rotate=10, scale=0.9)


def dataset(classes: int = 12, per_class: int = 5) -> ClassDataset:
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(classes * per_class, 1, 12, 12, generator=generator) > 0.7) * 255
    infos = [ClassInfo(f"c{k}") for k in range(classes)]
    return ClassDataset(images.to(torch.uint8), [per_class] * classes, infos)


def test_training_episodes_are_views_of_the_same_images_and_evaluation_is_not_augmented():
    plain = EpisodeSampler(dataset(), 4, 1, 3, seed=5)
    augmented = EpisodeSampler(dataset(), 4, 1, 3, seed=5, augment=AUGMENT)
    a, b = plain.tasks(0, 6), augmented.tasks(0, 6)
    assert torch.equal(a.classes, b.classes) and torch.equal(a.query_y, b.query_y)
    assert b.support_x.shape == a.support_x.shape and b.support_x.dtype == torch.uint8
    assert not torch.equal(a.support_x, b.support_x)
    assert not torch.equal(a.query_x, b.query_x)
    identity = EpisodeSampler(dataset(), 4, 1, 3, seed=5, augment=Augmentation())
    assert torch.equal(identity.tasks(0, 6).query_x, a.query_x)
    fixed = [next(s.fixed(8, seed=1).batches(8)) for s in (plain, augmented)]
    assert torch.equal(fixed[0].support_x, fixed[1].support_x)
    assert torch.equal(fixed[0].query_x, fixed[1].query_x)


def test_an_augmented_task_depends_on_the_seed_and_its_index_alone():
    """Ranks drawing their shares of a step, or a resumed stream, see the same views."""
    reference = EpisodeSampler(dataset(), 4, 1, 3, seed=5, augment=AUGMENT).tasks(0, 8)
    shares = [
        EpisodeSampler(dataset(), 4, 1, 3, seed=5, augment=AUGMENT).tasks(r * 2, 2)
        for r in range(4)
    ]
    joined = EpisodeBatch.cat(shares)
    assert torch.equal(joined.support_x, reference.support_x)
    assert torch.equal(joined.query_x, reference.query_x)


def test_a_run_trains_on_augmented_episodes_and_records_the_option(tmp_path):
    cfg = RunConfig(**STROKES, augment={"shift": 2, "rotate": 10}, iterations=2)
    data = load_data(cfg)
    sampler = data.sampler("train", seed=0)
    assert isinstance(sampler, EpisodeSampler) and sampler.augment == Augmentation(2, 10)
    assert data.sampler("val", seed=0).augment is None
    plain = train(RunConfig(**STROKES, iterations=2, out=str(tmp_path / "a")), progress=False)
    views = train(cfg.override(out=str(tmp_path / "b")), progress=False)
    assert views.step == plain.step == 2
    a, b = (load_checkpoint(tmp_path / r, "last")["algorithm"] for r in "ab")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert RunConfig.from_yaml(tmp_path / "b" / "config.yaml").augment == {"shift": 2, "rotate": 10}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"augment": {"shfit": 2}}, "`augment` has no option 'shfit'; its options: shift"),
        ({"augment": {"shift": "big"}}, "`augment` shift must be a number"),
        ({"augment": {"scale": 2}}, "augmentation `scale` must be in"),
        (
            {"augment": {"shift": 2}, "labels": "none", "task_construction": "umtra"},
            "a task construction takes its own",
        ),
    ],
)
def test_bad_augmentations_are_refused_before_training(changes, message, tmp_path):
    cfg = RunConfig(**{**STROKES, **changes}, iterations=1, out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=message):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_the_command_line_takes_repeatable_augment_flags(tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", "--dataset", "strokes", "--iterations", "1", "--hidden", "8", "--quiet",
         "--augment", "shift=2", "--augment", "dropout=0.1", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.augment == {"shift": 2, "dropout": 0.1}
