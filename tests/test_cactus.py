"""CACTUs: episodes of k-means clusters of one partition, seeded partitions (the same on every
stream, cached), the option checks and a run through the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_strokes import tiny_strokes_run
from typer.testing import CliRunner

import lifelong.pipeline.trained
import lifelong.unlabeled.cactus as cactus
from lifelong.cli import app
from lifelong.data.episodes import stream_generator
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import load_data
from lifelong.pipeline.train import train
from lifelong.unlabeled.cactus import CACTUs, embed_pool, kmeans, partition

STROKES = tiny_strokes_run()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny ProtoNet run on strokes: the embedding that is clustered."""
    out = tmp_path_factory.mktemp("cactus") / "pn"
    train(RunConfig(algorithm="protonet", iterations=2, out=str(out), **STROKES), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    """The 120 images of the strokes training split."""
    return load_data(RunConfig(**STROKES)).unlabeled_pool("train")


def make(pool: torch.Tensor, run: str, ways: int = 3, shots: int = 1, queries: int = 2,
         seed: int = 0, **options: object) -> CACTUs:  # fmt: skip
    options = {"embedding": run, "clusters": 8, "partitions": 4, **options}
    return CACTUs(pool, ways, shots, queries, seed, options=options)


def test_each_class_is_one_cluster_and_the_classes_distinct_clusters_of_one_partition(pool, run):
    construction = make(pool, run, ways=3, shots=2, queries=3)
    labels = construction.labels
    assert labels.shape == (4, 120) and labels.min() >= 0 and labels.max() < 8
    assert len({tuple(row.tolist()) for row in labels}) > 1  # the scalings make other partitions
    picked, index = construction.indices(200, torch.Generator().manual_seed(1))
    assert index.shape == (200, 3, 5)
    for p, episode in zip(picked.tolist(), index, strict=True):
        clusters = labels[p][episode]  # [N, K+Q]
        assert (clusters == clusters[:, :1]).all()  # a class is one cluster
        assert len(set(clusters[:, 0].tolist())) == 3  # of distinct clusters
        assert all(len(set(row.tolist())) == 5 for row in episode)  # of distinct images
    assert len(set(picked.tolist())) > 1
    batch = construction.draw(200, torch.Generator().manual_seed(1))
    images = pool[index]
    assert batch.support_x.shape == (200, 6, 1, 28, 28) and batch.query_x.shape == (
        200,
        9,
        1,
        28,
        28,
    )
    assert batch.support_x.dtype == torch.uint8 and (batch.ways, batch.shots) == (3, 2)
    assert torch.equal(batch.support_x, images[:, :, :2].flatten(1, 2))
    assert torch.equal(batch.query_x, images[:, :, 2:].flatten(1, 2))
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_the_partitions_come_from_the_seed_alone_and_draws_resume_exactly(pool, run, cache):
    construction = make(pool, run)
    expected = partition(
        embed_pool(run, pool), 8, 4, 20, stream_generator(0, cactus.PARTITION_STREAM)
    )
    assert torch.equal(construction.labels, expected)
    assert not torch.equal(make(pool, run, seed=1).labels, expected)
    same = make(pool, run)
    first, again = construction.sample(4), same.sample(4)
    assert torch.equal(first.support_x, again.support_x) and torch.equal(
        first.query_x, again.query_x
    )
    state = construction.state_dict()
    ahead = construction.sample(3)
    resumed = make(pool, run)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(3).query_x, ahead.query_x)
    fixed = [b.support_x for b in construction.fixed(5, seed=2).batches(2)]
    assert [b.shape[0] for b in fixed] == [2, 2, 1]
    assert all(
        torch.equal(a, b)
        for a, b in zip(fixed, [b.support_x for b in same.fixed(5, seed=2).batches(2)], strict=True)
    )


def test_the_partitions_are_cached_under_the_checkpoint_and_options(pool, run, cache, monkeypatch):
    labels = make(pool, run).labels
    assert len(list((cache / "cactus").glob("*.safetensors"))) == 1

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached partitions were computed again")

    monkeypatch.setattr(lifelong.pipeline.trained, "load_trained", refuse)
    assert torch.equal(make(pool, run).labels, labels)
    with pytest.raises(AssertionError, match="computed again"):
        make(pool, run, partitions=5)


