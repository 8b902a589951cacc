"""Distributed meta-training on the CPU (gloo): ranks that share the meta-batch give the
parameters of one process with all their tasks; only rank 0 writes; resume; a dying rank ends
the job; two "nodes" on 127.0.0.1; the helpers of lifelong.pipeline.distributed.

Ranks are processes started with ``multiprocessing`` (spawn) or by ``torchrun``, one thread
each, on tiny data (8x8 images, Conv-4 with 8 filters)."""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from test_train import FACTS, TRAIN, VAL, TinyProto
from torch import nn
from torch.distributed.elastic.utils.distributed import get_free_port

from lifelong.data.episodes import EpisodeSampler
from lifelong.pipeline.checkpoint import load_checkpoint
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.device import resolve_device
from lifelong.pipeline.distributed import (
    GlobalBatchNorm,
    World,
    all_gather_state,
    average_gradients,
    on_main,
    rank_seed,
    sync_batch_norm,
)
from lifelong.pipeline.factory import build_algorithm
from lifelong.pipeline.train import Trainer, seed_everything

ROOT = Path(__file__).resolve().parent.parent
BEFORE_BATCH_NORM = re.compile(r"features\.\d+\.0\.bias")
"""Conv-4's convolution biases: batch norm cancels them, so their meta-gradient is zero in
exact arithmetic and rounding noise in float32; Adam would turn that noise into steps of the
full learning rate, in directions that depend on the order of summation. Equivalence tests
keep them fixed (their gradient is zeroed after each backward pass, in both runs)."""
SETTINGS = {
    "ways": 3, "shots": 1, "queries": 2, "meta_batch": 4, "backbone": "conv4", "hidden": (8,),
    "strided": True, "meta_lr": 0.001, "val_every": 2, "val_episodes": 4, "checkpoint_every": 2,
}  # fmt: skip


# ------------------------------------------------------------------------------ processes
def _rank_main(rank: int, size: int, store: str, worker: Callable[..., None], args: tuple) -> None:
    """One rank: join a gloo group through the file ``store``, run ``worker(rank, *args)``; an
    error is written to ``args[0] / f"rank{rank}.error"`` (args[0] is the test's folder). A file
    store, not TCP: a TCP store lives in rank 0, which may exit while a peer's teardown still
    talks to it (rank 1 aborted so once, 'terminate called without an active exception')."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=size,
        timeout=timedelta(seconds=60),
    )
    try:
        worker(rank, *args)
        dist.barrier()  # as lifelong's process_group: no rank leaves while a peer still talks
    except BaseException as err:
        (args[0] / f"rank{rank}.error").write_text(f"{type(err).__name__}: {err}")
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


def spawn(worker: Callable[..., None], *args: Any, size: int = 2, limit: float = 120) -> list[int]:
    """Run ``worker`` on ``size`` ranks; their exit codes (all must end within ``limit`` s)."""
    context = multiprocessing.get_context("spawn")
    store = str(Path(args[0]) / f"store-{time.monotonic_ns()}")
    ranks = [
        context.Process(target=_rank_main, args=(rank, size, store, worker, args))
        for rank in range(size)
    ]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + limit
    for process in ranks:
        process.join(max(deadline - time.monotonic(), 0.1))
    alive = [p for p in ranks if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, f"ranks still running after {limit} s"
    return [p.exitcode for p in ranks]


def zero_grad(parameter: torch.Tensor) -> None:
    assert parameter.grad is not None
    parameter.grad.zero_()


def make_trainer(
    run_dir: Path, algorithm: str, iterations: int, rank: int, **options: Any
) -> Trainer:
    """A Trainer of ``algorithm`` (``tiny``: test_train's TinyProto, which draws from every
    global generator) on the tiny data, as rank ``rank`` would build it."""
    cfg = RunConfig(
        **{**SETTINGS, **options},
        algorithm="protonet" if algorithm == "tiny" else algorithm,
        iterations=iterations,
        out=str(run_dir),
    )
    seed_everything(0)
    model = TinyProto() if algorithm == "tiny" else build_algorithm(cfg, FACTS)
    for name, parameter in model.named_parameters():
        if BEFORE_BATCH_NORM.fullmatch(name.split(".", 1)[1]):
            parameter.register_post_accumulate_grad_hook(zero_grad)
    seed_everything(rank_seed(0, rank))
    sampler = EpisodeSampler(TRAIN, 3, 1, 2, seed=0)
    validation = EpisodeSampler(VAL, 3, 1, 2).fixed(cfg.val_episodes, seed=0)
    return Trainer(model, cfg, sampler, run_dir, FACTS, validation, progress=False)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_rows(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "metric", "grad_norm"):
            if x[key]:
                assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-4, abs=1e-5), (x, y)


# ------------------------------------------------------------------------------ equivalence
ITERATIONS = 4


ALGORITHMS = ("maml", "protonet", "finetune")


def _train_ranks(rank: int, folder: Path, size: int) -> None:
    for algorithm in ALGORITHMS:
        run_dir = folder / f"{algorithm}-{size}-rank{rank}"  # only rank 0's folder is written
        make_trainer(run_dir, algorithm, ITERATIONS, rank).fit()
    # half the run, to be resumed on another number of processes
    make_trainer(folder / f"half-{size}-rank{rank}", "maml", ITERATIONS // 2, rank).fit()
    if size > 2:
        return
    # a time limit that ends the run after its first step: rank 0's clock decides for both
    timed = make_trainer(folder / f"timed-rank{rank}", "tiny", 1000, rank, time_limit=1e-9)
    assert timed.fit().step == 1
    with pytest.raises(ConfigError, match="meta_batch 3 cannot be split evenly over 2"):
        make_trainer(folder / "never", "tiny", 1, rank, meta_batch=3)
    with pytest.raises(ConfigError, match="oml meta-trains on whole meta-batches"):
        Trainer(TinyProto(), RunConfig(algorithm="oml"), None, folder / "never", FACTS)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MAML, ProtoNet and the fine-tuning baseline, 4 iterations each, on 2 ranks (2 episodes
    each) and on 4 ranks (1 each) of meta-batch 4, and MAML for 2 of the 4 iterations; then,
    on 2 ranks, a run stopped by its time limit and the settings that cannot be split over
    ranks (both ranks check them)."""
    folder = tmp_path_factory.mktemp("ranks")
    assert spawn(_train_ranks, folder, 2) == [0, 0]
    assert spawn(_train_ranks, folder, 4, size=4) == [0, 0, 0, 0]
    return folder


def assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.allclose(b[name], value, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ranks_reach_the_parameters_of_one_process(ranks, tmp_path, algorithm, size):
    """k = 4 meta-iterations of meta-batch 4 on 2 or 4 ranks = one process drawing the whole
    meta-batch: every task comes from the run's one task stream, whoever draws it. Parameters,
    batch-norm running statistics (ProtoNet, fine-tuning: GlobalBatchNorm), logged losses,
    gradient norms and validation accuracies agree to float tolerance."""
    reference = make_trainer(tmp_path, algorithm, ITERATIONS, rank=0)
    start = {k: v.clone() for k, v in reference.algorithm.state_dict().items()}
    reference.fit()

    trained = reference.algorithm.state_dict()
    distributed = load_checkpoint(ranks / f"{algorithm}-{size}-rank0", "last")["algorithm"]
    assert_same_parameters(trained, distributed)
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # it did train
    assert_same_rows(rows(ranks / f"{algorithm}-{size}-rank0"), rows(tmp_path))


def test_only_rank_zero_writes_files_and_the_checkpoint_holds_every_rank_state(ranks):
    for run in (*(f"{a}-{n}" for a in ALGORITHMS for n in (2, 4)), "timed"):
        assert not any((ranks / f"{run}-rank{r}").exists() for r in (1, 2, 3))
        written = {p.name for p in (ranks / f"{run}-rank0").iterdir()}
        assert {"metrics.csv", "last.json", "best.json"} <= written
    assert not (ranks / "never").exists()
    state = load_checkpoint(ranks / "maml-4-rank0", "last")
    assert len(state["ranks"]) == 4
    assert state["ranks"][0]["rng"]["python"] == state["rng"]["python"]  # rank 0's, as in 1
    assert state["ranks"][1]["rng"]["python"] != state["rng"]["python"]
    assert load_checkpoint(ranks / "timed-rank0", "last")["step"] == 1


@pytest.mark.parametrize("size", [2, 4])
def test_a_run_resumes_on_another_number_of_processes(ranks, tmp_path, size):
    """The first half of a MAML run on ``size`` ranks, its second half in one process: the
    parameters of one process throughout."""
    reference = make_trainer(tmp_path / "one", "maml", ITERATIONS, rank=0)
    reference.fit()
    resumed = make_trainer(tmp_path / "resumed", "maml", ITERATIONS, rank=0)
    resumed.load_state_dict(load_checkpoint(ranks / f"half-{size}-rank0", "last"))
    assert resumed.step == ITERATIONS // 2
    resumed.fit()
    assert_same_parameters(reference.algorithm.state_dict(), resumed.algorithm.state_dict())


REPTILE = {"inner_batch": 2, "eval_inner_steps": 5}
"""Reptile with its carried inner Adam state, on mini-batches of 2 of the 3 support images."""


def _reptile_ranks(rank: int, folder: Path) -> None:
    make_trainer(folder / f"reptile-rank{rank}", "reptile", ITERATIONS, rank, **REPTILE).fit()


def test_reptile_ranks_carry_the_inner_state_of_one_process(tmp_path):
    """Reptile's carried inner Adam state sums up the tasks of every rank in the meta-batch's
    order, and each rank draws the mini-batches of its tasks as one process does: 2 ranks
    reach one process's parameters and carried state."""
    assert spawn(_reptile_ranks, tmp_path) == [0, 0]
    reference = make_trainer(tmp_path / "one", "reptile", ITERATIONS, 0, **REPTILE)
    reference.fit()
    trained = reference.algorithm.state_dict()
    assert int(trained["carried.t"]) == ITERATIONS * SETTINGS["meta_batch"] * 5  # 5 steps
    distributed = load_checkpoint(tmp_path / "reptile-rank0", "last")["algorithm"]
    carried = zip(distributed.pop("carried.moments"), trained.pop("carried.moments"), strict=True)
    for row, expected in carried:  # m, the last gradient: its small entries keep the rounding
        scale = float(expected.abs().max())  # of the tasks' grouping
        torch.testing.assert_close(row, expected, rtol=1e-4, atol=1e-5 * scale)
    assert_same_parameters(trained, distributed)


# ------------------------------------------------------------------------------ resume, failure
def _tiny_rank(rank: int, folder: Path, run: str, resume: bool, die_at: int | None) -> None:
    """TinyProto (draws from every global generator) for 6 iterations, checkpoints every 2;
    ``resume``: from the run's last checkpoint; ``die_at``: rank 1 is killed (SIGKILL) as that
    iteration starts."""
    trainer = make_trainer(folder / run, "tiny", 6, rank)
    if resume:
        trainer.load_state_dict(on_main(lambda: load_checkpoint(folder / run, "last")))
    if die_at is not None and rank == 1:
        step = trainer.train_step

        def dying() -> tuple[float, float, float]:
            if trainer.step + 1 == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return step()

        trainer.train_step = dying  # type: ignore[method-assign]
    trainer.fit()


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_the_run_resumes_to_the_uninterrupted_result(tmp_path):
    assert spawn(_tiny_rank, tmp_path, "full", False, None) == [0, 0]
    # rank 1 dies during iteration 5: rank 0 stops with a clear error instead of waiting
    assert spawn(_tiny_rank, tmp_path, "run", False, 5) == [1, -signal.SIGKILL]
    error = (tmp_path / "rank0.error").read_text()
    assert error.startswith("RankFailure: rank 0 of 2: averaging the gradients failed")
    assert "another process of the job died" in error
    assert load_checkpoint(tmp_path / "run", "last")["step"] == 4

    assert spawn(_tiny_rank, tmp_path, "run", True, None) == [0, 0]
    full, resumed = (load_checkpoint(tmp_path / r, "last") for r in ("full", "run"))
    assert resumed["step"] == 6
    for name, value in full["algorithm"].items():
        assert torch.equal(resumed["algorithm"][name], value), name
    for a, b in zip(full["ranks"], resumed["ranks"], strict=True):  # every rank's state
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    logs = [(tmp_path / r / "metrics.csv").read_text().splitlines() for r in ("run", "full")]
    assert [line.rsplit(",", 1)[0] for line in logs[0]] == [  # all but the clock
        line.rsplit(",", 1)[0] for line in logs[1]
    ]


# ------------------------------------------------------------------------------ torchrun
BIN = Path(sys.executable).parent
TINY_RUN = [
    "--algorithm", "protonet", "--dataset", "strokes",
    "--dataset-option", "classes={train: 20, val: 8, test: 8}", "--dataset-option", "per_class=6",
    "--ways", "3", "--shots", "1", "--queries", "2", "--meta-batch", "4", "--hidden", "8",
    "--val-every", "2", "--val-episodes", "4", "--checkpoint-every", "2", "--seed", "0",
]  # fmt: skip


def torchrun(*args: str | Path, cwd: Path, wait: bool = True) -> Any:
    """``torchrun ARGS`` (stdout and stderr together, as text)."""
    command = [str(BIN / "torchrun"), *map(str, args)]
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not wait:
        return process
    output, _ = process.communicate(timeout=180)
    return process.returncode, output


@pytest.mark.slow
def test_torchrun_runs_the_console_script_with_progress_on_rank_zero_only(tmp_path):
    code, output = torchrun(
        "--nproc-per-node", "2", "--master-port", get_free_port(), "--log-dir", tmp_path / "logs",
        "--redirects", "3", "--no-python", BIN / "lifelong", "train", *TINY_RUN,
        "--iterations", "4", "--out", tmp_path / "run", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "logs").rglob("stderr.log")}
    assert "4/4" in logs["0"] and "4/4" not in logs["1"]  # the progress bar of rank 0 only
    assert load_checkpoint(tmp_path / "run", "last")["step"] == 4
    assert len(load_checkpoint(tmp_path / "run", "last")["ranks"]) == 2
    assert (tmp_path / "run" / "config.yaml").is_file()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def rank_of(pid: int) -> int | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_rank_killed_under_torchrun_ends_the_job_with_a_clear_message(tmp_path):
    process = torchrun(
        "--nproc-per-node", "2", "--master-port", get_free_port(), "-m", "lifelong", "train",
        *TINY_RUN, "--iterations", "100000", "--quiet", "--out", tmp_path / "run",
        cwd=tmp_path, wait=False,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "last.json").exists():  # training is under way
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = {rank_of(pid): pid for pid in children(process.pid)}
        os.kill(workers[1], signal.SIGKILL)
        output, _ = process.communicate(timeout=120)  # ends, in bounded time
    finally:
        process.kill()
    assert process.returncode != 0
    assert "rank      : 1" in output and "Signal 9 (SIGKILL)" in output, output


