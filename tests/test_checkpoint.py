"""Checkpoints: exact round trips, no unpickling, atomic commits, corruption detection."""

from __future__ import annotations

import json
import math
import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lifelong.pipeline.checkpoint import (
    CheckpointError,
    decode,
    encode,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def trained_adam() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
    return model, optimizer


def test_encode_decode_is_exact():
    state = {
        "a": torch.arange(6.0).reshape(2, 3),
        "nested": {0: torch.tensor(1.5), 7: {"x": (1, 2.5, None)}},
        "tuple": (torch.zeros(0), "s", True),
        "list": [1, float("inf"), {"__odd": 3}],
    }
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(state, tensors)
    back = decode(json.loads(json.dumps(tree)), tensors)
    assert back["nested"][7]["x"] == (1, 2.5, None) and isinstance(back["tuple"], tuple)
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["nested"][0], torch.tensor(1.5))
    assert back["list"][1] == math.inf and back["list"][2] == {"__odd": 3}


def test_unsupported_objects_are_refused():
    with pytest.raises(TypeError, match="cannot store a object at /x"):
        encode({"x": object()}, {})


def test_model_and_optimizer_round_trip(tmp_path):
    model, optimizer = trained_adam()
    save_checkpoint(
        tmp_path, "last", {"step": 3, "model": model.state_dict(), "opt": optimizer.state_dict()}
    )
    state = load_checkpoint(tmp_path, "last")
    model2 = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1.0)
    model2.load_state_dict(state["model"])
    optimizer2.load_state_dict(state["opt"])
    assert state["step"] == 3
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # parameters and batch-norm buffers
    # One more identical step from both gives identical parameters.
    x = torch.randn(8, 4)
    for m, o in ((model, optimizer), (model2, optimizer2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizer2.param_groups[0]["betas"] == (0.8, 0.9)


def test_files_load_with_json_and_safetensors_only(tmp_path, monkeypatch):
    _, optimizer = trained_adam()
    state = {"step": 5, "opt": optimizer.state_dict(), "rng": rng_state()}
    save_checkpoint(tmp_path, "last", state)
    meta = json.loads((tmp_path / "last.json").read_text())
    tensors = load_file(tmp_path / meta["tensors"])
    assert meta["tensors"] == "last.00000005.safetensors"
    assert any(key.startswith("/opt/state") for key in tensors)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_checkpoint(tmp_path, "last")["step"] == 5


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "last", {"step": 1, "w": torch.ones(3)})
    real_replace = os.replace

    def crash_on_commit(src, dst):
        if str(dst).endswith("last.json"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_commit)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, "last", {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(os, "replace", real_replace)
    state = load_checkpoint(tmp_path, "last")
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp"))
    save_checkpoint(tmp_path, "last", {"step": 3, "w": torch.zeros(3)})
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["last.00000003.safetensors"]


def test_corrupted_or_missing_checkpoints_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no 'last' checkpoint"):
        load_checkpoint(tmp_path, "last")
    save_checkpoint(tmp_path, "last", {"step": 1, "w": torch.ones(3)})
    weights = tmp_path / "last.00000001.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "last.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="is not a lifelong-checkpoint"):
        load_checkpoint(tmp_path, "last")
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path, "last")


def test_rng_states_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's legacy state
    save_checkpoint(tmp_path, "last", {"step": 0, "rng": rng_state()})
    first = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    set_rng_state(load_checkpoint(tmp_path, "last")["rng"])
    again = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    assert first == again