def test_small_clusters_and_partitions_with_too_few_clusters_are_never_drawn(monkeypatch):
    n = 40
    pool = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.stack(
        [
            torch.tensor([0] * 10 + [1] * 10 + [2] * 3 + [3] * 10 + [4] * 7),  # 3 of >= 8
            torch.tensor([0] * 30 + [1] * 9 + [2]),  # 2 clusters of >= 8: never drawn
            torch.tensor([4] * 8 + [3] * 12 + [2] * 8 + [1] * 5 + [0] * 7),
        ]
    )
    monkeypatch.setattr(cactus, "cached_partitions", lambda *args: labels)
    construction = CACTUs(
        pool, 3, 3, 5, options={"embedding": "run", "clusters": 5, "partitions": 3}
    )
    assert construction.drawable.tolist() == [0, 2]
    picked, index = construction.indices(300, torch.Generator().manual_seed(0))
    assert set(picked.tolist()) == {0, 2}
    drawn = {
        (p, c)
        for p, e in zip(picked.tolist(), index, strict=True)
        for c in labels[p][e[:, 0]].tolist()
    }
    assert drawn == {(0, 0), (0, 1), (0, 3), (2, 4), (2, 3), (2, 2)}
    batch = construction.sample(6)
    assert all(
        len(set(e.flatten().tolist())) == 24 for e in torch.cat([batch.support_x, batch.query_x], 1)
    )
    with pytest.raises(
        ValueError, match="no partition has 3 clusters of at least 11 images"
    ) as err:
        CACTUs(pool, 3, 3, 8, options={"embedding": "run", "clusters": 5, "partitions": 3})
    assert "\n" not in str(err.value) and "lower `ways`, `shots` or `queries`" in str(err.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"embedding": ""}, "cactus needs `task_options` embedding=RUN_DIR"),
        ({"embedding": "{tmp}"}, "is not a run folder made by `lifelong train`"),
        ({"clusters": 0}, "clusters must be a whole number >= 1, got 0"),
        ({"partitions": 2.5}, "partitions must be a whole number >= 1, got 2.5"),
        ({"iterations": -1}, "iterations must be a whole number >= 1"),
        ({"clusters": 2}, "clusters must be between `ways` (3) and the pool's 120 images, got 2"),
        ({"clusters": 121}, "between `ways` (3) and the pool's 120 images, got 121"),
        ({"clusters": "many"}, "cactus `task_options` clusters must be a number"),
        ({"k": 5}, "cactus has no `task_options` 'k'"),
    ],
)
def test_bad_options_are_one_line_errors(pool, run, tmp_path, options, message):
    options = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(ValueError) as err:
        make(pool, run, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_embedding_of_other_images_or_too_few_images_per_cluster_is_refused(pool, run):
    with pytest.raises(
        ValueError, match="was trained on 1x28x28 images, but the pool holds 1x12x12"
    ):
        make(torch.zeros(50, 1, 12, 12, dtype=torch.uint8), run)
    with pytest.raises(ValueError, match="no partition has 3 clusters of at least 61 images"):
        make(pool, run, queries=60)
    data = load_data(RunConfig(**STROKES, labels="none", task_construction="cactus"))
    with pytest.raises(ConfigError, match="cactus needs `task_options` embedding"):
        data.sampler("train", seed=0)


def test_kmeans_finds_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    x = centres.repeat_interleave(25, 0) + 0.1 * torch.randn(100, 4, generator=generator)
    labels = kmeans(x, 4, 20, generator)
    assert all(len(set(labels[i : i + 25].tolist())) == 1 for i in range(0, 100, 25))
    assert len(set(labels.tolist())) == 4


def test_the_command_line_meta_trains_on_cactus_tasks(run, tmp_path):
    out = tmp_path / "cactus-run"
    flags = [
        "train", "--dataset", "strokes", "--dataset-option", "classes={train: 20, val: 8, test: 8}",
        "--dataset-option", "per_class=6", "--ways", "3", "--queries", "2", "--hidden", "8",
        "--iterations", "2", "--val-every", "2", "--val-episodes", "2", "--quiet",
        "--labels", "none", "--task-construction", "cactus",
    ]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(
        app,
        [*flags, "--task-option", f"embedding={run}", "--task-option", "clusters=10",
         "--task-option", "partitions=3", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = RunConfig.from_yaml(out / "config.yaml")
    assert saved.task_construction == "cactus"
    assert saved.task_options == {"embedding": run, "clusters": 10, "partitions": 3}
    missing = runner.invoke(app, [*flags, "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1
    assert "error: cactus needs --task-option embedding=RUN_DIR" in missing.output
