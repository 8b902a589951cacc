"""The memory guard: measure what one step needs before the run depends on it.

A training step (or a batch of test episodes) is run twice on a scaled-down batch, 1 and 2
episodes, with the peak memory measured each time (the process's peak resident set on the
CPU, reset through ``/proc/self/clear_refs``; the allocator's peak on CUDA). The growth from
one episode to two is what each further episode adds, so a batch of ``n`` needs about
``peak(1) + (n - 1) * (peak(2) - peak(1))``. When that is more than the memory that is free
(``MemAvailable``, or the cgroup's limit when it is lower), the run stops at once with one line
that gives the figures and the options that lower them, instead of being ended by the kernel's
out-of-memory killer mid-run. The probes leave no trace: parameters, buffers, gradients,
random states and the sampler's state are restored.

Example:
    >>> check_fits(lambda n: step_on(n), episodes=32, device=torch.device("cpu"),
    ...            what="one training step", options="`meta_batch` (32), `ways` (60)")
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import torch

from lifelong.pipeline.checkpoint import rng_state, set_rng_state
from lifelong.pipeline.config import ConfigError

GB = 1e9
HEADROOM = 0.9
"""The share of the free memory a step may take (the rest: the allocator, other tensors)."""


def _status(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.MULTILINE)
    return None if match is None else int(match[1]) * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (``None``: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    free = None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, flags=re.MULTILINE)
        free = None if match is None else int(match[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free or 2**63, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def in_use(device: torch.device) -> int | None:
    """Bytes in use now: the resident set on the CPU, the allocator's tensors on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return _status("VmRSS") if device.type == "cpu" else None


def peak_of(run: Callable[[], None], device: torch.device, baseline: int) -> int | None:
    """Peak bytes in use while ``run()`` runs, above ``baseline`` (``None``: this platform
    cannot tell)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    if not _reset_peak():
        return None
    run()
    peak = _status("VmHWM")
    return None if peak is None else max(peak - baseline, 0)


def estimate(
    probe: Callable[[int], None], episodes: int, device: torch.device, scalable: bool = True
) -> int | None:
    """Peak bytes of ``probe(episodes)`` above what is in use now, from ``probe(1)`` and
    ``probe(2)`` (module doc), both measured from the same baseline (memory that the first
    probe freed and the process kept is reused by the second); not ``scalable`` (a batch that
    is one whole, as OML's): measured on ``probe(episodes)``."""
    baseline = in_use(device)
    if baseline is None:
        return None
    if not scalable:
        return peak_of(lambda: probe(episodes), device, baseline)
    one = peak_of(lambda: probe(1), device, baseline)
    if one is None or episodes == 1:
        return one
    two = peak_of(lambda: probe(2), device, baseline)
    if two is None:
        return None
    return one + (episodes - 1) * max(two - one, 0)


def check_fits(
    probe: Callable[[int], None],
    episodes: int,
    device: torch.device,
    what: str,
    options: str,
    scalable: bool = True,
) -> int | None:
    """Raise :class:`ConfigError` when ``probe(episodes)`` would need more than the free
    memory; return the estimate (``None``: not measurable here)."""
    need = estimate(probe, episodes, device, scalable)
    free = free_memory(device)
    if need is not None and free is not None and need > HEADROOM * free:
        raise ConfigError(
            f"{what} needs about {need / GB:.1f} GB ({episodes} episodes), "
            f"but {free / GB:.1f} GB is free on {device.type}: lower {options}"
        )
    return need


class Restored:
    """A block after which a module's parameters, buffers and gradients, the random states
    and a sampler's state are as they were before it."""

    def __init__(self, module: torch.nn.Module, sampler: object | None = None) -> None:
        self.module, self.sampler = module, sampler

    def __enter__(self) -> Restored:
        self.state = copy.deepcopy(self.module.state_dict())
        self.grads = [p.grad for p in self.module.parameters()]
        self.rng = rng_state()
        self.sampler_state = None if self.sampler is None else self.sampler.state_dict()
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.load_state_dict(self.state)
        for p, g in zip(self.module.parameters(), self.grads, strict=True):
            p.grad = g
        set_rng_state(self.rng)
        if self.sampler is not None:
            self.sampler.load_state_dict(self.sampler_state)
