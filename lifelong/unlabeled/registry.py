"""Every task construction by name: one line per name, its class imported only when used.

The names are read without importing torch (the command line and a config file are checked
at once); everything else about a construction is a fact on its class
(:class:`~lifelong.unlabeled.base.TaskConstruction`).

Example:
    >>> construction_class("umtra").options
    {'shift': 6.0, ...}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifelong.unlabeled.base import TaskConstruction

_CONSTRUCTIONS: dict[str, str] = {
    "umtra": "lifelong.unlabeled.umtra:UMTRA",
    "cactus": "lifelong.unlabeled.cactus:CACTUs",
    "pseudo": "lifelong.unlabeled.pseudo:PseudoSupervised",
}

TASK_CONSTRUCTIONS = tuple(_CONSTRUCTIONS)
"""The names of the task constructions (``--task-construction``)."""


def construction_class(name: str) -> type[TaskConstruction]:
    """The class of the task construction ``name`` (imported on first use)."""
    if name not in _CONSTRUCTIONS:
        choices = ", ".join(_CONSTRUCTIONS)
        raise ValueError(f"unknown task construction {name!r}; choose one of {choices}")
    module, attribute = _CONSTRUCTIONS[name].split(":")
    return getattr(importlib.import_module(module), attribute)
