"""Loading pickled numpy arrays without running arbitrary code.

Some datasets are distributed only as pickles (the CIFAR-100 python archive, the
``mini-imagenet-cache-*.pkl`` files). A plain ``pickle.load`` executes whatever callables the file
names, so a tampered file could run code. :func:`safe_load` uses an ``Unpickler`` whose
``find_class`` allows only what builtin containers (dict, list, str, bytes, numbers: these need no
class lookup) and numpy arrays, dtypes and scalars need; anything else raises
:class:`UnsafePickleError` naming the file and the refused global.

Example:
    >>> batch = safe_load("cifar-100-python/train", encoding="latin1")  # doctest: +SKIP
    >>> batch["data"].shape
    (50000, 3072)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: (module, name) pairs a pickle may reference. numpy 1.x pickles say ``numpy.core``, numpy 2.x
#: pickles ``numpy._core``; ``_codecs.encode`` is how protocol 2 stores ``bytes``.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that references a global outside :data:`ALLOWED_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
    """An ``Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: BinaryIO, source: str, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle {module}.{name}; only numpy arrays and "
                "builtin containers are allowed in dataset pickles"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def safe_load(
    source: str | Path | bytes | BinaryIO, name: str | None = None, encoding: str = "ASCII"
) -> Any:
    """Unpickle ``source`` (a path, bytes or a binary file) with :class:`RestrictedUnpickler`.

    Args:
        source: the pickle.
        name: how to call it in error messages (default: the path).
        encoding: how Python 2 ``str`` objects are decoded; ``"latin1"`` for numpy arrays
            pickled by Python 2 (e.g. CIFAR-100), as the numpy docs advise.

    Raises:
        UnsafePickleError: the pickle references a disallowed global.
        pickle.UnpicklingError: the data is not a valid pickle (the message names the source).
    """
    label = name or (str(source) if isinstance(source, str | Path) else "<pickle>")
    if isinstance(source, str | Path):
        with open(source, "rb") as f:
            return safe_load(f, label, encoding)
    file = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return RestrictedUnpickler(file, label, encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise pickle.UnpicklingError(f"{label}: not a readable pickle: {err}") from err
