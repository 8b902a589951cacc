"""Meta-training: the outer loop shared by every algorithm.

Each iteration draws a meta-batch of episodes, computes the algorithm's
:meth:`~lifelong.algorithms.base.Algorithm.meta_loss` and takes one step of the
``meta_optimizer`` on the meta-parameters: Adam (Finn et al. 2017, Algorithm 1, line 10; Snell
et al. 2017 train with Adam too) or plain SGD (Reptile's outer step, Nichol et al. 2018,
Algorithm 2), with an optional learning-rate schedule and gradient-norm clipping. Every
``val_every`` iterations the algorithm is evaluated on a *fixed* set of validation episodes
and the best checkpoint is kept; every ``checkpoint_every`` iterations the full state
(weights, optimiser, schedule, every random state) is saved, so ``resume`` continues a killed
run to exactly the parameters of an uninterrupted one. A non-finite loss or gradient stops
the run with :class:`TrainingDiverged`, leaving the last good checkpoint untouched; SIGTERM or
SIGINT (Ctrl-C) stops it at the end of the current step with a checkpoint of that step
(:class:`TrainingInterrupted`, which says how to resume).

Files in the run folder: ``config.yaml`` (the resolved settings), ``metrics.csv`` (one row per
iteration and per validation), ``last.json``/``best.json`` with their tensor files
(:mod:`lifelong.pipeline.checkpoint`) and, when the ``tensorboard`` package is installed, ``tb/``.

Under ``torchrun`` (:mod:`lifelong.pipeline.distributed`) every process runs this loop on its
share of each meta-batch: step ``t`` trains on tasks ``t*B .. t*B + B - 1`` of the run's one
task stream, each drawn from its own generator keyed by (seed, index)
(:class:`~lifelong.data.episodes.TaskStream`), and rank ``r`` of ``W`` draws the ``r``-th
``B / W`` of them. The meta-gradients (and the logged loss and metric) are averaged over the
ranks before the optimiser step, so every rank keeps the parameters of one process that draws the
whole meta-batch, and a run resumes on any number of processes. Rank 0 alone validates (the
others wait for its result), writes the files and shows progress; a checkpoint holds every
rank's random states (dropout and the like), restored when the run resumes on as many
processes (on another number, each rank seeds them afresh from the seed, its rank and the step).

Example:
    >>> result = train(RunConfig(algorithm="protonet", dataset="strokes", iterations=200,
    ...                          out="runs/proto"))
    >>> result.best_metric                      # validation accuracy of the best checkpoint
"""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from lifelong import __version__
from lifelong.algorithms.base import Algorithm
from lifelong.algorithms.registry import algorithm_class
from lifelong.data.episodes import TaskSampler
from lifelong.files import atomic_write
from lifelong.pipeline.allocator import keep_freed_memory
from lifelong.pipeline.checkpoint import (
    CheckpointError,
    all_finite,
    error_line,
    has_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import DataFacts, load_data
from lifelong.pipeline.device import resolve_device
from lifelong.pipeline.distributed import (
    World,
    agree,
    all_gather_state,
    average_gradients,
    broadcast_module,
    broadcast_state,
    local_rank,
    on_main,
    process_group,
    rank_seed,
    sync_batch_norm,
)
from lifelong.pipeline.evaluate import EpisodeSet, Evaluation, evaluate
from lifelong.pipeline.factory import build_algorithm, resolve_config
from lifelong.pipeline.memory import Restored, check_fits
from lifelong.unlabeled.base import TaskConstruction

RESUMABLE = (
    "iterations",
    "device",
    "data_root",
    "out",
    "checkpoint_every",
    "val_every",
    "time_limit",
)
"""Options that may change when a run is resumed; all others must match the saved run."""


class TrainingDiverged(RuntimeError):
    """The meta-loss or its gradient became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT (Ctrl-C) stopped the run at the end of a step, after a checkpoint of
    that step; ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Inside, SIGTERM and SIGINT are noted in the yielded list instead of stopping the
    process, so that training can checkpoint at the end of its step; a second signal acts as
    it did before (outside the main thread, where no handler can be set, nothing is noted)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    previous = {s: h for s, h in previous.items() if h is not signal.SIG_IGN}  # (nohup)

    def restore() -> None:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)

    def note(signum: int, frame: object) -> None:
        caught.append(signum)
        restore()

    for s in previous:
        signal.signal(s, note)
    try:
        yield caught
    finally:
        restore()


@dataclass
class TrainResult:
    """How a run ended: the last iteration, the best validation metric and its iteration
    (``None`` without validation), whether a time budget stopped it early."""

    run_dir: Path
    step: int
    best_metric: float | None
    best_step: int | None
    stopped_early: bool = False


def lr_factor(cfg: RunConfig, done: Callable[[int], float] | None = None) -> Callable[[int], float]:
    """The learning-rate multiplier after ``step`` optimiser steps: ``none`` (1), ``cosine``
    (half a cosine from 1 to 0 over the run, Loshchilov & Hutter 2017), ``linear`` (``1 -``
    the part done: Reptile's step size annealed to 0, Nichol et al. 2018, as their code's
    ``frac_done``) or ``step`` (``lr_gamma ** (step // lr_step)``, as the halving every 2000
    episodes of Snell et al.). ``done(step)``: the part of the run done, from 0 to 1 (default
    ``step / iterations``; :meth:`Trainer.done` with ``lr_horizon: budget``)."""
    part = done or (lambda step: step / cfg.iterations)
    if cfg.lr_schedule == "linear":
        return lambda step: max(0.0, 1.0 - part(step))
    if cfg.lr_schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(part(step), 1.0)))
    if cfg.lr_schedule == "step":
        return lambda step: cfg.lr_gamma ** (step // cfg.lr_step)
    return lambda step: 1.0


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's, numpy's and torch's global generators; ``deterministic`` also makes
    PyTorch use deterministic kernels (cuDNN and cuBLAS on GPUs), at some cost in speed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class MetricsLog:
    """``metrics.csv`` (and TensorBoard scalars when available). Reopening a log keeps only the
    rows up to iteration ``keep_until``, so a resumed run writes no duplicates. ``seconds`` is
    the run's wall-clock time when the row was written (validations included), counted on
    from the last kept row after a resume: :attr:`seconds` is where it starts."""

    COLUMNS = ("step", "split", "loss", "metric", "ci95", "grad_norm", "lr", "seconds")

    def __init__(self, run_dir: Path, keep_until: int) -> None:
        self.path = run_dir / "metrics.csv"
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        lines = [",".join(self.COLUMNS)] + [
            ",".join(r.get(c) or "" for c in self.COLUMNS) for r in rows
        ]
        self.seconds = max((float(r.get("seconds") or 0) for r in rows), default=0.0)
        atomic_write(self.path, ("\n".join(lines) + "\n").encode())
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, self.COLUMNS)
        self.tensorboard = _summary_writer(run_dir / "tb")

    def write(self, step: int, split: str, **values: float | None) -> None:
        self.writer.writerow({"step": step, "split": split, **values})
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in values.items():
                if value is not None and key != "seconds":
                    self.tensorboard.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _summary_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


class NoLog:
    """The metrics log of ranks other than 0: nothing is written."""

    seconds = 0.0

    def write(self, step: int, split: str, **values: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """The meta-training loop of one run (of one rank, under ``torchrun``: module doc).

    Args:
        algorithm: the learner to meta-train (moved to ``device``).
        config: the run's settings (optimiser, schedule, clipping, intervals, iterations).
        sampler: the training task stream (step ``t`` draws its tasks ``t * meta_batch ..``).
        run_dir: where checkpoints and logs go.
        facts: the data facts saved with each checkpoint (so the run can be rebuilt).
        validation: fixed validation episodes, or ``None`` for no validation.
        device: where the algorithm and the batches live.
        progress: show a tqdm progress bar (loss, metric, it/s) on stderr; it counts
            iterations, or seconds when ``config.time_limit`` is expected to end the run first.

    In a process group (:mod:`lifelong.pipeline.distributed`) each step draws this rank's
    ``config.meta_batch / world_size`` tasks of the stream (module doc), batch norm with running
    statistics becomes :class:`~lifelong.pipeline.distributed.GlobalBatchNorm`, the algorithm
    gathers what it sums up over a meta-batch from every rank
    (:meth:`~lifelong.algorithms.base.Algorithm.share_meta_batches`) and every rank starts from
    rank 0's parameters.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        config: RunConfig,
        sampler: TaskSampler,
        run_dir: str | Path,
        facts: DataFacts,
        validation: EpisodeSet | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> None:
        self.world = World.current()
        config = resolve_config(config)
        self.batch_size = self.world.share(config.meta_batch)
        if self.world.size > 1 and not algorithm_class(config.algorithm).splittable:
            raise ConfigError(
                f"{config.algorithm} meta-trains on whole meta-batches: run it in one process, "
                f"not {self.world.size}"
            )
        self.device = torch.device(device)
        if self.world.distributed:
            algorithm = sync_batch_norm(algorithm)
            algorithm.share_meta_batches(all_gather_state)
        self.algorithm = algorithm.to(self.device).train()
        broadcast_module(self.algorithm)
        self.config, self.sampler, self.facts = config, sampler, facts
        self.run_dir = Path(run_dir)
        self.validation, self.progress = validation, progress
        self.time_budget = None if config.time_limit is None else config.time_limit * 60
        optimizer = torch.optim.SGD if config.meta_optimizer == "sgd" else torch.optim.Adam
        self.optimizer = optimizer(self.algorithm.parameters(), lr=config.meta_lr)
        if config.lr_horizon == "budget" and self.world.distributed:
            raise ConfigError(
                "`lr_horizon` budget reads the clock of one process: run it in one process, "
                f"not {self.world.size}"
            )
        self.clock: tuple[float, float] | None = None  # (seconds before this session, start)
        budget = config.lr_horizon == "budget" and self.time_budget is not None
        self.scheduler = LambdaLR(self.optimizer, lr_factor(config, self.done if budget else None))
        self.step = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.saved_step: int | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The full state (in a process group every rank must call it: it gathers every rank's
        sampler and random states under ``"ranks"``)."""
        state = {
            "version": __version__,
            "step": self.step,
            "config": self.config.to_dict(),
            "facts": self.facts.to_dict(),
            "algorithm": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "best": {"metric": self.best_metric, "step": self.best_step},
        }
        if self.world.distributed:
            state["ranks"] = all_gather_state({"sampler": state["sampler"], "rng": state["rng"]})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a run saved by any number of processes). A state that
        does not fit this run is a :class:`CheckpointError`."""
        try:
            self._restore(state)
        except ConfigError:
            raise
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"the last checkpoint of {str(self.run_dir)!r} does not fit its run "
                f"({type(err).__name__}: {error_line(err)})"
            ) from None
        moments = (v for state in self.optimizer.state.values() for v in state.values())
        if not all_finite([*self.algorithm.state_dict().values(), *moments]):
            raise CheckpointError(
                f"the last checkpoint of {str(self.run_dir)!r} holds weights or optimizer "
                "moments that are NaN or infinite: it cannot be resumed"
            )

    def _restore(self, state: dict[str, Any]) -> None:
        ranks = state.get("ranks", [{"sampler": state["sampler"], "rng": state["rng"]}])
        own = ranks[self.world.rank] if len(ranks) == self.world.size else ranks[0]
        self.algorithm.load_state_dict(state["algorithm"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for key, value in self.optimizer.state.get(p, {}).items():
                    if value.dim() and value.shape != p.shape:
                        raise ValueError(
                            f"optimizer {key} of shape {tuple(value.shape)} for a parameter "
                            f"of shape {tuple(p.shape)}"
                        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        sampler = own["sampler"]
        if "position" not in sampler:  # saved before keyed task streams: go on from the step
            sampler = {**sampler, "position": torch.tensor(self.step * self.config.meta_batch)}
        self.sampler.load_state_dict(sampler)
        if len(ranks) == self.world.size:
            set_rng_state(own["rng"])
        else:
            fresh = rank_seed(self.config.seed + self.step, self.world.rank)
            seed_everything(fresh, self.config.deterministic)
        self.best_metric, self.best_step = state["best"]["metric"], state["best"]["step"]
        self.saved_step = self.step

    def save(self, tag: str) -> None:
        """Write checkpoint ``tag`` (rank 0; every rank takes part in gathering the state)."""
        state = self.state_dict()
        if self.world.is_main:
            save_checkpoint(self.run_dir, tag, state)
        if tag == "last":
            self.saved_step = self.step

    # ------------------------------------------------------------------ loop
    def done(self, step: int) -> float:
        """The part of the run done after ``step`` steps with ``lr_horizon: budget``: the
        larger of ``step / iterations`` and the training seconds so far over those of earlier
        sessions plus this session's time limit."""
        part = step / self.config.iterations
        if self.clock is None or self.time_budget is None:
            return part
        before, started = self.clock
        spent = before + time.monotonic() - started
        return max(part, spent / (before + self.time_budget))

    @property
    def first_task(self) -> int:
        """The index of this rank's first task of the next step in the run's task stream."""
        return self.step * self.config.meta_batch + self.world.rank * self.batch_size

    def train_step(self) -> tuple[float, float, float]:
        """One meta-update; returns loss, metric and gradient norm (before clipping), of the
        whole meta-batch (averaged over the ranks)."""
        if isinstance(self.sampler, TaskConstruction):  # (before the draw: exact on resume)
            self.sampler.follow(self.algorithm)
        self.algorithm.at_iteration(self.step)
        batch = self.sampler.tasks(self.first_task, self.batch_size).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.algorithm.meta_loss(batch)
        out.loss.backward()
        loss, metric = average_gradients(self.algorithm.parameters(), out.loss, out.metric)
        if not math.isfinite(loss):
            self._diverged(f"meta-loss is {loss}")
        clip = self.config.grad_clip or math.inf
        norm = float(nn.utils.clip_grad_norm_(self.algorithm.parameters(), clip))
        if not math.isfinite(norm):
            self._diverged(f"gradient norm is {norm}")
        self.optimizer.step()
        self.scheduler.step()
        return loss, metric, norm

    def _diverged(self, what: str) -> None:
        last = (
            f"the last good checkpoint (iteration {self.saved_step}) is in {self.run_dir}"
            if self.saved_step is not None
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"training diverged at iteration {self.step + 1}: {what}; {last}. "
            "Try a lower `meta_lr` or `inner_lr`, or `grad_clip`"
        )

    def _interrupted(self, signum: int) -> None:
        """Checkpoint the step just finished (if not yet saved) and stop."""
        if self.saved_step != self.step:
            self.save("last")
        run = str(self.run_dir)
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} stopped training at iteration {self.step}; the "
            f"checkpoint is in {run}: continue with `lifelong train --out {run} --resume`",
            signum,
        )

    def validate(self) -> Evaluation | None:
        """Evaluate on the fixed validation episodes; save ``best`` when the metric improves
        (higher accuracy, lower MSE). In a process group rank 0 evaluates and tells the others
        the result."""
        if self.validation is None:
            return None
        result = (
            evaluate(self.algorithm, self.validation, self.device, split="val")
            if self.world.is_main
            else None
        )
        if self.world.distributed:
            result = Evaluation(**broadcast_state(None if result is None else result.to_dict()))
        assert result is not None
        sign = -1.0 if self.algorithm.regression else 1.0
        if self.best_metric is None or sign * result.mean > sign * self.best_metric:
            self.best_metric, self.best_step = result.mean, self.step
            self.save("best")
        return result

    def check_memory(self) -> int | None:
        """Stop with a :class:`ConfigError` when one step would not fit in the free memory
        (:mod:`lifelong.pipeline.memory`; one process only); return the estimate in bytes."""
        if self.world.distributed:
            return None
        cfg = self.config

        def probe(episodes: int) -> None:
            self.algorithm.meta_loss(batch[:episodes]).loss.backward()

        size = (self.facts.image_shape or (0, 0, 0))[-1]
        options = (
            f"`meta_batch` ({cfg.meta_batch}), `ways` ({cfg.ways}), `queries` ({cfg.queries})"
            + (f" or `image_size` ({size})" if size else "")
        )
        with Restored(self.algorithm, self.sampler):
            self.algorithm.at_iteration(cfg.iterations - 1)  # the costliest: schedules' end
            batch = self.sampler.tasks(self.first_task, self.batch_size).to(self.device)
            return check_fits(
                probe,
                self.batch_size,
                self.device,
                "one training step",
                options,
                scalable=type(self.algorithm).splittable,
            )

    def fit(self) -> TrainResult:
        """Train until ``config.iterations`` (or the time budget); return how it ended."""
        cfg = self.config
        if self.step < cfg.iterations:
            self.check_memory()
        main = self.world.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.run_dir, keep_until=self.step) if main else NoLog()
        description = f"{cfg.algorithm} {cfg.dataset}"
        bar = ProgressBar(
            cfg.iterations, self.step, self.time_budget, description, self.progress and main
        )
        metric_name = "mse" if self.algorithm.regression else "acc"
        started, stopped_early, val = time.monotonic(), False, None
        before = log.seconds
        self.clock = (before, started)

        def seconds() -> float:
            return round(before + time.monotonic() - started, 2)

        try:
            with stop_requests() as stops:
                while self.step < cfg.iterations:
                    lr = self.optimizer.param_groups[0]["lr"]
                    loss, metric, norm = self.train_step()
                    self.step += 1
                    log.write(
                        self.step, "train", loss=loss, metric=metric, grad_norm=norm, lr=lr,
                        seconds=seconds(),
                    )  # fmt: skip
                    finished = self.step == cfg.iterations
                    out_of_time = self.time_budget is not None and agree(
                        time.monotonic() - started > self.time_budget  # rank 0's clock decides
                    )
                    if self.step % cfg.val_every == 0 or finished or out_of_time:
                        val = self.validate() or val
                        if val is not None:
                            log.write(
                                self.step, "val", metric=val.mean, ci95=val.ci95, seconds=seconds()
                            )
                    if self.step % cfg.checkpoint_every == 0 or finished or out_of_time:
                        self.save("last")
                    postfix = {"loss": f"{loss:.4f}", metric_name: f"{metric:.4f}"}
                    if val is not None:
                        postfix["val"] = f"{val.mean:.4f}"
                    bar.advance(self.step, time.monotonic() - started, postfix)
                    if agree(bool(stops)) and not finished:  # rank 0's signal decides
                        self._interrupted(stops[0] if stops else signal.SIGTERM)
                    if out_of_time:
                        stopped_early = True
                        break
        finally:
            bar.close()
            log.close()
        return TrainResult(self.run_dir, self.step, self.best_metric, self.best_step, stopped_early)


class ProgressBar:
    """A tqdm bar over the iterations, or over the seconds of the time limit when that limit
    is the one expected to end the run (``iterations`` is then only an upper bound): the
    demo, or a run given ``time_limit`` minutes for more iterations than fit."""

    def __init__(
        self,
        iterations: int,
        start: int,
        time_budget: float | None,
        description: str,
        enabled: bool = True,
    ) -> None:
        self.iterations, self.start, self.time_budget = iterations, start, time_budget
        self.description, self.enabled = description, enabled
        self.by_time = False
        self._bar: tqdm | None = None

    def _open(self, step: int, elapsed: float) -> tqdm:
        """Opened at the first step, when the rate of iterations can be estimated."""
        if self.time_budget is not None:
            rate = (step - self.start) / max(elapsed, 1e-9)
            self.by_time = self.start + rate * self.time_budget < self.iterations
        common = {"disable": not self.enabled, "dynamic_ncols": True, "desc": self.description}
        if self.by_time:
            fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}"
            return tqdm(total=self.time_budget, bar_format=fmt, **common)
        return tqdm(total=self.iterations, initial=self.start, unit="it", **common)

    def advance(self, step: int, elapsed: float, postfix: dict[str, str]) -> None:
        """Show iteration ``step`` reached after ``elapsed`` seconds of this session."""
        if self._bar is None:
            self._bar = self._open(step, elapsed)
        if self.by_time:
            self._bar.set_postfix({"it": step, **postfix}, refresh=False)
            self._bar.update(min(elapsed, self._bar.total) - self._bar.n)
        else:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def check_resumable(saved: RunConfig, config: RunConfig) -> None:
    """A resumed run may change only :data:`RESUMABLE` options."""
    for f in fields(RunConfig):
        if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(config, f.name):
            raise ConfigError(
                f"cannot resume with {f.name}={getattr(config, f.name)!r}: the run was trained "
                f"with {f.name}={getattr(saved, f.name)!r} (only {', '.join(RESUMABLE)} may change)"
            )


