"""lifelong: meta-learning (MAML family, Prototypical Networks) and lifelong learning on PyTorch.

Example:
    >>> import lifelong
    >>> learner = lifelong.load("runs/proto")                     # a trained run folder
    >>> learner.adapt(["a1.png", "b1.png"], ["a", "b"]).predict(["q.png"])[0].label
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.1"
"""The version, here alone (pyproject.toml reads it): a source tree that is not installed knows
it too, and its checkpoints are read with the meaning they were saved with
(:meth:`~lifelong.pipeline.config.RunConfig.of_checkpoint`)."""

__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    # `lifelong.load` is imported on first use, so that `import lifelong.data` stays light and
    # the algorithm modules can import from the package while it initialises.
    if name == "load":
        from lifelong.api import load

        return load
    raise AttributeError(f"module 'lifelong' has no attribute {name!r}")
