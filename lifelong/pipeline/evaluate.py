"""Evaluation on a fixed set of episodes: mean and 95% confidence interval.

Few-shot results are reported as the mean query metric over many test episodes with a 95%
confidence interval ``1.96 * std / sqrt(n)`` (the protocol of Vinyals et al. 2016, Snell et al.
2017, Finn et al. 2017: 1000 episodes, 600 on miniImageNet), computed and written as text by
:mod:`lifelong.stats`. Every method evaluated with the same dataset, episode shape and seed sees
exactly the same tasks (:meth:`~lifelong.data.episodes.EpisodeSampler.fixed`).

Example:
    >>> episodes = EpisodeSampler(splits["test"], 5, 1, 15).fixed(1000, seed=0)
    >>> result = evaluate(algorithm, episodes, split="test")
    >>> print(result)          # accuracy 97.31% ± 0.41% (test, 5-way 1-shot 15-query, 1000 ...)
    >>> result.to_dict()       # {"metric": "accuracy", "mean": 0.9731, "ci95": 0.0041, ...}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lifelong.algorithms.base import Algorithm
from lifelong.algorithms.embedding import eval_mode
from lifelong.data.episodes import EpisodeBatch, EpisodeSet, FixedEpisodes, to_device
from lifelong.pipeline.data import episode_count, load_data
from lifelong.pipeline.device import resolve_device
from lifelong.pipeline.memory import check_fits
from lifelong.pipeline.trained import load_trained
from lifelong.stats import confidence_interval, format_mean_ci

EVAL_BATCH = 25
"""Test episodes evaluated together, at most."""
EMBED_CHUNK = 1024
"""Images embedded in one forward when a fixed set's images are embedded once each."""
EVAL_VALUES = 2_000_000
"""Input values (images x channels x height x width) evaluated in one forward, at most: 25
Omniglot episodes of 5-way 1-shot 15-query (1.6M); 3 of 20-way 5-shot 5-query at 56 x 56
pixels (25 of those took 13.6 GB)."""


