"""CACTUs: Clustering to Automatically Construct Tasks for Unsupervised meta-learning.

Hsu, Levine & Finn, ICLR 2019 ("Unsupervised Learning via Meta-Learning"), Section 3: embed
the unlabeled pool with an unsupervised embedding, cut it P times into k clusters by k-means,
and make each task from one partition drawn at random: N of its clusters are the N made-up
classes, with K + Q distinct images of each. The partitions differ because each is clustered
on the embedding with its dimensions scaled at random; as in the authors' code, the first
partition is made on the embedding itself and each other one with every dimension multiplied
by a weight uniform in [0, 1). Clusters of fewer than K + Q images are never drawn, nor
partitions with fewer than N such clusters. On Omniglot the paper uses k = 500 clusters and
P = 100 partitions, with scikit-learn's k-means (k-means++ seeding) run to convergence (the
authors' code, github.com/kylehkhsu/cactus-maml).

Here the embedding is that of a run made by ``lifelong train`` (``task_options``
``embedding``: its folder), its ``Algorithm.embedding()`` in eval mode. k-means is written in
torch: k-means++ seeding (D² sampling), then at most ``iterations`` Lloyd steps, fewer when
no image changes cluster. Every random number comes from a generator of the construction's
seed alone (not from the task stream), so every rank has the same partitions, and these
are a pure function of (pool, run, options, seed): the sampler state of a run is its stream
position only. The partitions are cached (:func:`lifelong.data.cache.cache_dir`, ``cactus/``)
under the sha256 of the run's checkpoint, the pool, the options and the seed.

Cost on Omniglot (the 69,120 images of the lake training split with rotations, a 64-d
conv4 embedding, k = 500), measured on one thread of 2 cores shared with two trainings:
embedding the pool 80 s, one partition 5 s (seeding 0.6 s, a Lloyd step 0.15-0.25 s), 0.2 s
from the cache. Lloyd took 60-85 steps to converge there, but after 20 the k-means cost is
within 0.6% of the converged one, so ``iterations`` is 20; and ``partitions`` is 20, not the
paper's 100, to keep the clustering under two minutes (100 s; ``partitions=100``, the paper's
setting, took about 8 minutes there).

Example:
    $ lifelong train --dataset omniglot --labels none --task-construction cactus \
        --task-option embedding=runs/unsupervised --algorithm maml --ways 20 --shots 1 \
        --queries 5
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import safetensors.torch
import torch
from torch import Tensor

from lifelong.data.cache import atomic_path, cache_dir
from lifelong.data.episodes import FIXED_STREAM, EpisodeBatch, stream_generator
from lifelong.unlabeled.base import TaskConstruction

PARTITION_STREAM = FIXED_STREAM - 1
"""The stream id of the partitions' random numbers (neither the fixed sets' nor the training
tasks')."""
FORMAT = 1
"""The version of the cached partitions: bump when they would be computed differently."""


