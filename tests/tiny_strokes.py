"""The tiny strokes run the end-to-end tests train (a few seconds on one thread); each test file
changes what it needs with ``tiny_strokes_run(**changes)``."""

from __future__ import annotations

from typing import Any

STROKES_DATA = {"classes": {"train": 20, "val": 8, "test": 8}, "per_class": 6}
"""Dataset options: 20/8/8 generated stroke classes of 6 images each."""


def tiny_strokes_run(**changes: Any) -> dict[str, Any]:
    """RunConfig settings of a 3-way 1-shot ProtoNet-sized run on ``STROKES_DATA``, with
    ``changes`` applied."""
    run = {
        "dataset": "strokes", "dataset_options": STROKES_DATA, "ways": 3, "shots": 1,
        "queries": 2, "meta_batch": 2, "hidden": (8,), "val_every": 2, "val_episodes": 3,
        "checkpoint_every": 2, "device": "cpu",
    }  # fmt: skip
    return {**run, **changes}
