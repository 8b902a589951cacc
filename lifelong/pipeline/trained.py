"""A trained run, rebuilt from its folder: config, data facts, algorithm and step.

Example:
    >>> trained = load_trained("runs/pn")            # the best checkpoint, in eval mode
    >>> trained.algorithm.adapt(support_x, support_y, ways=5)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.algorithms.base import Algorithm
from lifelong.pipeline.checkpoint import (
    CheckpointError,
    all_finite,
    error_line,
    has_checkpoint,
    load_checkpoint,
)
from lifelong.pipeline.config import ConfigError, RunConfig
from lifelong.pipeline.data import DataFacts
from lifelong.pipeline.factory import build_algorithm

TAGS = ("best", "last")
"""The checkpoints of a run folder."""


@dataclass
class Trained:
    """A trained run rebuilt from a checkpoint: its config, data facts, algorithm (in eval
    mode, on the CPU) and the iteration it was saved at."""

    run_dir: Path
    config: RunConfig
    facts: DataFacts
    algorithm: Algorithm
    step: int

    def check_data(self, facts: DataFacts) -> None:
        """Reject data that does not fit the trained model."""
        if facts.image_shape != self.facts.image_shape or facts.regression != self.facts.regression:
            now = "regression" if facts.regression else "x".join(map(str, facts.image_shape or ()))
            then = (
                "regression"
                if self.facts.regression
                else "x".join(map(str, self.facts.image_shape or ()))
            )
            raise ConfigError(
                f"run {str(self.run_dir)!r} was trained on {then} data, but the dataset "
                f"now gives {now}"
            )


def load_trained(
    run_dir: str | Path, tag: str = "best", overrides: dict[str, Any] | None = None
) -> Trained:
    """Rebuild the algorithm of a run folder from its ``tag`` checkpoint (``best`` falls back to
    ``last`` when the run had no validation). ``overrides`` change evaluation settings of the
    config (``test_ways``, ``eval_inner_steps``, ``data_root``...; ``None`` values are
    ignored)."""
    run_dir = Path(run_dir)
    if tag not in TAGS:
        raise CheckpointError(f"the checkpoint must be best or last, got {tag!r}")
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{str(run_dir)!r} is a file, not a run folder")
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {str(run_dir)!r} does not exist")
    if tag == "best" and not has_checkpoint(run_dir, "best"):
        tag = "last"
    if not has_checkpoint(run_dir, tag):
        raise CheckpointError(f"{str(run_dir)!r} is not a lifelong run folder (no {tag}.json)")
    state = load_checkpoint(run_dir, tag)
    try:
        config = RunConfig.of_checkpoint(state, source=f"run {str(run_dir)!r}")
        facts = DataFacts.from_dict(state["facts"])
        step = int(state["step"])
        weights = state["algorithm"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{str(run_dir)!r} holds a checkpoint this version cannot read ({err})"
        ) from err
    config = config.override(**(overrides or {}))
    algorithm = build_algorithm(config, facts)
    try:
        algorithm.load_state_dict(weights)
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(
            f"the checkpoint of {str(run_dir)!r} does not fit the model its config builds: "
            f"{error_line(err)}"
        ) from err
    if not all_finite(algorithm.state_dict().values()):
        raise CheckpointError(
            f"the {tag} checkpoint of {str(run_dir)!r} holds weights that are NaN or infinite"
        )
    return Trained(run_dir, config, facts, algorithm.eval(), step)
