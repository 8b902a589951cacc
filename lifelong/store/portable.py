"""Export a class store to one portable file, and import it into a new store.

The file is a safetensors file (no pickle: it loads with :func:`safetensors.torch.load` and
:func:`json.loads` only): tensors ``sums`` (float64 ``[K, D]``, the class model's feature
sums), ``counts`` (int64 ``[K]``), ``embeddings`` (float32 ``[N, D]``), ``example_class``
(int64 ``[N]``, an index into the classes) and ``images`` (uint8 ``[N, C*H*W]``, the images
kept at the model's resolution; ``has_image`` (bool ``[N]``) says which are real), and string
metadata ``format`` (:data:`FORMAT`), ``meta`` (the store's metadata, JSON), ``classes``
(names and times, JSON) and ``examples`` (file name, SHA-256 and time of each example, JSON).
The other statistics (squares, Gram matrix) are recomputed from the embeddings on import, and
the sums must agree with them. Files of format 1 (no images) are still imported. A copy moved
to another machine is imported with the run's new folder (the weights' fingerprint still has
to match when the store is used).

Example:
    >>> export_store("shop.db", "shop.safetensors")
    >>> import_store("shop.safetensors", "copy.db", run_dir="/models/pn")
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from lifelong.continual.classifiers.base import ClassStatistics
from lifelong.continual.classifiers.registry import feature_map
from lifelong.files import atomic_write
from lifelong.pipeline.checkpoint import has_checkpoint
from lifelong.pipeline.trained import TAGS
from lifelong.store.db import ClassStore, StoreError, check_embeddings, check_name, vector_blob

FORMAT = "lifelong-store-export/2"
READABLE = ("lifelong-store-export/1", FORMAT)


def export_store(store_path: str | Path, out: str | Path) -> int:
    """Write the store at ``store_path`` to ``out`` (atomically); returns the number of
    examples. The store is read in one snapshot, also while a server writes to it."""
    with ClassStore.open(store_path) as store, store.snapshot():
        meta, classes = store.meta, store.classes()
        names, stats = store.statistics()
        examples = store.examples()
    index = {name: i for i, name in enumerate(names)}
    dim = int(meta["embedding_dim"])
    pixels = math.prod(meta.get("image_shape") or [0])
    images = [e[1].image or bytes(pixels) for e in examples]
    tensors = {
        "sums": stats.sums.reshape(len(names), dim),
        "squares": stats.squares.reshape(len(names), dim),
        "gram": stats.gram,
        "counts": stats.counts,
        "embeddings": torch.stack([e[3] for e in examples])
        if examples
        else torch.zeros(0, dim, dtype=torch.float32),
        "example_class": torch.tensor([index[e[0]] for e in examples], dtype=torch.long),
        "images": torch.frombuffer(bytearray(b"".join(images)), dtype=torch.uint8).reshape(
            len(examples), pixels
        ),
        "has_image": torch.tensor([e[1].image is not None for e in examples], dtype=torch.bool),
    }
    metadata = {
        "format": FORMAT,
        "meta": json.dumps(meta),
        "classes": json.dumps([vars(c) for c in classes]),
        "examples": json.dumps(
            [{"source": f.source, "sha256": f.sha256, "added": t} for _, f, t, _ in examples]
        ),
    }
    atomic_write(Path(out), save(tensors, metadata=metadata))
    return len(examples)


def import_store(
    file: str | Path, store_path: str | Path, run_dir: str | Path | None = None
) -> int:
    """Make a new store at ``store_path`` from an exported ``file`` (``run_dir``: where the
    run is now, if it moved); returns the number of examples. An existing ``store_path`` is
    never overwritten, and a file that fails a check leaves nothing behind."""
    file, store_path = Path(file), Path(store_path)
    if store_path.exists():
        raise StoreError(f"{str(store_path)!r} already exists: import into a new file")
    data = file.read_bytes()
    try:
        tensors = load(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError) as err:
        raise StoreError(f"{str(file)!r} is not an exported class store ({err})") from None
    if metadata.get("format") not in READABLE:
        raise StoreError(
            f"{str(file)!r} is not an exported class store of this version "
            f"(format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    meta, classes, examples = (_entry(file, metadata, k) for k in ("meta", "classes", "examples"))
    try:
        _check_entries(meta, classes, examples)
        _check(file, tensors, meta, classes, examples)
    except StoreError:
        raise
    except ValueError as err:
        raise StoreError(f"{str(file)!r} cannot be imported: {err}") from None
    if run_dir is not None:
        if not any(has_checkpoint(run_dir, tag) for tag in TAGS):
            raise StoreError(f"{str(run_dir)!r} is not a lifelong run folder (no checkpoint)")
        meta["run_dir"] = str(Path(run_dir).resolve())
    tmp = store_path.with_name(f".{store_path.name}.{os.getpid()}.importing")
    try:
        images = _images(tensors, len(examples), math.prod(meta.get("image_shape") or [0]))
        with ClassStore.create(tmp, meta) as store, store.transaction() as db:
            ids = [
                db.execute(
                    "INSERT INTO classes (name, count, sum, created, updated) VALUES (?,0,?,?,?)",
                    (c["name"], b"", c["created"], c["updated"]),
                ).lastrowid
                for c in classes
            ]
            db.executemany(
                "INSERT INTO examples (class_id, sha256, source, added, embedding, image) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (ids[int(k)], e["sha256"], e["source"], e["added"], vector_blob(z, "<f4"), i)
                    for e, k, z, i in zip(
                        examples,
                        tensors["example_class"],
                        tensors["embeddings"],
                        images,
                        strict=True,
                    )
                ],
            )
            store.refit({}, statistics=_statistics(tensors))  # part of this transaction
        os.replace(tmp, store_path)
    except sqlite3.IntegrityError as err:
        raise StoreError(f"{str(file)!r} holds inconsistent classes or examples ({err})") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
    return len(examples)


def _statistics(tensors: dict) -> ClassStatistics | None:
    """The file's statistics (format 2; ``None``: recompute them, format 1)."""
    if "squares" not in tensors:
        return None
    return ClassStatistics.of(
        tensors["counts"], tensors["sums"], tensors["squares"], tensors["gram"]
    )