def train(
    config: RunConfig,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Meta-train the run described by ``config`` into ``config.out``.

    With ``resume``, continue the run folder's last checkpoint (``config`` must match the
    saved one, see :data:`RESUMABLE`); without it, a folder that already holds a run is an
    error, so that no run is overwritten by accident. Launched by ``torchrun``, the processes
    join one process group and share the meta-batches (module doc); rank 0 reads the run
    folder and gives the others its state, so only rank 0 needs to see the folder.

    Example:
        $ torchrun --nproc-per-node 2 -m lifelong train --algorithm maml --meta-batch 32 ...
    """
    if config.out is None:
        raise ConfigError("no run folder given: set `out` RUN_DIR")
    device = resolve_device(config.device, local_rank())
    with process_group(device) as world:
        run_dir = Path(config.out)
        given = config
        state = on_main(lambda: _saved_state(run_dir, given, resume))
        if state is not None:
            config = continued(config, state)
        config = resolve_config(config)
        seed_everything(config.seed, config.deterministic)  # the same model on every rank
        data = load_data(config)
        algorithm = build_algorithm(config, data.facts)
        seed_everything(rank_seed(config.seed, world.rank), config.deterministic)
        if device.type == "cpu":
            keep_freed_memory()  # re-use pages between steps (see lifelong.pipeline.allocator)
        # training on trainval leaves no held-out classes to validate on
        has_val = data.splits is None or ("val" in data.splits and config.train_split == "train")
        validation = (
            data.sampler("val", seed=config.seed).fixed(config.val_episodes, seed=config.seed)
            if has_val
            else None
        )
        trainer = Trainer(
            algorithm,
            config,
            data.sampler(config.train_split, seed=config.seed),
            run_dir,
            data.facts,
            validation,
            device,
            progress,
        )
        if state is not None:
            trainer.load_state_dict(state)
        if world.is_main:
            config.save(run_dir / "config.yaml")
        return trainer.fit()


def continued(config: RunConfig, state: dict[str, Any]) -> RunConfig:
    """``config`` for resuming the checkpoint ``state``: the options it leaves unset (to the
    algorithm's default) take the run's own values, so that a run saved before an option
    existed goes on as it was trained (:meth:`RunConfig.of_checkpoint`)."""
    return config.with_defaults(RunConfig.of_checkpoint(state).to_dict(), "the resumed run")


def _saved_state(run_dir: Path, config: RunConfig, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume (checked against ``config``), or ``None`` for a new run in a
    folder that holds none."""
    if resume:
        if not has_checkpoint(run_dir, "last"):
            raise ConfigError(f"nothing to resume: {str(run_dir)!r} has no checkpoint")
        state = load_checkpoint(run_dir, "last")
        check_resumable(RunConfig.of_checkpoint(state), resolve_config(continued(config, state)))
        return state
    if has_checkpoint(run_dir, "last"):
        raise ConfigError(
            f"{str(run_dir)!r} already holds a run: pass --resume to continue it, "
            "or choose another `out`"
        )
    return None
