"""The device a run computes on."""

from __future__ import annotations

import torch

from lifelong.pipeline.config import ConfigError, check_device


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device of ``name``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``
    or ``cuda:INDEX``; asking for a GPU that is not there is an error. ``local_rank`` (the
    process's ``LOCAL_RANK`` under ``torchrun``) turns ``auto`` and ``cuda`` into
    ``cuda:LOCAL_RANK``, one GPU per process.

    Example:
        >>> resolve_device("auto")                 # device(type='cpu') on a machine without CUDA
        >>> resolve_device("cuda", local_rank=3)   # device(type='cuda', index=3)
    """
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for, but this PyTorch has no CUDA device")
    index = device.index if device.index is not None else local_rank
    if index is None:
        return device
    count = torch.cuda.device_count()
    if index >= count:
        source = f"LOCAL_RANK {index}" if device.index is None else f"device {name}"
        raise ConfigError(
            f"{source} needs GPU {index}, but this machine has {count} GPUs (cuda:0 to "
            f"cuda:{count - 1})"
        )
    return torch.device("cuda", index)