def _two_node_reference(cfg: RunConfig) -> tuple[float, float]:
    """Loss and gradient norm of the first step of one process drawing both ranks' tasks, in
    float64 (float32 batch norm in channels_last layout is off by about 5e-5 here, in one
    process as on two ranks)."""
    from lifelong.pipeline.data import load_data

    data = load_data(cfg)
    seed_everything(cfg.seed)
    algorithm = build_algorithm(cfg, data.facts).double().train()
    tasks = data.sampler("train", seed=cfg.seed).tasks(0, cfg.meta_batch)
    out = algorithm.meta_loss(tasks.to("cpu", torch.float64))
    out.loss.backward()
    norm = nn.utils.clip_grad_norm_(algorithm.parameters(), float("inf"))
    return float(out.loss.detach()), float(norm)


@pytest.mark.slow
def test_two_nodes_on_localhost_train_as_one_job(tmp_path):
    """Two torchrun launchers, one process each, as nodes 0 and 1 of a static rendezvous on
    127.0.0.1: one job of 2 ranks (the first step is that of one process with both ranks'
    tasks; rank 0 writes the run)."""
    port = get_free_port()

    def node(rank: int) -> subprocess.Popen[str]:
        return torchrun(
            "--nnodes", "2", "--node-rank", rank, "--nproc-per-node", "1",
            "--master-addr", "127.0.0.1", "--master-port", port, "-m", "lifelong", "train",
            *TINY_RUN, "--iterations", "2", "--quiet", "--out", tmp_path / "run",
            cwd=tmp_path, wait=False,
        )  # fmt: skip

    nodes = [node(0), node(1)]
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    state = load_checkpoint(tmp_path / "run", "last")
    assert state["step"] == 2 and len(state["ranks"]) == 2
    first = rows(tmp_path / "run")[0]
    loss, norm = _two_node_reference(RunConfig.from_yaml(tmp_path / "run" / "config.yaml"))
    assert float(first["loss"]) == pytest.approx(loss, rel=2e-4)
    assert float(first["grad_norm"]) == pytest.approx(norm, rel=2e-4)


