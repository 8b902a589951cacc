"""RunConfig: YAML round trip, precedence of defaults < file < flags, readable errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

import lifelong
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import DataFacts, episode_count
from lifelong.pipeline.factory import build_algorithm, resolve_config
from lifelong.pipeline.train import check_resumable, continued


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig(
        algorithm="maml",
        dataset="omniglot",
        class_split="vinyals",
        rotations=True,
        ways=20,
        hidden=(32,),
        grad_clip=10.0,
        dataset_options={"classes": {"train": 30}},
        inner_optimizer="adam",
        inner_batch=10,
        eval_inner_batch=0,
        meta_optimizer="sgd",
        lr_schedule="linear",
    )
    path = tmp_path / "run" / "config.yaml"
    cfg.save(path)
    assert RunConfig.from_yaml(path) == cfg
    assert yaml.safe_load(path.read_text())["hidden"] == [32]
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_saved_file_is_readable_by_others_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        RunConfig().save(tmp_path / "config.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o644


def test_file_overrides_defaults_and_flags_override_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: maml\nways: 20\nshots: 5\nmeta_lr: 1e-3\niterations: 7e4\n")
    from_file = RunConfig.from_yaml(path)
    assert (from_file.algorithm, from_file.ways, from_file.shots) == ("maml", 20, 5)
    assert from_file.queries == RunConfig().queries  # not in the file: the default
    assert from_file.meta_lr == 0.001 and from_file.iterations == 70000  # YAML 1.1 strings
    flags = from_file.override(ways=5, shots=None, seed=3)  # None: flag not given
    assert (flags.ways, flags.shots, flags.seed, flags.algorithm) == (5, 5, 3, "maml")


def test_unknown_key_names_the_key_and_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ways: 5\ninner_lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown option 'inner_lrr' \(did you mean 'inner_lr'"):
        RunConfig.from_yaml(path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ways": 0}, "`ways` must be positive, got 0"),
        ({"ways": "five"}, "ways must be an integer, got 'five'"),
        ({"shots": 1.5}, "shots must be an integer"),
        ({"algorithm": "mamll"}, "unknown algorithm 'mamll'.*one of maml, fomaml"),
        ({"lr_schedule": "exponential"}, "`lr_schedule` must be one of none, cosine, step, linear"),
        ({"rotations": "maybe"}, "rotations must be true or false"),
        ({"hidden": [0]}, "`hidden` must be positive"),
        ({"dataset_options": [1]}, "dataset_options must be a mapping"),
        ({"ways": None}, "ways must be given"),
    ],
)
def test_bad_values_are_one_clear_line(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig(**options)
    assert "\n" not in str(err.value)


def test_coercions():
    cfg = RunConfig(hidden="40,40", inner_lr="0.01", rotations="false", iterations=1000.0)
    assert cfg.hidden == (40, 40) and cfg.inner_lr == 0.01 and cfg.rotations is False
    assert isinstance(cfg.iterations, int)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- ways\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        RunConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")


def test_episode_shapes_and_default_test_episodes():
    cfg = RunConfig(ways=60, shots=1, queries=5, test_ways=5, test_queries=15)
    assert cfg.episode_shape("train") == (60, 1, 5)
    assert cfg.episode_shape("test") == (5, 1, 15) == cfg.episode_shape("val")
    assert episode_count(RunConfig()) == 1000
    assert episode_count(RunConfig(dataset="miniimagenet")) == 600
    assert episode_count(RunConfig(test_episodes=50)) == 50


OMNIGLOT = DataFacts(
    "omniglot",
    image_shape=(1, 28, 28),
    classes={"train": 1028 * 4, "val": 172 * 4, "test": 423 * 4},  # Vinyals split, rotations
    background="dark",
)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_reproduction_configs_load_and_build(path):
    cfg = RunConfig.from_yaml(path)
    regression = cfg.dataset == "sinusoid"
    facts = DataFacts("sinusoid", regression=True) if regression else OMNIGLOT
    algorithm = build_algorithm(cfg, facts)
    assert algorithm.regression == regression
    assert sum(p.numel() for p in algorithm.parameters()) > 1000


@pytest.mark.parametrize(("pooling", "dimension"), [(None, 64), (4, 64), (3, 576), (2, 64 * 7 * 7)])
def test_conv4_pooling_sets_how_many_blocks_pool(pooling, dimension):
    algorithm = build_algorithm(RunConfig(pooling=pooling), OMNIGLOT)
    assert algorithm.embedding()(torch.zeros(2, 1, 28, 28)).shape == (2, dimension)


@pytest.mark.parametrize(
    "options",
    [{"pooling": 5}, {"pooling": 3, "backbone": "resnet12"}, {"pooling": 3, "strided": True}],
)
def test_pooling_is_refused_where_it_cannot_apply(options):
    with pytest.raises(
        ConfigError, match=r"`pooling` .*0 to 4 pooled blocks of the conv4 backbone"
    ):
        build_algorithm(RunConfig(**options), OMNIGLOT)


@pytest.mark.parametrize(
    ("version", "saved", "read"),
    [
        ("0.1.0", "vinyals", "random"),  # the seeded partition, called vinyals then
        ("0.1.0", None, "random"),  # the default was that partition too
        ("0.1.0", "lake", "lake"),
        ("0.2.0", "vinyals", "vinyals"),
        ("0.0.0+unknown", "vinyals", "random"),
    ],
)
def test_checkpoints_keep_the_class_split_they_were_trained_on(version, saved, read):
    state = {"version": version, "config": {"dataset": "omniglot", "class_split": saved}}
    assert RunConfig.of_checkpoint(state).class_split == read
    strokes = {"version": "0.1.0", "config": {"dataset": "strokes"}}
    assert RunConfig.of_checkpoint(strokes).class_split is None


def test_a_source_tree_not_installed_saves_checkpoints_read_as_it_trained(tmp_path) -> None:
    """Run from a checkout without installing (as on a lent GPU machine), the version was
    once unknown, read as older than 0.2.0: a ProtoNet trained on Vinyals' split was then
    tested on the seeded partition, whose test characters it had partly trained on."""
    package = tmp_path / "lifelong"  # the package's source alone: no metadata beside it
    package.mkdir()
    (package / "__init__.py").write_text(Path(lifelong.__file__).read_text())
    shown = subprocess.run(  # -S: no site-packages, so no installed metadata
        [sys.executable, "-S", "-c", "import lifelong; print(lifelong.__version__)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path, capture_output=True,
        text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert shown == lifelong.__version__ == metadata.version("lifelong")
    cfg = RunConfig(dataset="omniglot", class_split="vinyals")
    state = {"version": shown, "config": cfg.to_dict()}
    assert RunConfig.of_checkpoint(state).class_split == "vinyals"


def test_checkpoints_saved_before_an_option_existed_keep_their_training():
    old = {"version": "0.2.0", "config": {"algorithm": "reptile", "meta_lr": 0.001}}
    cfg = RunConfig.of_checkpoint(old)  # full-batch SGD steps, Adam on the meta-update
    assert (cfg.inner_optimizer, cfg.inner_batch, cfg.eval_inner_batch) == ("sgd", 0, 0)
    assert (cfg.meta_optimizer, cfg.meta_lr, cfg.lr_schedule) == ("adam", 0.001, "none")
    assert cfg.inner_optimizer_state == "fresh"
    new = {"version": "0.2.0", "config": {"algorithm": "reptile", "inner_optimizer": "adam"}}
    adam = RunConfig.of_checkpoint(new)  # Adam from zero in every task, as it ran then
    assert (adam.inner_optimizer, adam.inner_optimizer_state) == ("adam", "fresh")
    facts = DataFacts("tiny", image_shape=(1, 8, 8), classes={"train": 10})
    algorithm = build_algorithm(adam.override(backbone="mlp"), facts)
    assert algorithm.carried is None  # so the old weights load: no buffers of a carried state
    assert not any(name.startswith("carried.") for name in algorithm.state_dict())
    carried = RunConfig.of_checkpoint(
        {"config": {**new["config"], "inner_optimizer_state": "carried"}}
    )
    assert build_algorithm(carried.override(backbone="mlp"), facts).carried is not None
    # resumed with its config.yaml, written before the option: it goes on as it was trained
    values = resolve_config(RunConfig(algorithm="reptile", out="run")).to_dict()
    del values["inner_optimizer_state"]
    given = RunConfig.from_dict(values)
    assert resolve_config(given).inner_optimizer_state == "carried"  # Reptile's default now
    resumed = resolve_config(continued(given, {"version": "0.2.0", "config": values}))
    assert resumed.inner_optimizer_state == "fresh"
    check_resumable(RunConfig.of_checkpoint({"config": values}), resumed)
