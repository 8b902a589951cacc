"""The Trainer: exact resume, NaN stop, best checkpoint, schedules, metrics log."""

from __future__ import annotations

import csv
import math
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_strokes import tiny_strokes_run
from torch import nn

from lifelong.algorithms.base import Algorithm, MetaLoss
from lifelong.algorithms.registry import algorithm_names
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.episodes import EpisodeSampler
from lifelong.data.registry import load_dataset
from lifelong.pipeline.checkpoint import load_checkpoint
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import DataFacts, _load_splits
from lifelong.pipeline.evaluate import evaluate_run
from lifelong.pipeline.train import (
    ProgressBar,
    Trainer,
    TrainingDiverged,
    check_resumable,
    lr_factor,
    seed_everything,
    train,
)


class TinyProto(Algorithm):
    """A prototypical-network loss on a linear embedding. Dropout and a numpy/Python-random
    factor on the loss make every step draw from the global generators, so that an exact
    resume needs all of them restored. ``poison_at``: the loss becomes NaN from that call on."""

    def __init__(self, poison_at: int | None = None) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 8))
        self.poison_at, self.calls = poison_at, 0

    def logits(self, support_x, support_y, ways, query_x):
        z = self.encoder(support_x)
        prototypes = torch.stack([z[support_y == k].mean(0) for k in range(ways)])
        return -torch.cdist(self.encoder(query_x), prototypes).square()

    def meta_loss(self, batch):
        self.calls += 1
        losses, accuracies = [], []
        for e in batch:
            logits = self.logits(e.support_x, e.support_y, e.ways, e.query_x)
            losses.append(F.cross_entropy(logits, e.query_y))
            accuracies.append((logits.argmax(-1) == e.query_y).float().mean())
        loss = torch.stack(losses).mean() * (1 + 0.01 * np.random.rand() + 0.01 * random.random())
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss = loss * math.nan
        return MetaLoss(loss, torch.stack(accuracies).mean().detach())

    def adapt(self, support_x, support_y, ways):
        return lambda query_x: self.logits(support_x, support_y, ways, query_x)


def split(name: str, classes: int, seed: int) -> ClassDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * 5, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ClassDataset(images, [5] * classes, [ClassInfo(f"{name}{k}") for k in range(classes)])


TRAIN, VAL = split("train", 10, 0), split("val", 6, 1)
FACTS = DataFacts("tiny", image_shape=(1, 8, 8), classes={"train": 10, "val": 6})


def make_trainer(
    run_dir: Path, iterations: int, algorithm: Algorithm | None = None, init_seed: int = 0, **opt
) -> Trainer:
    cfg = RunConfig(
        ways=3, shots=1, queries=2, meta_batch=2, iterations=iterations, val_every=3,
        val_episodes=4, checkpoint_every=2, meta_lr=0.01, out=str(run_dir), **opt,
    )  # fmt: skip
    seed_everything(init_seed)
    algorithm = algorithm or TinyProto()
    sampler = EpisodeSampler(TRAIN, 3, 1, 2, seed=cfg.seed)
    validation = EpisodeSampler(VAL, 3, 1, 2).fixed(cfg.val_episodes, seed=cfg.seed)
    return Trainer(algorithm, cfg, sampler, run_dir, FACTS, validation, progress=False)


def test_resume_after_a_kill_reaches_exactly_the_uninterrupted_parameters(tmp_path):
    options = {"lr_schedule": "cosine", "grad_clip": 5.0}
    full = make_trainer(tmp_path / "full", 9, **options)
    full.fit()

    killed = make_trainer(tmp_path / "killed", 9, **options)
    step = killed.train_step

    def die_during_iteration_6():
        if killed.step == 5:
            raise KeyboardInterrupt
        return step()

    killed.train_step = die_during_iteration_6
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    state = load_checkpoint(tmp_path / "killed", "last")
    assert state["step"] == 4  # checkpoints every 2 iterations

    # A fresh process: another initialisation and other global random states.
    resumed = make_trainer(tmp_path / "killed", 9, algorithm=TinyProto(), init_seed=123, **options)
    resumed.load_state_dict(state)
    result = resumed.fit()

    assert result.step == 9
    for (name, a), b in zip(
        full.algorithm.state_dict().items(), resumed.algorithm.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    adam, adam_resumed = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for k, moments in adam["state"].items():
        assert torch.equal(moments["exp_avg_sq"], adam_resumed["state"][k]["exp_avg_sq"])
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    # The log of the resumed run is the log of the uninterrupted one, without duplicates, but
    # for its clock (the last column), which counts on from the checkpoint's row.
    logs = [(tmp_path / r / "metrics.csv").read_text().splitlines() for r in ("killed", "full")]
    assert [line.rsplit(",", 1)[0] for line in logs[0]] == [
        line.rsplit(",", 1)[0] for line in logs[1]
    ]
    seconds = [float(line.rsplit(",", 1)[1]) for line in logs[0][1:]]
    assert seconds == sorted(seconds)  # rounded to 0.01 s: a fast first row reads 0.0


def test_a_run_saved_before_keyed_task_streams_resumes_from_its_step(tmp_path):
    old = make_trainer(tmp_path / "old", 6)
    old.fit()
    state = load_checkpoint(tmp_path / "old", "last")
    state["sampler"] = {"generator": torch.zeros(5056, dtype=torch.uint8)}  # the old format
    resumed = make_trainer(tmp_path / "old", 8, algorithm=TinyProto())
    resumed.load_state_dict(state)
    assert resumed.sampler.position == 6 * resumed.config.meta_batch
    assert resumed.fit().step == 8


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    # the memory guard's probes (1 and 2 episodes) are its first two meta-loss calls
    trainer = make_trainer(tmp_path, 10, algorithm=TinyProto(poison_at=6 + 2))
    with pytest.raises(TrainingDiverged, match=r"iteration 6: meta-loss is nan.*iteration 4\)"):
        trainer.fit()
    state = load_checkpoint(tmp_path, "last")
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["algorithm"].values())
    with (tmp_path / "metrics.csv").open() as f:
        assert max(int(r["step"]) for r in csv.DictReader(f)) == 5  # nothing logged for 6