def _images(tensors: dict, examples: int, pixels: int) -> list[bytes | None]:
    """The kept images of a file's examples (``None`` where none was kept, or format 1), each
    of ``pixels`` bytes."""
    if "images" not in tensors:
        return [None] * examples
    images, has = tensors["images"], tensors.get("has_image")
    if images.dtype != torch.uint8 or tuple(images.shape) != (examples, pixels):
        raise StoreError(
            f"images are {tuple(images.shape)} {images.dtype}, expected "
            f"({examples}, {pixels}) torch.uint8"
        )
    if has is None or has.dtype != torch.bool or has.shape != (examples,):
        raise StoreError("has_image must say for each example whether its image is kept")
    return [bytes(row.numpy().tobytes()) if h else None for row, h in zip(images, has, strict=True)]


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__") or {})


def _entry(file: Path, metadata: dict[str, str], key: str) -> Any:
    """The JSON value of metadata entry ``key`` (meta: a mapping; classes, examples: lists)."""
    kind = dict if key == "meta" else list
    try:
        value = json.loads(metadata[key])
    except KeyError:
        raise StoreError(f"{str(file)!r} cannot be imported: it has no {key!r} entry") from None
    except (TypeError, json.JSONDecodeError) as err:
        raise StoreError(f"{str(file)!r} cannot be imported: {key} is not JSON ({err})") from None
    if not isinstance(value, kind):
        raise StoreError(
            f"{str(file)!r} cannot be imported: {key} is a {type(value).__name__}, "
            f"expected a {kind.__name__}"
        )
    return value