class CACTUs(TaskConstruction):
    """Tasks of N k-means clusters of one of P partitions of an embedded pool."""

    name = "cactus"
    options: ClassVar[Mapping[str, float | str]] = {
        "embedding": "",
        "clusters": 500,
        "partitions": 20,
        "iterations": 20,
    }

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        run = str(self.settings["embedding"])
        clusters, partitions, iterations = map(
            self._whole, ("clusters", "partitions", "iterations")
        )
        if not run:
            raise ValueError(
                "cactus needs `task_options` embedding=RUN_DIR: a run made by `lifelong train`"
            )
        if not self.ways <= clusters <= len(self.pool):
            raise ValueError(
                f"cactus `task_options` clusters must be between `ways` ({self.ways}) and the "
                f"pool's {len(self.pool)} images, got {clusters}"
            )
        self.labels = cached_partitions(self.pool, run, clusters, partitions, iterations, self.seed)
        """The cluster of each image of the pool in each partition, ``[P, n]``."""
        flat = self.labels + torch.arange(partitions)[:, None] * clusters
        self.counts = torch.bincount(flat.flatten(), minlength=partitions * clusters)
        self.counts = self.counts.view(partitions, clusters)
        self.starts = self.counts.cumsum(1) - self.counts
        self.members = self.labels.argsort(dim=1, stable=True)
        """Each partition's pool indices, cluster after cluster (``starts``, ``counts``)."""
        self.usable = self.counts >= self.shots + self.queries
        self.drawable = (self.usable.sum(1) >= self.ways).nonzero().squeeze(1)
        if len(self.drawable) == 0:
            raise ValueError(
                f"cactus: no partition has {self.ways} clusters of at least "
                f"{self.shots + self.queries} images (at most {int(self.usable.sum(1).max())}); "
                "lower `ways`, `shots` or `queries`, or change `task_options` clusters"
            )

    def _whole(self, key: str) -> int:
        """The option ``key``, a whole number of at least 1."""
        value = self.settings[key]
        if not float(value).is_integer() or value < 1:  # type: ignore[arg-type]
            raise ValueError(
                f"cactus `task_options` {key} must be a whole number >= 1, got {value}"
            )
        return int(value)  # type: ignore[arg-type]

    def indices(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The partition ``[B]`` of each of ``count`` episodes and the pool indices
        ``[B, N, K+Q]`` of its images, class-major."""
        size = self.shots + self.queries
        partition = self.drawable[torch.randint(len(self.drawable), (count,), generator=generator)]
        keys = torch.rand(count, self.usable.shape[1], generator=generator)
        clusters = keys.masked_fill_(~self.usable[partition], -1).topk(self.ways, dim=1).indices
        sizes = self.counts[partition[:, None], clusters].flatten()
        starts = self.starts[partition[:, None], clusters].flatten()
        # K + Q distinct members of each cluster: those of the smallest random keys, found by
        # one sort of (cluster number + key) over the members of all the clusters drawn
        cluster = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        first = sizes.cumsum(0) - sizes
        keys = torch.rand(len(cluster), generator=generator, dtype=torch.float64)
        order = (cluster + keys).argsort(stable=True)
        taken = torch.arange(len(cluster)) - first[cluster] < size
        offsets = order[taken] - first[cluster[taken]]
        rows = partition.repeat_interleave(self.ways * size)
        index = self.members[rows, starts.repeat_interleave(size) + offsets]
        return partition, index.view(count, self.ways, size)

    def draw(self, count: int, generator: torch.Generator, stream: bool = True) -> EpisodeBatch:
        index = self.indices(count, generator)[1]
        images = self.pool[index.flatten()].view(*index.shape, *self.pool.shape[1:])
        support, query = images[:, :, : self.shots], images[:, :, self.shots :]
        return self.episodes(support.flatten(1, 2), query.flatten(1, 2))


def cached_partitions(
    pool: Tensor, run: str, clusters: int, partitions: int, iterations: int, seed: int
) -> Tensor:
    """:func:`partition` of the ``pool`` embedded by ``run``, from the cache when there."""
    settings = {"format": FORMAT, "clusters": clusters, "partitions": partitions}
    settings.update(iterations=iterations, seed=seed, checkpoint=checkpoint_sha256(run))
    settings["pool"] = hashlib.sha256(pool.contiguous().numpy().data).hexdigest()
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / "cactus" / f"{key[:32]}.safetensors"
    try:
        labels = safetensors.torch.load_file(str(path))["labels"].long()
        if labels.shape == (partitions, len(pool)) and 0 <= labels.min() <= labels.max() < clusters:
            return labels
    except (OSError, KeyError, safetensors.SafetensorError):
        pass  # not cached yet (or damaged): computed again
    generator = stream_generator(seed, PARTITION_STREAM)
    labels = partition(embed_pool(run, pool), clusters, partitions, iterations, generator)
    try:
        with atomic_path(path) as tmp:
            safetensors.torch.save_file({"labels": labels.int()}, str(tmp))
    except OSError as err:
        warnings.warn(f"could not cache the CACTUs partitions in {path}: {err}", stacklevel=2)
    return labels


def checkpoint_sha256(run: str) -> str:
    """The sha256 of the tensors of the checkpoint of ``run`` that
    :func:`~lifelong.pipeline.trained.load_trained` reads (best, else last)."""
    for tag in ("best", "last"):
        try:
            return str(json.loads((Path(run) / f"{tag}.json").read_text())["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise ValueError(
        f"cactus `task_options` embedding {run!r} is not a run folder made by `lifelong train` "
        "(no readable best.json or last.json)"
    )


def embed_pool(run: str, pool: Tensor, batch: int = 1024) -> Tensor:
    """The embedding ``[n, D]`` of the ``pool`` by the best checkpoint of ``run``."""
    from lifelong.pipeline.trained import load_trained

    try:
        trained = load_trained(run)
    except ValueError as err:
        raise ValueError(f"cactus `task_options` embedding: {err}") from None
    if trained.facts.image_shape != tuple(pool.shape[1:]):
        shape = "x".join(map(str, trained.facts.image_shape or ("regression",)))
        raise ValueError(
            f"cactus `task_options` embedding {run!r} was trained on {shape} images, but the "
            f"pool holds {'x'.join(map(str, pool.shape[1:]))}"
        )
    embedding = trained.algorithm.embedding()
    with torch.no_grad():
        return torch.cat(
            [embedding(x.float().div_(255)).float().flatten(1) for x in pool.split(batch)]
        )


def partition(
    x: Tensor, clusters: int, partitions: int, iterations: int, generator: torch.Generator
) -> Tensor:
    """The k-means cluster ``[P, n]`` of each row of ``x [n, D]`` in ``partitions`` partitions:
    the first of ``x`` itself, each other of ``x`` with its dimensions scaled by weights
    uniform in [0, 1)."""
    return torch.stack(
        [
            kmeans(x * torch.rand(x.shape[1], generator=generator) if p else x, clusters,
                   iterations, generator)
            for p in range(partitions)
        ]
    )  # fmt: skip


def kmeans(x: Tensor, k: int, iterations: int, generator: torch.Generator) -> Tensor:
    """The cluster ``[n]`` of each row of ``x [n, D]``: k-means++ seeding, then at most
    ``iterations`` Lloyd steps (fewer if no row changes cluster). An empty cluster keeps its
    centre."""
    centres = seed_centres(x, k, generator)
    labels = nearest(x, centres)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=k)[:, None]
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        moved, labels = labels, nearest(x, centres)
        if torch.equal(moved, labels):
            break
    return labels


def nearest(x: Tensor, centres: Tensor, chunk: int = 4096) -> Tensor:
    """The index of the nearest centre (Euclidean) of each row of ``x``."""
    squares = centres.square().sum(1)
    return torch.cat(
        [torch.addmm(squares, part, centres.T, alpha=-2).argmin(1) for part in x.split(chunk)]
    )


def seed_centres(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` rows of ``x`` by k-means++ (Arthur & Vassilvitskii, 2007): each next one drawn
    with probability proportional to its squared distance to the nearest one drawn so far."""
    squares = x.square().sum(1)
    uniform = torch.rand(k, generator=generator, dtype=torch.float64)
    chosen = torch.empty(k, dtype=torch.long)
    closest = torch.full((len(x),), math.inf)
    for j in range(k):
        if j == 0:
            chosen[0] = min(int(uniform[0] * len(x)), len(x) - 1)
        else:
            cumulative = closest.double().cumsum(0)
            drawn = torch.searchsorted(cumulative, uniform[j] * cumulative[-1], right=True)
            chosen[j] = drawn.clamp_max(len(x) - 1)
        distances = torch.addmv(squares + squares[chosen[j]], x, x[chosen[j]], alpha=-2)
        torch.minimum(closest, distances.clamp_min_(0), out=closest)
    return x[chosen].clone()