def eval_batch_size(episode: EpisodeBatch) -> int:
    """How many episodes shaped like ``episode`` are evaluated together: :data:`EVAL_BATCH`,
    fewer for large ones (:data:`EVAL_VALUES`)."""
    values = episode.support_x[0].numel() + episode.query_x[0].numel()
    return max(1, min(EVAL_BATCH, EVAL_VALUES // max(values, 1)))


def checked_batch_size(
    algorithm: Algorithm, fixed: EpisodeSet, device: torch.device, options: str
) -> int:
    """:func:`eval_batch_size` of ``fixed``, after checking that a batch of that many
    episodes fits in the free memory of ``device`` (:func:`check_fits`; ``options`` names
    what lowers it)."""
    size = min(eval_batch_size(next(iter(fixed.batches(1)))), len(fixed))

    def probe(count: int) -> None:
        with eval_mode(algorithm):
            algorithm.evaluate(next(iter(fixed.batches(count))).to(device))

    check_fits(probe, size, device, f"a batch of {size} test episodes", options)
    return size


@dataclass(frozen=True)
class Evaluation:
    """The result of an evaluation, JSON-able through :meth:`to_dict`.

    ``metric`` is ``"accuracy"`` (``mean`` and ``ci95`` as fractions in ``[0, 1]``) or
    ``"mse"``; ``ci95`` is ``None`` for a single episode; ``inner_steps`` is the number of
    adaptation steps at test time (``None`` for ProtoNets)."""

    metric: str
    mean: float
    ci95: float | None
    episodes: int
    ways: int
    shots: int
    queries: int
    split: str
    inner_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        percent = self.metric == "accuracy"
        value = f"{self.metric} {format_mean_ci(self.mean, self.ci95, percent=percent)}"
        shape = f"{self.ways}-way " if self.ways else ""
        return (
            f"{value} ({self.split}, {shape}{self.shots}-shot {self.queries}-query, "
            f"{self.episodes} episodes)"
        )


def episode_metrics(
    algorithm: Algorithm,
    episodes: EpisodeSet,
    device: torch.device | str = "cpu",
    batch_size: int = EVAL_BATCH,
) -> Tensor:
    """The query metric of every episode ``[n]``, with the algorithm in eval mode (its
    training mode is restored afterwards)."""
    if algorithm.evaluates_embeddings and isinstance(episodes, FixedEpisodes):
        return embedded_metrics(algorithm, episodes, device, batch_size)
    was_training = algorithm.training
    algorithm.eval()
    try:
        values = [
            algorithm.evaluate(batch.to(device)).detach().float().cpu()
            for batch in episodes.batches(batch_size)
        ]
    finally:
        algorithm.train(was_training)
    return torch.cat(values)


def embedded_metrics(
    algorithm: Algorithm,
    episodes: FixedEpisodes,
    device: torch.device | str = "cpu",
    batch_size: int = EVAL_BATCH,
) -> Tensor:
    """:func:`episode_metrics` of an algorithm that :attr:`~Algorithm.evaluates_embeddings`:
    each image the episodes use is embedded once (in eval mode, :data:`EMBED_CHUNK` at a
    time), however many episodes reuse it, and the episodes are scored from the embeddings
    (1000 Omniglot 20-way 5-shot 15-query episodes use 400,000 images, but at most the
    33,840 of the test split)."""
    sampler = episodes.sampler
    used, where = episodes.index.unique(return_inverse=True)  # where: [E, N, K+Q]
    images = sampler.dataset.images
    with eval_mode(algorithm), torch.no_grad():
        z = torch.cat(
            [
                algorithm.embedding()(to_device(images.index_select(0, part), device))
                for part in used.split(EMBED_CHUNK)
            ]
        )
        values = []
        for start in range(0, len(episodes), batch_size):
            part = where[start : start + batch_size].to(z.device)
            n, k = part.shape[0], sampler.shots
            support_y, query_y = (y.to(z.device) for y in sampler.labels(n))
            support, query = z[part[:, :, :k].flatten(1)], z[part[:, :, k:].flatten(1)]
            metric = algorithm.evaluate_embedded(support, support_y, query, query_y, sampler.ways)
            values.append(metric.float().cpu())
    return torch.cat(values)


def evaluate(
    algorithm: Algorithm,
    episodes: EpisodeSet,
    device: torch.device | str = "cpu",
    split: str = "test",
    batch_size: int | None = None,
) -> Evaluation:
    """Adapt to each episode's support set, score its queries, ``batch_size`` episodes at a
    time (default :func:`eval_batch_size`); summarise with a 95% CI."""
    first = next(iter(episodes.batches(1)))
    values = episode_metrics(algorithm, episodes, device, batch_size or eval_batch_size(first))
    mean, ci95 = confidence_interval(values)
    return Evaluation(
        metric="mse" if algorithm.regression else "accuracy",
        mean=mean,
        ci95=ci95,
        episodes=int(values.numel()),
        ways=first.ways,
        shots=first.shots,
        queries=first.queries,
        split=split,
        inner_steps=algorithm.test_steps,
    )


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    inner_steps: int | None = None,
    seed: int = 0,
    data_root: str | None = None,
    device: str | None = None,
    checkpoint: str = "best",
    test_rotations: bool | None = None,
) -> Evaluation:
    """Evaluate a saved run on ``episodes`` fixed episodes of ``split`` (default: the run's
    test episode shape and count); the same ``seed`` gives the same episodes to every run.
    ``test_rotations`` ``False``: the test split without its rotation classes."""
    overrides = {
        "test_rotations": test_rotations,
        "test_ways": ways,
        "test_shots": shots,
        "test_queries": queries,
        "eval_inner_steps": inner_steps,
        "data_root": data_root,
        "device": device,
    }
    trained = load_trained(run_dir, checkpoint, overrides)
    data = load_data(trained.config)
    trained.check_data(data.facts)
    device_ = resolve_device(trained.config.device)
    n = episode_count(trained.config) if episodes is None else episodes
    fixed = data.sampler(split, seed=seed).fixed(n, seed=seed)
    algorithm = trained.algorithm.to(device_)
    cfg = trained.config
    options = f"the episode shape (`test_ways` {cfg.episode_shape(split)[0]}, `test_queries`)"
    batch_size = checked_batch_size(algorithm, fixed, device_, options)
    return evaluate(algorithm, fixed, device_, split=split, batch_size=batch_size)