def test_validation_keeps_the_best_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, 7)
    result = trainer.fit()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    val = [(float(r["metric"]), int(r["step"])) for r in rows if r["split"] == "val"]
    assert [s for _, s in val] == [3, 6, 7]  # every 3 iterations and at the end
    best_metric = max(m for m, _ in val)
    assert result.best_metric == best_metric
    assert result.best_step == next(s for m, s in val if m == best_metric)
    assert load_checkpoint(tmp_path, "best")["step"] == result.best_step
    assert len([r for r in rows if r["split"] == "train"]) == 7
    assert load_checkpoint(tmp_path, "last")["step"] == 7


def test_learning_rate_schedules():
    cosine = lr_factor(RunConfig(iterations=100, lr_schedule="cosine"))
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == 0.0
    step = lr_factor(RunConfig(lr_schedule="step", lr_step=10, lr_gamma=0.5))
    assert [step(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(RunConfig())(10**6) == 1.0


def test_a_budget_horizon_ends_the_schedule_with_the_time_limit(tmp_path, monkeypatch):
    clock = [0.0]

    def tick() -> float:  # every reading of the clock: one second later
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(time, "monotonic", tick)
    options = {"lr_schedule": "cosine", "lr_horizon": "budget", "time_limit": 1.0}
    trainer = make_trainer(tmp_path, 1000, **options)
    assert trainer.done(250) == 0.25  # before fit: the iterations alone
    result = trainer.fit()
    assert result.stopped_early and result.step < 100
    with (tmp_path / "metrics.csv").open() as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert lrs[0] > 0.009 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.0005
    trainer.clock = (20.0, clock[0])  # 20 s before this session, of a 60 s limit
    assert trainer.done(1) == pytest.approx(21 / 80)  # one tick since the session started
    assert trainer.done(900) == 0.9  # the iterations, when they end first


def test_the_optimizer_follows_the_schedule(tmp_path):
    trainer = make_trainer(tmp_path, 4, lr_schedule="step", lr_step=2, lr_gamma=0.1)
    trainer.fit()
    with (tmp_path / "metrics.csv").open() as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_resume_refuses_changed_settings():
    saved = RunConfig(ways=5)
    check_resumable(saved, saved.override(iterations=5000, device="cpu"))
    with pytest.raises(ConfigError, match=r"cannot resume with ways=20: .* ways=5"):
        check_resumable(saved, saved.override(ways=20))


# ----------------------------------------------------------------- real algorithms, end to end
STROKES = tiny_strokes_run(strided=True)
SINUSOID = {
    "dataset": "sinusoid", "backbone": "mlp", "hidden": (16, 16), "shots": 5, "queries": 5,
    "meta_batch": 3, "val_every": 2, "val_episodes": 3, "checkpoint_every": 2, "device": "cpu",
}  # fmt: skip


@pytest.mark.parametrize(
    ("algorithm", "options"),
    [(a, STROKES) for a in algorithm_names()] + [(a, SINUSOID) for a in ("maml", "reptile", "oml")],
    ids=lambda v: v if isinstance(v, str) else v["dataset"],
)
def test_every_algorithm_trains_saves_and_evaluates(algorithm, options, tmp_path):
    cfg = RunConfig(algorithm=algorithm, iterations=1, out=str(tmp_path), **options)
    assert train(cfg, progress=False).step == 1
    result = evaluate_run(tmp_path, episodes=2)
    assert result.metric == ("mse" if options is SINUSOID else "accuracy")
    assert result.episodes == 2 and math.isfinite(result.mean)


MAML_PLUS_PLUS = {  # schedules that change at iterations 1 and 3, across the resume at 2
    "inner_steps": 2, "multi_step_loss": True, "step_weight_annealing": 3,
    "first_order_steps": 3, "per_step_lr": True,
}  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [{}, {"labels": "none", "task_construction": "umtra"}, MAML_PLUS_PLUS],
    ids=["labels", "no-labels", "maml++"],
)
def test_maml_resume_through_train_matches_an_uninterrupted_run(options, tmp_path):
    resumed_exactly(RunConfig(algorithm="maml", iterations=4, **{**STROKES, **options}), tmp_path)


def resumed_exactly(cfg: RunConfig, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The algorithm's state after ``cfg``'s iterations in one go, which half of them and a
    resume for the rest reach exactly (run folders ``straight`` and ``parts``)."""
    train(cfg.override(out=str(tmp_path / "straight")), progress=False)
    parts = cfg.override(iterations=cfg.iterations // 2, out=str(tmp_path / "parts"))
    train(parts, progress=False)
    train(parts.override(iterations=cfg.iterations), resume=True, progress=False)
    straight = load_checkpoint(tmp_path / "straight", "last")["algorithm"]
    resumed = load_checkpoint(tmp_path / "parts", "last")["algorithm"]
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name
    return straight


@pytest.mark.parametrize("algorithm", ["protonet", "maml"])
def test_deterministic_mode_trains(algorithm, tmp_path):
    cfg = RunConfig(algorithm=algorithm, iterations=1, deterministic=True, out=str(tmp_path),
                    **STROKES)  # fmt: skip
    try:
        assert train(cfg, progress=False).step == 1
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_time_limit_stops_with_a_validation_and_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, 10**6, time_limit=1e-9)  # out of time after one step
    result = trainer.fit()
    assert result.step == 1 and result.stopped_early
    assert load_checkpoint(tmp_path, "last")["step"] == 1
    assert load_checkpoint(tmp_path, "best")["step"] == 1


@pytest.mark.parametrize(
    ("iterations", "budget", "by_time"), [(10**9, 60.0, True), (3, 60.0, False), (10, None, False)]
)
def test_the_progress_bar_counts_seconds_when_the_time_limit_ends_the_run(
    iterations, budget, by_time
):
    bar = ProgressBar(iterations, 0, budget, "test")  # drawn on the captured stderr
    bar.advance(1, 0.5, {"loss": "1.0"})  # 2 iterations per second
    bar.advance(2, 1.0, {"loss": "0.9"})
    assert bar.by_time is by_time
    assert bar._bar is not None and bar._bar.total == (budget if by_time else iterations)
    assert bar._bar.n == (1.0 if by_time else 2)
    bar.close()


def test_training_on_trainval_samples_its_classes_and_skips_validation(tmp_path, monkeypatch):
    def with_trainval(name, root=None, **options):  # Omniglot's layout: train + val = trainval
        splits = load_dataset(name, root=root, **options)
        return {**splits, "train": splits["train"].subset(range(10)), "trainval": splits["train"]}

    monkeypatch.setattr("lifelong.pipeline.data.load_dataset", with_trainval)
    _load_splits.cache_clear()
    cfg = RunConfig(algorithm="finetune", iterations=2, train_split="trainval",
                    out=str(tmp_path), **STROKES)  # fmt: skip
    try:
        result = train(cfg, progress=False)
        assert result.step == 2 and result.best_metric is None  # nothing held out to validate
        state = load_checkpoint(tmp_path, "last")
        assert state["algorithm"]["classifier.weight"].shape[0] == 20  # every trainval class
        assert evaluate_run(tmp_path, episodes=2).episodes == 2
        # OML's PLN has one output per trainval class too (it failed at its first step)
        oml = cfg.override(algorithm="oml", meta_batch=2, out=str(tmp_path / "oml"))
        assert train(oml, progress=False).step == 2
        state = load_checkpoint(tmp_path / "oml", "last")
        assert state["algorithm"]["prediction.head.weight"].shape[0] == 20
    finally:
        _load_splits.cache_clear()


def test_options_of_other_algorithms_are_refused(tmp_path):
    for options, message in [
        (
            {"algorithm": "protonet", "per_step_lr": True},
            "`per_step_lr` is an option of maml, fomaml, anil, metasgd, not of protonet",
        ),
        (
            {"algorithm": "oml", "precision": "bfloat16"},
            "`precision` is an option of maml, fomaml, anil, metasgd, reptile, protonet, finetune, "
            "not of oml",
        ),
        (
            {"algorithm": "protonet", "inner_optimizer": "adam"},
            "`inner_optimizer` is an option of maml, fomaml, anil, metasgd, reptile, not of "
            "protonet",
        ),
        ({"algorithm": "protonet", "train_split": "trainval"}, "has no such split"),
        (
            {"algorithm": "protonet", "lr_horizon": "budget", "lr_schedule": "step"},
            "`lr_horizon` budget ends a cosine or linear schedule, not `lr_schedule` step",
        ),
    ]:
        cfg = RunConfig(**{**STROKES, **options}, iterations=1, out=str(tmp_path))
        with pytest.raises(ConfigError, match=message):
            train(cfg, progress=False)
