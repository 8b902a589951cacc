"""Export a class store to one portable file, and import it into a new store.

The file is a safetensors file (no pickle: it loads with :func:`safetensors.torch.load` and
:func:`json.loads` only): tensors ``sums`` (float64 ``[K, D]``), ``counts`` (int64 ``[K]``),
``embeddings`` (float32 ``[N, D]``) and ``example_class`` (int64 ``[N]``, an index into the
classes), and string metadata ``format`` (:data:`FORMAT`), ``meta`` (the store's metadata,
JSON), ``classes`` (names and times, JSON) and ``examples`` (file name, SHA-256 and time of
each example, JSON). A copy moved to another machine is imported with the run's new folder
(the weights' fingerprint still has to match when the store is used).

Example:
    >>> export_store("shop.db", "shop.safetensors")
    >>> import_store("shop.safetensors", "copy.db", run_dir="/models/pn")
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from lifelong.files import atomic_write
from lifelong.store.db import ClassStore, StoreError, vector_blob

FORMAT = "lifelong-store-export/1"


def export_store(store_path: str | Path, out: str | Path) -> int:
    """Write the store at ``store_path`` to ``out`` (atomically); returns the number of
    examples. The store is read in one snapshot, also while a server writes to it."""
    with ClassStore.open(store_path) as store:
        store.db.execute("BEGIN")  # one read snapshot for the three queries
        meta, classes = store.meta, store.classes()
        names, counts, sums = store.statistics()
        examples = store.examples()
        store.db.execute("COMMIT")
    index = {name: i for i, name in enumerate(names)}
    dim = int(meta["embedding_dim"])
    tensors = {
        "sums": sums.reshape(len(names), dim),
        "counts": counts,
        "embeddings": torch.stack([e[3] for e in examples])
        if examples
        else torch.zeros(0, dim, dtype=torch.float32),
        "example_class": torch.tensor([index[e[0]] for e in examples], dtype=torch.long),
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
    if metadata.get("format") != FORMAT:
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
        with ClassStore.create(tmp, meta) as store, store.transaction() as db:
            ids = [
                db.execute(
                    "INSERT INTO classes (name, count, sum, created, updated) VALUES (?,?,?,?,?)",
                    (c["name"], int(n), vector_blob(s, "<f8"), c["created"], c["updated"]),
                ).lastrowid
                for c, n, s in zip(classes, tensors["counts"], tensors["sums"], strict=True)
            ]
            db.executemany(
                "INSERT INTO examples (class_id, sha256, source, added, embedding) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (ids[int(k)], e["sha256"], e["source"], e["added"], vector_blob(z, "<f4"))
                    for e, k, z in zip(
                        examples, tensors["example_class"], tensors["embeddings"], strict=True
                    )
                ],
            )
        os.replace(tmp, store_path)
    except sqlite3.IntegrityError as err:
        raise StoreError(f"{str(file)!r} holds inconsistent classes or examples ({err})") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
    return len(examples)


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
    sums = torch.zeros(len(classes), dim, dtype=torch.float64)
    sums.index_add_(0, k, tensors["embeddings"].double())
    if not torch.allclose(sums, tensors["sums"], rtol=1e-9, atol=1e-9):
        raise StoreError(f"{str(file)!r}: class sums do not match the examples' embeddings")
