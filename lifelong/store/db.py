"""The class store: one SQLite file that remembers every class a learner was taught.

A store belongs to one trained run (its folder and a fingerprint of its weights, so that
embeddings of another model are never mixed in) and to one class model of
:mod:`lifelong.continual.classifiers` (``meta["classifier"]``: mean, CL2N, streaming LDA,
Gaussians), whose **sufficient statistics** it keeps over the model's features ``phi(f(x))``:
per class the number of examples ``n_k``, the float64 sum ``s_k`` and sum of squares ``q_k``,
and over all classes the Gram matrix ``G = sum phi phi^T`` (table ``shared``). Adding examples
adds to these sums (``O(d^2)``), nothing is recomputed from earlier examples, and the model
fitted from them is the one ``lifelong stream`` and ``lifelong predict`` fit on the same images.
Each example is kept too: its embedding, the SHA-256 of the file it came from, the file's name,
when it was added, the image at the model's resolution (``uint8 [C, H, W]``, 784 bytes for
Omniglot: what lets ``lifelong migrate`` re-embed the store with a newer run) and, when asked,
the original file.

Schema ``user_version`` 2, ``application_id`` :data:`APPLICATION_ID` (so a file that is not
ours, or is from a newer version, is refused with one line), tables ``meta(key, value JSON)``,
``classes(id, name UNIQUE, count, sum BLOB float64, squares BLOB float64, created, updated)``,
``examples(id, class_id, sha256, source, added, embedding BLOB float32, image BLOB uint8,
original BLOB, UNIQUE(class_id, sha256))`` and ``shared(key, value)`` (the Gram matrix, and
the ``generation``: the number of writes that changed the classes). A store of schema
1 (sums only, no images) is migrated in place when opened, in one transaction: its squares and
Gram matrix are computed from the examples' embeddings, its class model is the nearest mean.

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
    >>> names, stats = store.statistics()      # ClassStatistics: counts, sums, squares, gram
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

from lifelong.continual.classifiers.base import ClassStatistics
from lifelong.continual.classifiers.mean import NearestMean
from lifelong.continual.classifiers.registry import feature_map

SCHEMA_VERSION = 2
APPLICATION_ID = 0x4C4C5354  # "LLST"
MAX_NAME = 200
MAX_EMBEDDING = 1e9
"""The largest magnitude of an embedding's entries: far beyond a trained model's, and small
enough that squared distances stay finite in float32 at any width."""
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    count INTEGER NOT NULL,
    sum BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    squares BLOB
);
CREATE TABLE examples (
    id INTEGER PRIMARY KEY,
    class_id INTEGER NOT NULL REFERENCES classes(id),
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    added REAL NOT NULL,
    embedding BLOB NOT NULL,
    image BLOB,
    original BLOB,
    UNIQUE (class_id, sha256)
);
CREATE TABLE shared (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
MIGRATE_FROM_1 = """
ALTER TABLE classes ADD COLUMN squares BLOB;
ALTER TABLE examples ADD COLUMN image BLOB;
ALTER TABLE examples ADD COLUMN original BLOB;
CREATE TABLE shared (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
"""Schema 1 -> 2: the statistics of every class model, images and originals (the columns
added last, so that both schemas' rows read alike)."""


class StoreError(ValueError):
    """A store that cannot be used: missing, not ours, from a newer version, of another run."""


class UnknownClass(StoreError):
    """A class name that the store does not hold."""


class EmptyStore(StoreError):
    """A store asked to recognise images before it was taught any class."""


@dataclass(frozen=True)
class ExampleFile:
    """Where an example came from: the file's name and the SHA-256 of its content; the image
    at the model's resolution (``uint8`` bytes) and the original file, when kept."""

    source: str
    sha256: str
    image: bytes | None = None
    original: bytes | None = None


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


def check_embeddings(embeddings: Tensor) -> None:
    """Refuse embeddings with NaN, infinite or huge (beyond :data:`MAX_EMBEDDING`) entries:
    they would make every distance NaN."""
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be floating-point numbers, got {embeddings.dtype}")
    if embeddings.numel() and not bool(embeddings.abs().le(MAX_EMBEDDING).all()):
        bad = embeddings[~embeddings.abs().le(MAX_EMBEDDING)][0].item()
        raise ValueError(
            f"embeddings must be finite numbers of magnitude at most {MAX_EMBEDDING:g}, got {bad}"
        )


class ClassStore:
    """An open class store (one SQLite connection; use one store object per thread).

    Open an existing store with :meth:`open`, make one with :meth:`create`; both check that
    the file is a store of this schema version. Use as a context manager to close it.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection, timeout: float = 30.0) -> None:
        self.path, self.db, self.timeout = path, connection, timeout

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
        store = cls(path, _connect(path, timeout), timeout)
        try:
            if store._version() == (0, 0):
                raise StoreError(f"{str(path)!r} is {store._what()}, not a lifelong class store")
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
        store = cls(path, _connect(path, timeout), timeout)
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

    def _what(self) -> str:
        """What a file without our application id is, in words."""
        if self.path.stat().st_size == 0:
            return "an empty file"
        if self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            return "the SQLite database of another application"
        return "an empty SQLite database"

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
        if version == 1:
            self._migrate_from_1()

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2 in place, in one transaction (module doc); refused with one line
        (and nothing changed) when the file cannot be written."""
        try:
            with self.transaction() as db:
                if self._version()[1] != 1:  # another process migrated it meanwhile
                    return
                for statement in MIGRATE_FROM_1.split(";"):
                    if statement.strip():
                        db.execute(statement)
                meta = self.meta
                rule = {k: meta[k] for k in ("distance", "p", "temperature") if k in meta}
                classifier = NearestMean(_identity, 1, **rule).config()
                self._set_meta(db, {"classifier": classifier})
                self._recompute(db)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.OperationalError, StoreError) as err:
            raise StoreError(
                f"{str(self.path)!r} is a class store of schema 1 that could not be migrated "
                f"to schema {SCHEMA_VERSION} ({err}); it was left unchanged"
            ) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ClassStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock is taken at once, so a
        read-modify-write of a class cannot interleave with another writer's). Inside an
        open transaction it is part of that one (which commits or rolls back all of it)."""
        if self.db.in_transaction:
            yield self.db
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise self._unwritable(err) from None
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as err:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if isinstance(err, sqlite3.OperationalError):
                raise self._unwritable(err) from None
            raise

    def _unwritable(self, err: sqlite3.OperationalError) -> StoreError:
        """A write that SQLite refused (the file locked too long, read-only, disk full), as
        one line."""
        if "locked" in str(err) or "busy" in str(err):
            return StoreError(
                f"{str(self.path)!r} is busy: another process has kept it locked for writing for "
                f"more than {self.timeout:g} s; nothing was written, try again"
            )
        return StoreError(f"{str(self.path)!r} cannot be written ({err}); nothing was written")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: the reads inside see one state of the file (a write committed
        meanwhile by another process is not half seen); nested in an open one, nothing."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
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

    @property
    def classifier(self) -> dict[str, Any]:
        """The class model whose statistics the store keeps (a ``ClassModel.config()``)."""
        return self.meta.get("classifier") or {"name": "mean"}

    def features(self, embeddings: Tensor) -> Tensor:
        """The class model's features ``phi`` of embeddings (float64), what the statistics
        are sums of."""
        return feature_map(self.classifier)(embeddings.detach().cpu().float())

    def statistics(self) -> tuple[list[str], ClassStatistics]:
        """Names and sufficient statistics (counts, sums, squares, Gram matrix) of the classes,
        in the order they were first learned (one consistent snapshot)."""
        with self.snapshot():
            dim = int(self.meta["embedding_dim"])
            rows = self.db.execute(
                "SELECT name, count, sum, squares FROM classes ORDER BY id"
            ).fetchall()
            gram = self._gram(self.db, dim)
        sums = _matrix([r[2] for r in rows], dim)
        squares = _matrix([r[3] for r in rows], dim)
        counts = torch.tensor([r[1] for r in rows], dtype=torch.long)
        return [r[0] for r in rows], ClassStatistics.of(counts, sums, squares, gram)

    def examples(self) -> list[tuple[str, ExampleFile, float, Tensor]]:
        """Every example: its class, file (with the kept image and original), time added and
        embedding ``float32 [D]``."""
        rows = self.db.execute(
            "SELECT c.name, e.source, e.sha256, e.image, e.original, e.added, e.embedding "
            "FROM examples e JOIN classes c ON c.id = e.class_id ORDER BY e.id"
        )
        return [
            (name, ExampleFile(source, sha, image, original), added, _tensor(blob, "<f4"))
            for name, source, sha, image, original, added, blob in rows
        ]

    def images(self, name: str, limit: int = 12) -> list[tuple[str, bytes]]:
        """The first ``limit`` kept images of class ``name`` (file name, ``uint8`` bytes at the
        model's resolution); :class:`UnknownClass` for a class the store does not hold."""
        class_id = self._class_id(self.db, name)
        rows = self.db.execute(
            "SELECT source, image FROM examples WHERE class_id = ? AND image IS NOT NULL "
            "ORDER BY id LIMIT ?",
            (class_id, limit),
        )
        return [(source, bytes(image)) for source, image in rows]

    # ------------------------------------------------------------------ writing
    def add(self, name: str, embeddings: Tensor, files: Sequence[ExampleFile]) -> Added:
        """Add examples (embeddings ``[n, D]`` of the ``files``) to class ``name``, making the
        class if needed, in one transaction: the class's count, sum and sum of squares of the
        features and the Gram matrix grow by the new examples'. Files already learned by this
        class (same SHA-256, also twice in one call) are skipped and listed as duplicates."""
        name = check_name(name)
        dim = int(self.meta["embedding_dim"])
        if embeddings.dim() != 2 or embeddings.shape != (len(files), dim):
            raise ValueError(
                f"expected embeddings [{len(files)}, {dim}] for {len(files)} files, "
                f"got {tuple(embeddings.shape)}"
            )
        z = embeddings.detach().cpu().float()
        check_embeddings(z)
        phi = self.features(z)
        now = time.time()
        with self.transaction() as db:
            query = "SELECT id, count, sum, squares FROM classes WHERE name = ?"
            row = db.execute(query, (name,)).fetchone()
            if row is None:
                zero = vector_blob(torch.zeros(dim, dtype=torch.float64), "<f8")
                cursor = db.execute(
                    "INSERT INTO classes (name, count, sum, squares, created, updated) "
                    "VALUES (?, 0, ?, ?, ?, ?)",
                    (name, zero, zero, now, now),
                )
                row = (cursor.lastrowid, 0, zero, zero)
            class_id, count = row[0], row[1]
            total, squares = _tensor(row[2], "<f8"), _tensor(row[3], "<f8")
            query = "SELECT 1 FROM examples WHERE class_id = ? AND sha256 = ?"
            added, duplicates, seen, kept = [], [], set(), []
            for file, vector, feature in zip(files, z, phi, strict=True):
                if file.sha256 in seen or db.execute(query, (class_id, file.sha256)).fetchone():
                    duplicates.append(file.source)
                    continue
                seen.add(file.sha256)
                db.execute(
                    "INSERT INTO examples (class_id, sha256, source, added, embedding, image, "
                    "original) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        class_id,
                        file.sha256,
                        file.source,
                        now,
                        vector_blob(vector, "<f4"),
                        file.image,
                        file.original,
                    ),
                )
                total += feature
                squares += feature * feature
                kept.append(feature)
                added.append(file.source)
            count += len(added)
            db.execute(
                "UPDATE classes SET count = ?, sum = ?, squares = ?, updated = ? WHERE id = ?",
                (count, vector_blob(total, "<f8"), vector_blob(squares, "<f8"), now, class_id),
            )
            if kept:
                new = torch.stack(kept)
                self._set_gram(db, self._gram(db, dim) + new.T @ new)
                self._changed(db)
        return Added(name, added, duplicates, count)

    def forget(self, name: str) -> int:
        """Delete class ``name`` and its examples (the Gram matrix loses their features);
        returns how many examples it had. :class:`UnknownClass` if there is no such class
        (nothing is written)."""
        with self.transaction() as db:
            class_id = self._class_id(db, name)
            blobs = db.execute("SELECT embedding FROM examples WHERE class_id = ?", (class_id,))
            embeddings = [_tensor(blob, "<f4") for (blob,) in blobs]
            if embeddings:
                phi = self.features(torch.stack(embeddings))
                self._set_gram(db, self._gram(db, phi.shape[1]) - phi.T @ phi)
            db.execute("DELETE FROM examples WHERE class_id = ?", (class_id,))
            db.execute("DELETE FROM classes WHERE id = ?", (class_id,))
            self._changed(db)
        return len(embeddings)

    def refit(
        self,
        meta: dict[str, Any],
        embeddings: dict[int, Tensor] | None = None,
        statistics: ClassStatistics | None = None,
    ) -> None:
        """In one transaction: update ``meta`` (e.g. another class model, another run), replace
        the embeddings of the examples in ``embeddings`` (example id -> ``[D]``), and
        recompute every statistic from the examples' embeddings (or write ``statistics``, of
        the classes in order, e.g. those of an exported store, checked by the caller)."""
        with self.transaction() as db:
            self._set_meta(db, meta)
            db.executemany(
                "UPDATE examples SET embedding = ? WHERE id = ?",
                [(vector_blob(z, "<f4"), i) for i, z in (embeddings or {}).items()],
            )
            self._recompute(db, statistics)
            self._changed(db)

    def example_images(self) -> list[tuple[int, bytes | None]]:
        """Every example's id and kept image (``None`` for examples of a schema-1 store)."""
        rows = self.db.execute("SELECT id, image FROM examples ORDER BY id")
        return [(i, None if image is None else bytes(image)) for i, image in rows]

    # ------------------------------------------------------------------ internals
    def _class_id(self, db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT id FROM classes WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = [n for (n,) in db.execute("SELECT name FROM classes ORDER BY id")]
            known = ", ".join(repr(n) for n in names[:20]) or "none"
            raise UnknownClass(f"the store has no class {name!r} (its classes: {known})")
        return int(row[0])

    def _set_meta(self, db: sqlite3.Connection, meta: dict[str, Any]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in meta.items()],
        )

    def _gram(self, db: sqlite3.Connection, dim: int) -> Tensor:
        row = db.execute("SELECT value FROM shared WHERE key = 'gram'").fetchone()
        if row is None:
            return torch.zeros(dim, dim, dtype=torch.float64)
        return _tensor(row[0], "<f8").reshape(dim, dim)

    def generation(self) -> int:
        """How many writes changed the classes since the store was made (read caches of its
        class model are valid while it stays the same)."""
        row = self.db.execute("SELECT value FROM shared WHERE key = 'generation'").fetchone()
        return 0 if row is None else int(row[0])

    def _changed(self, db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO shared (key, value) VALUES ('generation', 1) "
            "ON CONFLICT (key) DO UPDATE SET value = value + 1"
        )

    def _set_gram(self, db: sqlite3.Connection, gram: Tensor) -> None:
        db.execute(
            "INSERT OR REPLACE INTO shared (key, value) VALUES ('gram', ?)",
            (vector_blob(gram.reshape(-1), "<f8"),),
        )

    def _recompute(self, db: sqlite3.Connection, stats: ClassStatistics | None = None) -> None:
        """Every class's count, sum and squares and the Gram matrix: ``stats``, or from the
        examples' embeddings under the current class model."""
        dim = int(self.meta["embedding_dim"])
        classes = [i for (i,) in db.execute("SELECT id FROM classes ORDER BY id")]
        if stats is None:
            stats = self._from_examples(db, classes, dim)
        db.executemany(
            "UPDATE classes SET count = ?, sum = ?, squares = ? WHERE id = ?",
            [
                (int(n), vector_blob(s, "<f8"), vector_blob(q, "<f8"), class_id)
                for class_id, n, s, q in zip(
                    classes, stats.counts, stats.sums, stats.squares, strict=True
                )
            ],
        )
        assert stats.gram is not None
        self._set_gram(db, stats.gram)

    def _from_examples(
        self, db: sqlite3.Connection, classes: list[int], dim: int
    ) -> ClassStatistics:
        rows = db.execute("SELECT class_id, embedding FROM examples").fetchall()
        index = {class_id: k for k, class_id in enumerate(classes)}
        stats = ClassStatistics(len(classes), dim)
        if rows:
            z = torch.from_numpy(np.frombuffer(b"".join(r[1] for r in rows), "<f4").copy())
            labels = torch.tensor([index[r[0]] for r in rows])
            stats.add(self.features(z.reshape(len(rows), dim)), labels)
        return stats

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


def _matrix(blobs: list[bytes], dim: int) -> Tensor:
    """float64 vectors (one blob each) as a ``[len, dim]`` matrix."""
    return torch.from_numpy(np.frombuffer(b"".join(blobs), dtype="<f8").reshape(-1, dim).copy())


def _identity(x: Tensor) -> Tensor:
    return x
