"""Every algorithm by name: one line per name, the class behind it imported only when used.

The names are read without importing torch (so a command line or a config file is checked
at once); everything else about an algorithm is a fact on its class
(:class:`~lifelong.algorithms.base.Algorithm`). A new algorithm is one module and one line
here, or, from outside the package, one call of :func:`register`.

Example:
    >>> algorithm_class("protonet").defaults
    {'meta_batch': 1}
    >>> register("toy", ToyAlgorithm)      # e.g. a plug-in or a test
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm

_ALGORITHMS: dict[str, str | type[Algorithm]] = {
    "maml": "lifelong.algorithms.maml:MAML",
    "fomaml": "lifelong.algorithms.maml:FOMAML",
    "anil": "lifelong.algorithms.maml:ANIL",
    "metasgd": "lifelong.algorithms.maml:MetaSGD",
    "reptile": "lifelong.algorithms.reptile:Reptile",
    "protonet": "lifelong.algorithms.protonet:ProtoNet",
    "finetune": "lifelong.algorithms.finetune:FineTune",
    "oml": "lifelong.algorithms.oml:OML",
    "anml": "lifelong.algorithms.anml:ANML",
}


def algorithm_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_ALGORITHMS)


def check_name(name: str) -> None:
    """``ValueError`` naming the closest registered name when ``name`` is not one."""
    if name not in _ALGORITHMS:
        close = difflib.get_close_matches(name, _ALGORITHMS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown algorithm {name!r}{hint}; choose one of {', '.join(_ALGORITHMS)}"
        )


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as ``name`` (imported on first use)."""
    check_name(name)
    entry = _ALGORITHMS[name]
    if isinstance(entry, str):
        module, attribute = entry.split(":")
        entry = getattr(importlib.import_module(module), attribute)
        _ALGORITHMS[name] = entry
    return entry


def algorithm_classes() -> dict[str, type[Algorithm]]:
    """Every registered name with its class (imports them all)."""
    return {name: algorithm_class(name) for name in _ALGORITHMS}


def register(name: str, cls: type[Algorithm]) -> None:
    """Add (or replace) the algorithm ``name``: from then on ``--algorithm name`` trains it,
    and run folders that name it load."""
    from lifelong.algorithms.base import Algorithm

    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"{name}: {cls!r} is not an Algorithm subclass")
    _ALGORITHMS[name] = cls


def unregister(name: str) -> None:
    """Remove ``name`` (e.g. a test's toy algorithm)."""
    _ALGORITHMS.pop(name, None)
