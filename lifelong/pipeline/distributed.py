"""Meta-training on many processes: ``torch.distributed`` under ``torchrun``.

Every process (rank) holds the whole model and draws its own episodes; the tasks of a
meta-batch of ``B`` episodes are split evenly, ``B / world_size`` per rank, and after each
rank's backward pass the meta-gradients are averaged with one all-reduce (Finn et al. 2017's
meta-gradient is a mean over tasks, so the average over ranks of the means over equal shares
is the mean over the whole meta-batch). Batch norm with running statistics (ProtoNet,
fine-tuning: one forward over all episodes of the batch) normalises with the statistics of the
whole meta-batch (:class:`GlobalBatchNorm`, an all-reduce of the per-channel sums), so a
distributed run gives the parameters of one process that sees the same tasks; batch norm with
per-task statistics (the MAML family) needs nothing. The backend is ``gloo`` for CPU runs and
``nccl`` for CUDA runs (one GPU per rank: ``cuda:LOCAL_RANK``).

Collective operations that fail (a rank died, or did not answer within
``LIFELONG_DIST_TIMEOUT`` seconds, default 1800) raise :class:`RankFailure`, one line naming
the rank and the operation; ``torchrun`` itself ends the whole job when one of its processes
exits. Nothing is pickled: states travel as JSON and safetensors bytes, the formats of
:mod:`lifelong.pipeline.checkpoint`.

Example (what :func:`lifelong.pipeline.train.train` does)::

    with process_group(torch.device("cpu")) as world:   # under torchrun: RANK, WORLD_SIZE...
        per_rank = world.share(meta_batch)              # episodes this rank draws
        ...
        loss.backward()
        loss, metric = average_gradients(model.parameters(), loss, metric)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from lifelong.pipeline.checkpoint import decode, encode
from lifelong.pipeline.config import ConfigError

TIMEOUT_ENV = "LIFELONG_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0
"""Seconds a rank waits for the others in one collective operation before giving up: longer
than the longest step that rank 0 takes alone (validation, writing a checkpoint)."""

T = TypeVar("T")


class RankFailure(ConnectionError):
    """A collective operation failed: another rank died or did not answer in time."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` on its
    machine; ``distributed`` when a process group is initialised (even with one rank)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        """The world of the initialised process group, or a single process."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return cls(rank, dist.get_world_size(), local, distributed=True)

    def share(self, total: int, what: str = "meta_batch") -> int:
        """This rank's part of ``total`` episodes: ``total / size``, which must be whole."""
        if total % self.size:
            raise ConfigError(
                f"{what} {total} cannot be split evenly over {self.size} processes: use a "
                f"multiple of {self.size} (it is the global meta-batch, {what} / "
                f"{self.size} episodes per process)"
            )
        return total // self.size


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another ``env://`` launcher)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def local_rank() -> int | None:
    """``LOCAL_RANK`` of a launched process (its GPU index), else ``None``."""
    return int(os.environ["LOCAL_RANK"]) if launched() and "LOCAL_RANK" in os.environ else None


def timeout() -> timedelta:
    """The collective timeout: ``LIFELONG_DIST_TIMEOUT`` seconds, default 1800."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
    return timedelta(seconds=seconds)


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the job's process group for the block when launched by ``torchrun`` (``gloo`` for
    the CPU, ``nccl`` for CUDA), and leave it afterwards; a group that is already initialised
    (by the caller) is used as it is. Outside ``torchrun``: a single-process :class:`World`.
    A block that ends normally waits for every rank before the group is destroyed."""
    if not launched() or dist.is_initialized():
        yield World.current()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timeout())
    try:
        yield World.current()
        with collective("waiting for the other processes to finish"):
            dist.barrier()  # a rank that leaves while a peer still talks to it may abort in gloo
    finally:
        dist.destroy_process_group()


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn the failure of a collective operation into :class:`RankFailure`."""
    try:
        yield
    except RuntimeError as err:  # gloo and nccl errors, timeouts (DistBackendError...)
        world = World.current()
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RankFailure(
            f"rank {world.rank} of {world.size}: {what} failed: another process of the job "
            f"died, or did not answer within the timeout ({TIMEOUT_ENV}) ({first})"
        ) from err


def _device() -> torch.device:
    """Where the tensors of a collective must live: the current GPU for nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------ gradients