# ------------------------------------------------------------------------------ helpers
@pytest.fixture
def one_rank_group():
    """A gloo process group of one rank in this process."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{get_free_port()}", rank=0, world_size=1
    )
    try:
        yield World.current()
    finally:
        dist.destroy_process_group()


def test_global_batch_norm_equals_batch_norm_on_the_same_batch(one_rank_group):
    assert one_rank_group.distributed and one_rank_group.size == 1
    torch.manual_seed(0)
    native = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3))
    synced = sync_batch_norm(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3)))
    synced.load_state_dict(native.state_dict())
    assert isinstance(synced[1], GlobalBatchNorm)
    x = torch.randn(5, 2, 6, 6) * 3 + 1
    for _ in range(2):  # running statistics after two steps
        for model in (native, synced):
            model.zero_grad()
            (model(x) * torch.arange(16.0).view(4, 4)).square().mean().backward()
    for (name, a), b in zip(native.state_dict().items(), synced.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    for a, b in zip(native.parameters(), synced.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5)  # conv bias: 0 + noise
    native.eval(), synced.eval()
    assert torch.allclose(native(x), synced(x), atol=1e-6)


def test_sync_batch_norm_leaves_per_task_batch_norm_alone():
    model = nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False), nn.BatchNorm1d(4))
    converted = sync_batch_norm(model)
    assert type(converted[0]) is nn.BatchNorm2d and isinstance(converted[1], GlobalBatchNorm)


def test_average_gradients_keeps_missing_gradients_missing(one_rank_group):
    used, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    (used * 2).sum().backward()
    loss, metric = average_gradients([used, unused], torch.tensor(1.5), 0.25)
    assert (loss, metric) == (1.5, 0.25)
    assert torch.equal(used.grad, torch.full((3,), 2.0)) and unused.grad is None


def test_states_travel_between_ranks_unchanged(one_rank_group):
    from lifelong.pipeline.checkpoint import rng_state

    state = {"rng": rng_state(), "sampler": EpisodeSampler(TRAIN, 3, 1, 2).state_dict(), "n": 1}
    (gathered,) = all_gather_state(state)
    assert gathered["rng"]["python"] == state["rng"]["python"]
    assert torch.equal(gathered["sampler"]["position"], state["sampler"]["position"])
    assert on_main(lambda: state)["n"] == 1


def test_the_meta_batch_must_split_evenly_over_the_ranks():
    assert World(rank=1, size=4).share(32) == 8
    with pytest.raises(ConfigError, match="meta_batch 30 cannot be split evenly over 4"):
        World(rank=1, size=4).share(30)


def test_rank_seeds_differ_and_rank_zero_keeps_the_seed():
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(8)}) == 8


def test_devices_are_checked():
    assert RunConfig(device="cuda:3").device == "cuda:3"
    for bad in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(ConfigError, match="`device` must be one of auto, cpu, cuda or cuda:"):
            RunConfig(device=bad)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match="no CUDA device"):
                resolve_device(name)
        assert resolve_device("auto", local_rank=1) == torch.device("cpu")


# ------------------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_episode_batches_reach_the_gpu_through_pinned_memory_unchanged():
    batch = EpisodeSampler(TRAIN, 3, 1, 2, seed=0).sample(4)
    gpu, cpu = batch.to("cuda"), batch.to("cpu")
    torch.cuda.synchronize()
    assert gpu.support_x.is_cuda and gpu.classes is not None and gpu.classes.is_cuda
    assert torch.equal(gpu.support_x.cpu(), cpu.support_x)
    assert torch.equal(gpu.query_y.cpu(), cpu.query_y)


@pytest.mark.cuda
@cuda
def test_local_rank_picks_the_gpu():
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="LOCAL_RANK 99 needs GPU 99"):
        resolve_device("cuda", local_rank=99)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_torchrun_trains_on_the_gpu_with_nccl(tmp_path, algorithm):
    """One rank on cuda:0 (nccl): pinned copies, the all-reduce on the GPU, checkpoints."""
    extra = ["--precision", "bfloat16"] if algorithm == "protonet" else ["--strided"]
    code, output = torchrun(
        "--nproc-per-node", "1", "--master-port", get_free_port(), "-m", "lifelong", "train",
        *TINY_RUN, "--algorithm", algorithm, *extra, "--device", "cuda", "--iterations", "4",
        "--quiet", "--out", tmp_path / "run", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    state = load_checkpoint(tmp_path / "run", "last")
    assert state["step"] == 4 and len(state["ranks"]) == 1
    assert all(torch.isfinite(t).all() for t in state["algorithm"].values())
