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

from lifelong.store.calibration import Calibration, calibrate
from lifelong.store.db import (
    Added,
    ClassStore,
    ClassSummary,
    EmptyStore,
    ExampleFile,
    StoreError,
    UnknownClass,
)
from lifelong.store.portable import export_store, import_store
from lifelong.store.recognizer import (
    Candidate,
    ImageFile,
    ImageTooLarge,
    Recognition,
    Recognizer,
    open_store,
    recognizer_for,
    weights_fingerprint,
)

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