def average_gradients(parameters: Iterable[nn.Parameter], *values: float | Tensor) -> list[float]:
    """Average the ``.grad`` of ``parameters`` and the scalars ``values`` (loss, metric) over
    all ranks, in ONE all-reduce; returns the averaged values. A gradient that is ``None`` on
    every rank stays ``None``; one that is ``None`` on some ranks counts as zero there. Without
    a process group nothing changes.

    Example:
        >>> loss.backward()
        >>> loss_value, accuracy = average_gradients(model.parameters(), loss, accuracy)
    """
    floats = [float(v.detach()) if isinstance(v, Tensor) else float(v) for v in values]
    world = World.current()
    if not world.distributed:
        return floats
    params = [p for p in parameters if p.requires_grad]
    device = _device()
    slots = [
        torch.zeros(p.numel(), device=device) if p.grad is None else p.grad.detach().reshape(-1)
        for p in params
    ]
    present = [float(p.grad is not None) for p in params]
    flat = torch.cat([s.to(device, torch.float32) for s in slots])
    flat = torch.cat([flat, torch.tensor(present + floats, device=device)])
    with collective("averaging the gradients"):
        dist.all_reduce(flat)
    flat /= world.size
    sums = flat[-len(present) - len(floats) :].tolist()
    offset = 0
    for p, anywhere in zip(params, sums, strict=False):
        mean = flat[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
        if anywhere > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(mean)
    return sums[len(present) :]


# ------------------------------------------------------------------------------ states
def pack(state: Any) -> Tensor:
    """``state`` (nested dicts, lists, numbers, strings, tensors) as ``uint8`` bytes: the
    length of a JSON tree, the tree, and the safetensors file of its tensors."""
    tensors: dict[str, Tensor] = {}
    tree = json.dumps(encode(state, tensors)).encode()
    data = len(tree).to_bytes(8, "little") + tree + (save_tensors(tensors) if tensors else b"")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def unpack(data: Tensor) -> Any:
    """The inverse of :func:`pack` (JSON and safetensors only: nothing is unpickled)."""
    raw = data.cpu().numpy().tobytes()
    size = int.from_bytes(raw[:8], "little")
    blob = raw[8 + size :]
    return decode(json.loads(raw[8 : 8 + size]), load_tensors(blob) if blob else {})


def all_gather_state(state: Any) -> list[Any]:
    """Every rank's ``state``, in rank order, on every rank (``[state]`` without a group)."""
    world = World.current()
    if not world.distributed:
        return [state]
    device = _device()
    data = pack(state).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world.size)]
    with collective("gathering the ranks' states"):
        dist.all_gather(sizes, torch.tensor([data.numel()], device=device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: data.numel()] = data
        parts = [torch.empty_like(padded) for _ in range(world.size)]
        dist.all_gather(parts, padded)
    return [unpack(part[: int(n.item())]) for part, n in zip(parts, sizes, strict=True)]


def broadcast_state(state: Any) -> Any:
    """Rank 0's ``state`` on every rank (the others pass anything, e.g. ``None``)."""
    world = World.current()
    if not world.distributed:
        return state
    device = _device()
    data = pack(state).to(device) if world.is_main else torch.empty(0, dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    with collective("receiving rank 0's state"):
        dist.broadcast(size, src=0)
        if not world.is_main:
            data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
        dist.broadcast(data, src=0)
    return state if world.is_main else unpack(data)


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone, its result (JSON-able values and tensors) given to every
    rank; an error it raises (a bad setting, a missing checkpoint) is raised on every rank,
    as a :class:`~lifelong.pipeline.config.ConfigError` with the same message, so that no rank is
    left waiting."""
    world = World.current()
    if not world.distributed:
        return fn()
    if world.is_main:
        try:
            value = fn()
        except Exception as err:
            broadcast_state({"error": str(err) or type(err).__name__})
            raise
        return broadcast_state({"value": value})["value"]
    outcome = broadcast_state(None)
    if "error" in outcome:
        raise ConfigError(outcome["error"])
    return outcome["value"]


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank: one decision for all (e.g. "out of time")."""
    world = World.current()
    if not world.distributed:
        return flag
    value = torch.tensor([float(flag)], device=_device())
    with collective("agreeing on when to stop"):
        dist.broadcast(value, src=0)
    return bool(value.item())


def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (the same start everywhere)."""
    world = World.current()
    if not world.distributed:
        return
    device = _device()
    with collective("receiving rank 0's parameters"), torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            data = tensor.detach().to(device)
            dist.broadcast(data, src=0)
            tensor.copy_(data)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s global random generators (rank 0 keeps ``seed``): dropout
    and other draws of different ranks are independent."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


# ------------------------------------------------------------------------------ batch norm
class _GlobalBatchNormFunction(torch.autograd.Function):
    """Batch norm of ``x [n, C, ...]`` with the mean and variance of every rank's ``x``
    together (Ioffe & Szegedy 2015, Algorithm 1, the mini-batch being the union of the ranks'
    inputs). Forward: each rank's per-channel mean and variance (PyTorch's fused kernel),
    all-reduced as sums of ``x`` and ``x^2`` in float64, then the fused normalisation with these
    statistics. Backward: with ``x_hat = (x - mean) * invstd`` and ``N`` inputs in all,

        dx = w * invstd * (dy - sum(dy) / N - x_hat * sum(dy * x_hat) / N)

    where the two sums (also the gradients of the bias and the weight) are all-reduced; the
    fused eval-mode backward gives ``w * invstd * dy`` and this rank's sums, and the rest is a
    per-channel affine function of ``x`` added in place."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        _, local_mean, local_invstd = torch.ops.aten.native_batch_norm(
            x, None, None, None, None, True, 0.0, eps
        )
        count = x.numel() // x.shape[1]
        mean64 = local_mean.double()
        var64 = local_invstd.double().pow(-2) - eps
        sums = torch.cat([mean64 * count, (var64 + mean64.square()) * count, mean64.new_ones(1)])
        sums[-1] = count
        with collective("batch norm statistics"):
            dist.all_reduce(sums)
        channels, total = x.shape[1], float(sums[-1])
        mean64 = sums[:channels] / total
        var64 = (sums[channels : 2 * channels] / total - mean64.square()).clamp_(min=0)
        mean, var = mean64.float(), var64.float()
        y = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, False)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps, ctx.total = eps, total
        ctx.mark_non_differentiable(mean, var)
        return y, mean, (var64 * (total / max(total - 1, 1))).float()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, _mean: Tensor, _var: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, mean, var = ctx.saved_tensors
        w = torch.ones_like(mean) if weight is None else weight.float()
        unsaved = mean.new_empty(0)  # eval mode: no saved statistics (CUDA wants them empty)
        dx, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            dy, x, w, mean, var, unsaved, unsaved, False, ctx.eps, [True, True, True]
        )  # dx = w * invstd * dy; grad_weight = sum(dy * x_hat); grad_bias = sum(dy)
        sums = torch.cat([grad_bias, grad_weight]).double()
        with collective("batch norm gradients"):
            dist.all_reduce(sums)
        mean_dy, mean_dy_xhat = (sums / ctx.total).chunk(2)
        invstd = (var.double() + ctx.eps).rsqrt()
        slope = w.double() * invstd.square() * mean_dy_xhat  # dx -= slope * (x - mean) ...
        offset = w.double() * invstd * mean_dy - slope * mean.double()  # ... + w*invstd*mean_dy
        shape = [1, -1] + [1] * (x.dim() - 2)
        dx = dx.addcmul_(x, slope.to(dx.dtype).view(shape), value=-1)
        dx = dx.sub_(offset.to(dx.dtype).view(shape))
        if weight is None:
            return dx, None, None, None
        return dx, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training-mode statistics are those of the whole distributed batch
    (all ranks' inputs together), so that ``k`` ranks normalise like one process with all
    their inputs; in eval mode, or without a process group, ordinary batch norm. The
    parameters and buffers are those of ``nn.BatchNorm1d/2d/3d`` (same state dict).

    Example:
        >>> model = sync_batch_norm(model)   # every BatchNorm with running statistics
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input [n, C, ...], got shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and World.current().distributed):
            return super().forward(input)
        self._check_input_dim(input)
        y, mean, unbiased_var = _GlobalBatchNormFunction.apply(
            input, self.weight, self.bias, self.eps
        )
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)
        return y


def sync_batch_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every batch norm of ``module`` that keeps running statistics (the
    normalisation of one forward over many episodes: ProtoNet, fine-tuning) by a
    :class:`GlobalBatchNorm` with the same parameters and buffers; batch norm with per-task
    statistics (``track_running_stats=False``: the MAML family) is left as it is. Returns
    ``module`` (or its replacement when ``module`` itself is such a batch norm)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        if not module.track_running_stats:
            return module
        sync = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, True
        )
        sync.weight, sync.bias = module.weight, module.bias
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        replacement = sync_batch_norm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module
