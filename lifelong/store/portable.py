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

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from lifelong.continual.classifiers.base import ClassStatistics
from lifelong.continual.classifiers.registry import feature_map
from lifelong.files import atomic_write
from lifelong.store.db import ClassStore, StoreError, vector_blob

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
    meta = json.loads(metadata["meta"])
    classes, examples = json.loads(metadata["classes"]), json.loads(metadata["examples"])
    _check(file, tensors, meta, classes, examples)
    if run_dir is not None:
        meta["run_dir"] = str(Path(run_dir).resolve())
    tmp = store_path.with_name(f".{store_path.name}.{os.getpid()}.importing")
    try:
        images = _images(tensors, len(examples))
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


def _images(tensors: dict, examples: int) -> list[bytes | None]:
    """The kept images of a file's examples (``None`` where none was kept, or format 1)."""
    if "images" not in tensors:
        return [None] * examples
    images, has = tensors["images"], tensors.get("has_image")
    if images.dtype != torch.uint8 or images.dim() != 2 or images.shape[0] != examples:
        raise StoreError(
            f"images are {tuple(images.shape)} {images.dtype}, expected {examples} rows"
        )
    if has is None or has.shape != (examples,):
        raise StoreError("has_image must say for each example whether its image is kept")
    return [bytes(row.numpy().tobytes()) if h else None for row, h in zip(images, has, strict=True)]


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__") or {})


def _check(file: Path, tensors: dict, meta: dict, classes: list, examples: list) -> None:
    dim = int(meta.get("embedding_dim", -1))
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
