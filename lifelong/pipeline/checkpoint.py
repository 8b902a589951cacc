"""Checkpoints that load without unpickling anything.

A checkpoint named ``tag`` (``last`` or ``best``) in a run folder is two files:

* ``{tag}.{step:08d}.safetensors``: every tensor (model parameters and buffers, optimiser
  moments, RNG states of torch and numpy, the episode samplers' generator states);
* ``{tag}.json``: everything else (the config, the step, the scheduler state, Python's RNG
  state, the best validation metric...), where each tensor is a ``{"__tensor__": key}``
  reference into the safetensors file, together with that file's name and SHA-256.

Both are written atomically (temporary file, fsync, ``os.replace``), the tensors first: the JSON
file is the commit point, so a run killed at any moment leaves the previous checkpoint intact,
and a damaged tensor file is detected by its hash. Nothing is ever unpickled: the files load
with :func:`safetensors.torch.load` and :func:`json.loads` only.

Example:
    >>> save_checkpoint("runs/a", "last", {"model": model.state_dict(), "step": 10})
    >>> state = load_checkpoint("runs/a", "last")     # the same nested dict back
    >>> model.load_state_dict(state["model"])
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from lifelong.files import atomic_write

FORMAT = "lifelong-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted or of another format."""


def error_line(err: BaseException) -> str:
    """The first informative line of ``err``'s message, for a one-line error: torch's
    ``load_state_dict`` gives its header ("Error(s) in loading state_dict for X:") a line of
    its own, before the keys and shapes that do not fit."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else ""


def all_finite(values: Iterable[Any]) -> bool:
    """Whether every floating-point tensor among ``values`` is free of NaN and infinity (a
    restored state that training or use cannot start from)."""
    return all(
        bool(v.isfinite().all()) for v in values if torch.is_tensor(v) and v.is_floating_point()
    )


def encode(obj: Any, tensors: dict[str, Tensor], path: str = "") -> Any:
    """``obj`` (nested dicts, lists, tuples, numbers, strings, tensors) as a JSON-able value;
    its tensors are moved into ``tensors`` under their path and replaced by references.
    Dicts with non-string keys (optimiser states) and tuples are tagged so that
    :func:`decode` restores them exactly."""
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {
            "__items__": [[k, encode(v, tensors, f"{path}/{k}")] for k, v in obj.items()],
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {path or '/'} in a checkpoint")


def decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(decode(v, tensors) for v in obj["__tuple__"])
        return {k: decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """The global random states of Python, numpy and torch (CPU and CUDA)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is in use)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(run_dir: str | Path, tag: str, state: dict[str, Any]) -> Path:
    """Write ``state`` (a nested dict with a ``"step"`` entry) as checkpoint ``tag`` of
    ``run_dir``, atomically; older tensor files of the same tag are removed afterwards.
    Returns the path of the JSON file."""
    run_dir = Path(run_dir)
    tensors: dict[str, Tensor] = {}
    tree = encode(state, tensors)
    data = save_tensors(tensors) if tensors else save_tensors({"__empty__": torch.zeros(0)})
    weights = f"{tag}.{int(state.get('step', 0)):08d}.safetensors"
    atomic_write(run_dir / weights, data)
    meta = {
        "format": FORMAT,
        "tensors": weights,
        "sha256": hashlib.sha256(data).hexdigest(),
        "state": tree,
    }
    index = run_dir / f"{tag}.json"
    atomic_write(index, json.dumps(meta, indent=1).encode())
    for stale in run_dir.glob(f"{tag}.*.safetensors"):
        if stale.name != weights:
            stale.unlink(missing_ok=True)
    return index


def has_checkpoint(run_dir: str | Path, tag: str = "last") -> bool:
    return (Path(run_dir) / f"{tag}.json").is_file()


def load_checkpoint(run_dir: str | Path, tag: str = "last") -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint`; tensors are on the CPU.

    Raises:
        CheckpointError: no such checkpoint, or its files are incomplete or corrupted.
    """
    run_dir = Path(run_dir)
    index = run_dir / f"{tag}.json"
    if not index.is_file():
        raise CheckpointError(f"{str(run_dir)!r} has no {tag!r} checkpoint ({index.name} missing)")
    try:
        meta = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {str(index)!r} is unreadable: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(index)!r} is not a {FORMAT} checkpoint")
    missing = [k for k in ("tensors", "sha256") if not isinstance(meta.get(k), str)]
    if missing or "state" not in meta:
        raise CheckpointError(
            f"checkpoint {str(index)!r} is incomplete (no {', '.join(missing or ['state'])})"
        )
    weights = run_dir / Path(meta["tensors"]).name
    try:
        data = weights.read_bytes()
    except OSError as err:
        raise CheckpointError(f"checkpoint tensors {str(weights)!r} missing: {err}") from err
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"checkpoint tensors {str(weights)!r} are corrupted (hash mismatch)")
    try:
        return decode(meta["state"], load_tensors(data))
    except (SafetensorError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {str(index)!r} does not match its tensors {weights.name!r} "
            f"({type(err).__name__}: {err})"
        ) from None
