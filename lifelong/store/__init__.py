"""A lifelong learner in use: a persistent memory of classes learned from a few examples.

A **class store** (:mod:`~lifelong.store.db`, one SQLite file) belongs to one trained run and
keeps, for every class it was taught, the running sum and count of its examples' embeddings:
the class prototype of Prototypical Networks (Snell et al. 2017) is their mean, so a class is
learned or extended by adding a few images, nothing is retrained, and nothing learned before
changes. A :class:`~lifelong.store.recognizer.Recognizer` (the run's embedding, loaded once)
learns and recognises, with an "unknown" answer beyond a distance threshold calibrated on the
run's validation classes (:mod:`~lifelong.store.calibration`). The same store is used from
the command line (:mod:`~lifelong.store.cli`), over HTTP with a web page
(:mod:`~lifelong.store.server`), and moves between machines as one safetensors file
(:mod:`~lifelong.store.portable`).

Example:
    >>> from lifelong.store import ImageFile, Recognizer, open_store
    >>> recognizer = Recognizer.load("runs/pn")
    >>> with open_store("shop.db", recognizer) as store:
    ...     recognizer.learn(store, "mug", [ImageFile.read(f"mug{i}.jpg") for i in range(5)])
    ...     [r.label for r in recognizer.recognize(store, [ImageFile.read("photo.jpg")])]
    ['mug']
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "calibration": ("Calibration", "calibrate"),
    "db": ("Added", "ClassStore", "ClassSummary", "EmptyStore", "ExampleFile", "StoreError",
           "UnknownClass"),
    "portable": ("export_store", "import_store"),
    "recognizer": ("Candidate", "ImageFile", "ImageTooLarge", "Recognition", "Recognizer",
                   "open_store", "recognizer_for", "weights_fingerprint"),
}  # fmt: skip
"""Where each public name lives; imported on first use, so that the command line's help
does not wait for torch."""


def __getattr__(name: str) -> Any:
    for module, names in _HOMES.items():
        if name in names:
            return getattr(importlib.import_module(f"lifelong.store.{module}"), name)
    raise AttributeError(f"module 'lifelong.store' has no attribute {name!r}")


__all__ = [
    "Added",
    "Calibration",
    "Candidate",
    "ClassStore",
    "ClassSummary",
    "EmptyStore",
    "ExampleFile",
    "ImageFile",
    "ImageTooLarge",
    "Recognition",
    "Recognizer",
    "StoreError",
    "UnknownClass",
    "calibrate",
    "export_store",
    "import_store",
    "open_store",
    "recognizer_for",
    "weights_fingerprint",
]
