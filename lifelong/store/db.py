"""The class store: one SQLite file that remembers every class a learner was taught.

A store belongs to one trained run (its folder and a fingerprint of its weights, so that
embeddings of another model are never mixed in) and holds, for each class, the sufficient
statistics of its prototype (Snell et al. 2017, eq. 1: the class mean of the embeddings):
the number of examples ``n_k`` and the float64 sum ``s_k`` of their embeddings, so that
``c_k = s_k / n_k`` and adding examples is ``s_k += sum f(x)``, ``n_k += n``: nothing is
recomputed from earlier examples. Each example is kept too (its embedding, the SHA-256 of the
file it came from, the file's name and when it was added), for provenance and export.

Schema ``user_version`` 1, ``application_id`` :data:`APPLICATION_ID` (so a file that is not
ours, or is from a newer version, is refused with one line), tables ``meta(key, value JSON)``,
``classes(id, name UNIQUE, count, sum BLOB float64, created, updated)`` and ``examples(id,
class_id, sha256, source, added, embedding BLOB float32, UNIQUE(class_id, sha256))``.

Durability and concurrency: WAL journal, ``synchronous=FULL`` (every commit is fsync'ed before
it returns, so whatever was acknowledged survives ``kill -9`` and power loss), and every
write is one ``BEGIN IMMEDIATE`` transaction (writers queue on the file lock, up to
``timeout`` seconds), so two processes adding to the same class both count and a write killed
half-way leaves nothing. The same file sent twice to a class is counted once: it is reported
as a duplicate and skipped (a different file of the same class always counts).

Example:
    >>> store = ClassStore.create("shop.db", meta={"run_dir": "runs/pn", ...})
    >>> store.add("mug", embeddings, [ExampleFile("mug1.jpg", sha256_1), ...])
    Added(name='mug', added=['mug1.jpg', ...], duplicates=[], count=5)
    >>> names, counts, sums = store.statistics()      # prototypes: sums / counts[:, None]
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4C4C5354  # "LLST"
MAX_NAME = 200
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    sum BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE examples (
    id INTEGER PRIMARY KEY,
    class_id INTEGER NOT NULL REFERENCES classes(id),
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    added REAL NOT NULL,
    embedding BLOB NOT NULL,
    UNIQUE (class_id, sha256)
);
"""


class StoreError(ValueError):
    """A store that cannot be used: missing, not ours, from a newer version, of another run."""


class UnknownClass(StoreError):
    """A class name that the store does not hold."""


class EmptyStore(StoreError):
    """A store asked to recognise images before it was taught any class."""


@dataclass(frozen=True)
class ExampleFile:
    """Where an example came from: the file's name and the SHA-256 of its content."""

    source: str
    sha256: str


@dataclass(frozen=True)
class Added:
    """What :meth:`ClassStore.add` did: the files learned, the duplicates skipped, and the
    class's number of examples afterwards."""

    name: str
    added: list[str]
    duplicates: list[str]
    count: int


@dataclass(frozen=True)
class ClassSummary:
    """One class of a store: its name, number of examples, and when it was created and last
    extended (Unix time)."""

    name: str
    examples: int
    created: float
    updated: float


def check_name(name: str) -> str:
    """A class name without surrounding spaces; empty, over-long or control-character names
    are refused."""
    stripped = name.strip()
    if not stripped:
        raise ValueError("the class name is empty")
    if len(stripped) > MAX_NAME:
        raise ValueError(f"the class name is {len(stripped)} characters long (at most {MAX_NAME})")
    if any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        raise ValueError(f"the class name {stripped!r} contains control characters")
    return stripped