def _check_entries(meta: dict, classes: list, examples: list) -> None:
    """Every value an import reads, with the rules of ``lifelong learn`` (``ValueError``)."""
    dim, shape, threshold = (
        meta.get("embedding_dim"),
        meta.get("image_shape"),
        meta.get("threshold"),
    )
    if not _whole(dim) or dim < 1:
        raise ValueError(f"meta embedding_dim must be a positive integer, got {dim!r}")
    if not isinstance(shape, list) or not all(_whole(n) and n > 0 for n in shape):
        raise ValueError(f"meta image_shape must be a list of positive integers, got {shape!r}")
    for key in ("run_dir", "fingerprint"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise ValueError(f"meta {key} must be a non-empty string, got {meta.get(key)!r}")
    if meta.get("checkpoint") not in TAGS:
        raise ValueError(f"meta checkpoint must be best or last, got {meta.get('checkpoint')!r}")
    if threshold is not None and not (_number(threshold) and not math.isnan(threshold)):
        raise ValueError(f"meta threshold must be a number or null, got {threshold!r}")
    if not isinstance(meta.get("classifier", {}), dict):
        raise ValueError(f"meta classifier must be a mapping, got {meta['classifier']!r}")
    for i, c in enumerate(classes):
        _fields(f"class {i}", c, {"name": str, "created": float, "updated": float})
        if check_name(c["name"]) != c["name"]:
            raise ValueError(f"class {i}: the class name {c['name']!r} has surrounding spaces")
    for i, e in enumerate(examples):
        _fields(f"example {i}", e, {"source": str, "sha256": str, "added": float})
        if not e["sha256"]:
            raise ValueError(f"example {i}: sha256 is empty")


def _fields(what: str, value: Any, kinds: dict[str, type]) -> None:
    """``value`` is a mapping with these keys: strings, or finite numbers for ``float``."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is a {type(value).__name__}, expected a mapping")
    for key, kind in kinds.items():
        if key not in value:
            raise ValueError(f"{what} has no {key!r}")
        item = value[key]
        ok = isinstance(item, str) if kind is str else _number(item) and math.isfinite(item)
        if not ok:
            expected = "a string" if kind is str else "a finite number"
            raise ValueError(f"{what}: {key} must be {expected}, got {item!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(file: Path, tensors: dict, meta: dict, classes: list, examples: list) -> None:
    dim = int(meta["embedding_dim"])
    kinds = {"sums": True, "counts": False, "embeddings": True, "example_class": False}
    for name, floating in kinds.items():
        tensor = tensors.get(name)
        if tensor is not None and (
            tensor.is_floating_point() != floating or tensor.dtype == torch.bool
        ):
            expected = "floating-point" if floating else "integer"
            raise StoreError(f"{str(file)!r}: tensor {name} is {tensor.dtype}, expected {expected}")
    shapes = {
        "sums": (len(classes), dim),
        "counts": (len(classes),),
        "embeddings": (len(examples), dim),
        "example_class": (len(examples),),
    }
    for name, shape in shapes.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            found = tuple(tensors[name].shape) if name in tensors else "missing"
            raise StoreError(f"{str(file)!r}: tensor {name} is {found}, expected {shape}")
    check_embeddings(tensors["embeddings"])
    k = tensors["example_class"]
    if len(k) and (int(k.min()) < 0 or int(k.max()) >= len(classes)):
        raise StoreError(f"{str(file)!r}: examples refer to classes beyond the {len(classes)}")
    if not torch.equal(torch.bincount(k, minlength=len(classes)), tensors["counts"]):
        raise StoreError(f"{str(file)!r}: class counts do not match the examples")
    classifier = meta.get("classifier") or {"name": "mean"}
    try:
        features = feature_map(classifier)(tensors["embeddings"].float())
    except (ValueError, TypeError, KeyError) as err:
        raise StoreError(f"{str(file)!r}: unusable classifier {classifier!r} ({err})") from None
    expected = ClassStatistics(len(classes), dim)
    expected.add(features, k)
    for name in ("sums", "squares", "gram"):
        if name == "sums" or name in tensors:
            got = tensors.get(name)
            if got is None or got.shape != getattr(expected, name).shape:
                raise StoreError(f"{str(file)!r}: tensor {name} is missing or of the wrong shape")
            if not torch.allclose(got.double(), getattr(expected, name), rtol=1e-9, atol=1e-9):
                raise StoreError(f"{str(file)!r}: tensor {name} does not match the embeddings")
