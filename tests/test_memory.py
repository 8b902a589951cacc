"""The memory guard: a step that would not fit stops the run before it starts, with one line
that gives the figure and the options that lower it; the probes leave no trace."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import lifelong.pipeline.memory as memory
from lifelong.pipeline.checkpoint import load_checkpoint
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.train import Trainer, train

TINY = dict(
    algorithm="protonet", dataset="strokes", ways=3, shots=1, queries=2, meta_batch=4,
    hidden=(8,), dataset_options={"classes": {"train": 10, "val": 4, "test": 4}, "per_class": 4},
    iterations=2, val_every=2, val_episodes=2,
)  # fmt: skip


def test_a_step_that_does_not_fit_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: 1000)  # 1 kB free
    # measured from 0, not from what this process holds (freed pages that earlier tests' runs
    # kept would serve a tiny step without any new memory)
    monkeypatch.setattr(memory, "in_use", lambda device: 0)
    with pytest.raises(ConfigError, match=r"one training step needs about .* GB \(4 episodes\)"
                       r".*free on cpu: lower `meta_batch` \(4\), `ways` \(3\), `queries` \(2\)"
                       r" or `image_size` \(28\)"):  # fmt: skip
        train(RunConfig(**TINY, out=str(tmp_path)), progress=False)
    assert not (tmp_path / "last.json").exists()


PROBE = """
import torch
from lifelong.pipeline import memory
sizes, kept = [], []
def probe(n):
    sizes.append(n)
    kept.append(torch.ones(n * 4_000_000).sum())  # 16 MB an episode, freed at once
print(sizes, memory.estimate(probe, 8, torch.device("cpu")))
"""


def test_the_estimate_grows_with_the_batch():
    # a fresh process: one that already holds freed memory (this one, after other tests'
    # runs keep their freed pages) reuses it, and its resident set does not grow
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sizes, need = out.stdout.split("] ")
    assert sizes == "[1, 2" and int(need) > 8 * 16e6 * 0.9


def test_the_probes_leave_no_trace(tmp_path, monkeypatch):
    guarded = train(RunConfig(**TINY, out=str(tmp_path / "a")), progress=False)
    monkeypatch.setattr(Trainer, "check_memory", lambda self: None)
    plain = train(RunConfig(**TINY, out=str(tmp_path / "b")), progress=False)
    a, b = (load_checkpoint(tmp_path / name, "last") for name in "ab")
    assert guarded.best_metric == plain.best_metric
    assert all(torch.equal(a["algorithm"][k], b["algorithm"][k]) for k in a["algorithm"])