class ClassStore:
    """An open class store (one SQLite connection; use one store object per thread).

    Open an existing store with :meth:`open`, make one with :meth:`create`; both check that
    the file is a store of this schema version. Use as a context manager to close it.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path, self.db = path, connection

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, timeout: float = 30.0) -> ClassStore:
        """Open the store at ``path``; :class:`StoreError` if there is none or it is not one
        this version can read. Nothing is written to the file."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(
                f"no store at {str(path)!r}: make one with `lifelong learn RUN_DIR --store "
                f"{path} --class NAME IMAGE...`"
            )
        store = cls(path, _connect(path, timeout))
        try:
            if store._version() == (0, 0):
                raise StoreError(f"{str(path)!r} is an empty file, not a lifelong class store")
            store._check_version()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any], timeout: float = 30.0) -> ClassStore:
        """Open the store at ``path``, first making it (schema and ``meta``) if the file does
        not exist or is empty. An existing store is returned as it is: the caller checks that
        its meta fits (e.g. :meth:`Recognizer.check_store`)."""
        path = Path(path)
        if path.exists() and not path.is_file():
            raise StoreError(f"{str(path)!r} is not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(path, _connect(path, timeout))
        try:
            store._initialise(meta)
        except BaseException:
            store.close()
            raise
        return store

    def _initialise(self, meta: dict[str, Any]) -> None:
        if self._version() != (0, 0):
            self._check_version()
            return
        if self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{str(self.path)!r} is an SQLite database, but not a class store")
        self.db.execute("PRAGMA journal_mode=WAL")  # (kept by the file)
        with self.transaction():
            if self._version() != (0, 0):  # another process made it meanwhile
                self._check_version()
                return
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in {"created": time.time(), **meta}.items()],
            )
            self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _version(self) -> tuple[int, int]:
        try:
            app = self.db.execute("PRAGMA application_id").fetchone()[0]
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise _not_a_store(self.path, err) from None
        return app, version

    def _check_version(self) -> None:
        app, version = self._version()
        if app != APPLICATION_ID:
            raise StoreError(f"{str(self.path)!r} is not a lifelong class store")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{str(self.path)!r} was written by a newer version of lifelong (store schema "
                f"{version}; this version reads schema {SCHEMA_VERSION}): upgrade lifelong"
            )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ClassStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock is taken at once, so a
        read-modify-write of a class cannot interleave with another writer's)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ reading
    @property
    def meta(self) -> dict[str, Any]:
        """The store's metadata: the run it belongs to, the distance, the calibration..."""
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def classes(self) -> list[ClassSummary]:
        """The classes, in the order they were first learned."""
        rows = self.db.execute("SELECT name, count, created, updated FROM classes ORDER BY id")
        return [ClassSummary(*row) for row in rows]

    def statistics(self) -> tuple[list[str], Tensor, Tensor]:
        """Names, example counts ``int64 [K]`` and embedding sums ``float64 [K, D]`` of the
        classes (one consistent snapshot)."""
        rows = self.db.execute("SELECT name, count, sum FROM classes ORDER BY id").fetchall()
        dim = int(self.meta["embedding_dim"])
        sums = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f8").reshape(len(rows), dim)
        counts = torch.tensor([r[1] for r in rows], dtype=torch.long)
        return [r[0] for r in rows], counts, torch.from_numpy(sums.copy())

    def examples(self) -> list[tuple[str, ExampleFile, float, Tensor]]:
        """Every example: its class, file, time added and embedding ``float32 [D]``."""
        rows = self.db.execute(
            "SELECT c.name, e.source, e.sha256, e.added, e.embedding FROM examples e "
            "JOIN classes c ON c.id = e.class_id ORDER BY e.id"
        )
        return [
            (name, ExampleFile(source, sha), added, _tensor(blob, "<f4"))
            for name, source, sha, added, blob in rows
        ]

    # ------------------------------------------------------------------ writing
    def add(self, name: str, embeddings: Tensor, files: Sequence[ExampleFile]) -> Added:
        """Add examples (embeddings ``[n, D]`` of the ``files``) to class ``name``, making the
        class if needed, in one transaction. Files already learned by this class (same
        SHA-256, also twice in one call) are skipped and listed as duplicates."""
        name = check_name(name)
        dim = int(self.meta["embedding_dim"])
        if embeddings.dim() != 2 or embeddings.shape != (len(files), dim):
            raise ValueError(
                f"expected embeddings [{len(files)}, {dim}] for {len(files)} files, "
                f"got {tuple(embeddings.shape)}"
            )
        z = embeddings.detach().cpu().float()
        now = time.time()
        with self.transaction() as db:
            query = "SELECT id, count, sum FROM classes WHERE name = ?"
            row = db.execute(query, (name,)).fetchone()
            if row is None:
                zero = vector_blob(torch.zeros(dim, dtype=torch.float64), "<f8")
                cursor = db.execute(
                    "INSERT INTO classes (name, count, sum, created, updated) VALUES (?,0,?,?,?)",
                    (name, zero, now, now),
                )
                row = (cursor.lastrowid, 0, zero)
            class_id, count, total = row[0], row[1], _tensor(row[2], "<f8")
            query = "SELECT 1 FROM examples WHERE class_id = ? AND sha256 = ?"
            added, duplicates, seen = [], [], set()
            for file, vector in zip(files, z, strict=True):
                if file.sha256 in seen or db.execute(query, (class_id, file.sha256)).fetchone():
                    duplicates.append(file.source)
                    continue
                seen.add(file.sha256)
                db.execute(
                    "INSERT INTO examples (class_id, sha256, source, added, embedding) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (class_id, file.sha256, file.source, now, vector_blob(vector, "<f4")),
                )
                total += vector.double()
                added.append(file.source)
            count += len(added)
            db.execute(
                "UPDATE classes SET count = ?, sum = ?, updated = ? WHERE id = ?",
                (count, vector_blob(total, "<f8"), now, class_id),
            )
        return Added(name, added, duplicates, count)

    def forget(self, name: str) -> int:
        """Delete class ``name`` and its examples; returns how many examples it had.
        :class:`UnknownClass` if there is no such class (nothing is written)."""
        with self.transaction() as db:
            row = db.execute("SELECT id, count FROM classes WHERE name = ?", (name,)).fetchone()
            if row is None:
                names = [n for (n,) in db.execute("SELECT name FROM classes ORDER BY id")]
                known = ", ".join(repr(n) for n in names[:20]) or "none"
                raise UnknownClass(f"the store has no class {name!r} (its classes: {known})")
            db.execute("DELETE FROM examples WHERE class_id = ?", (row[0],))
            db.execute("DELETE FROM classes WHERE id = ?", (row[0],))
        return int(row[1])

    def integrity(self) -> str:
        """SQLite's ``integrity_check``: ``"ok"`` for a sound file."""
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; ClassStore.transaction opens them.
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as err:
        db.close()
        raise _not_a_store(path, err) from None
    return db


def _not_a_store(path: Path, err: sqlite3.DatabaseError) -> StoreError:
    return StoreError(f"{str(path)!r} is not a lifelong class store ({err})")


def vector_blob(t: Tensor, dtype: str) -> bytes:
    """A vector's bytes as ``dtype`` (``"<f4"``, ``"<f8"``: little-endian, the same on any
    machine)."""
    return t.detach().cpu().numpy().astype(dtype).tobytes()


def _tensor(blob: bytes, dtype: str) -> Tensor:
    return torch.from_numpy(np.frombuffer(blob, dtype=dtype).copy())
