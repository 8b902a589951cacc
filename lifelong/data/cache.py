"""The on-disk cache: downloaded archives and preprocessed datasets.

Decoding a dataset (e.g. 32,460 Omniglot PNGs) takes seconds to minutes; loading the decoded
``uint8`` tensors back takes a fraction of a second. :func:`cached` runs a loader's ``build``
function once and stores its result under a key that is the sha256 of the source fingerprint
(what the data was made from), the settings (what was done to it) and :data:`FORMAT_VERSION`
(how it is stored), so a changed source, setting or format never returns stale tensors.

Layout of the cache directory (:func:`cache_dir`)::

    downloads/<dataset>/...                      archives fetched by `lifelong download`
    tensors/<dataset>-<key>.safetensors          images and counts of each split
    tensors/<dataset>-<key>.json                 class infos, names, settings, source

The cache never writes beside the source data, which may be read-only. Every write is atomic:
a temporary file in the same directory, ``fsync``, then ``os.replace``; the JSON file is written
last and names the size of its tensors file, so a half-written entry is never read.

Example:
    >>> splits = cached("toy", fingerprint="v1", settings={"size": 28},
    ...                 build=lambda: {"train": toy_dataset()})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch

from lifelong.data.classes import ClassDataset, ClassInfo

#: Bump when the stored layout changes: old entries are then ignored and rebuilt.
FORMAT_VERSION = 1
ENV_VAR = "LIFELONG_CACHE"


def cache_dir(path: str | Path | None = None) -> Path:
    """The cache directory: ``path`` if given, else ``$LIFELONG_CACHE``, else
    ``$XDG_CACHE_HOME/lifelong``, else ``~/.cache/lifelong``. It is not created here."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lifelong"


def downloads_dir(dataset: str, cache: str | Path | None = None) -> Path:
    """Where :mod:`lifelong.data.download` puts the archives of ``dataset`` by default."""
    return cache_dir(cache) / "downloads" / dataset


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def files_fingerprint(files: Iterable[Path], root: Path, content: bool = False) -> str:
    """A sha256 identifying a set of source files: their paths relative to ``root`` and sizes,
    plus their content hashes (``content=True``, for a few archives) or modification times
    (for folders of many files, where hashing everything would cost as much as decoding)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        extra = file_sha256(path) if content else str(stat.st_mtime_ns)
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{extra}\n".encode())
    return digest.hexdigest()


def cache_key(dataset: str, fingerprint: str, settings: Mapping[str, Any]) -> str:
    """The sha256 of (dataset, source fingerprint, settings, :data:`FORMAT_VERSION`)."""
    payload = {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "source": fingerprint,
        "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; when the block succeeds, the file
    written there is flushed to disk and renamed onto ``path``; otherwise it is deleted.

    Example:
        >>> with atomic_path(Path("out.json")) as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_durably(src: Path, dst: Path) -> None:
    """``fsync`` the file ``src``, then atomically rename it onto ``dst``."""
    with open(src, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)


def _entry_paths(dataset: str, key: str, cache: str | Path | None) -> tuple[Path, Path]:
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset)}-{key[:24]}"
    folder = cache_dir(cache) / "tensors"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def save_splits(
    splits: Mapping[str, ClassDataset], tensors_path: Path, meta_path: Path, meta: dict
) -> None:
    """Store ``splits`` as safetensors (``<split>/images``, ``<split>/counts``) plus JSON
    metadata (``meta`` and each split's name and class infos), both written atomically, the
    JSON last."""
    tensors = {}
    for split, ds in splits.items():
        tensors[f"{split}/images"] = ds.images
        tensors[f"{split}/counts"] = ds.counts
    with atomic_path(tensors_path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp))
    meta = {
        **meta,
        "format": FORMAT_VERSION,
        "tensors_file": tensors_path.name,
        "tensors_bytes": tensors_path.stat().st_size,
        "splits": {
            split: {
                "name": ds.name,
                "classes": [[c.name, c.group, c.rotation] for c in ds.classes],
            }
            for split, ds in splits.items()
        },
    }
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def load_splits(tensors_path: Path, meta_path: Path, key: str) -> dict[str, ClassDataset] | None:
    """The splits stored by :func:`save_splits` under ``key``; ``None`` when the entry is
    missing, of another format or key, or incomplete."""
    if not (meta_path.is_file() and tensors_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if (
        meta.get("format") != FORMAT_VERSION
        or meta.get("key") != key
        or meta.get("tensors_bytes") != tensors_path.stat().st_size
    ):
        return None
    tensors = safetensors.torch.load_file(str(tensors_path))
    return {
        split: ClassDataset(
            tensors[f"{split}/images"],
            tensors[f"{split}/counts"],
            [ClassInfo(name, group, rotation) for name, group, rotation in info["classes"]],
            info["name"],
        )
        for split, info in meta["splits"].items()
    }


def cached(
    dataset: str,
    fingerprint: str,
    settings: Mapping[str, Any],
    build: Callable[[], Mapping[str, ClassDataset]],
    cache: str | Path | None = None,
    origin: str = "",
) -> dict[str, ClassDataset]:
    """The splits ``build()`` returns, from the cache when an entry for (``dataset``,
    ``fingerprint``, ``settings``) exists, else built and stored.

    Args:
        dataset: the dataset's name, e.g. ``"omniglot"``.
        fingerprint: identifies the source data (see :func:`files_fingerprint`).
        settings: everything that changes the tensors (JSON-serialisable), e.g. image size.
        build: makes the splits from the source; called only on a cache miss.
        cache: the cache directory (default :func:`cache_dir`).
        origin: where the source lies, recorded for ``lifelong datasets``.

    A corrupt entry is reported with a warning and rebuilt; a cache that cannot be written
    (read-only, disk full) is reported with a warning and the built splits are returned.
    """
    key = cache_key(dataset, fingerprint, settings)
    tensors_path, meta_path = _entry_paths(dataset, key, cache)
    try:
        found = load_splits(tensors_path, meta_path, key)
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as err:
        warnings.warn(f"ignoring unreadable cache entry {meta_path}: {err}", stacklevel=2)
        found = None
    if found is not None:
        return found
    splits = dict(build())
    meta = {
        "key": key,
        "dataset": dataset,
        "settings": dict(settings),
        "source": {"fingerprint": fingerprint, "origin": origin},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        save_splits(splits, tensors_path, meta_path, meta)
    except OSError as err:
        warnings.warn(f"could not write the cache entry {tensors_path}: {err}", stacklevel=2)
    return splits


@dataclass(frozen=True)
class CacheEntry:
    """One item in the cache: a preprocessed dataset (``kind="tensors"``) or a downloaded
    archive (``kind="download"``), with its size on disk and a short description."""

    dataset: str
    kind: str
    path: Path
    bytes: int
    detail: str


def cache_entries(cache: str | Path | None = None) -> list[CacheEntry]:
    """Everything stored in the cache directory, downloads first, sorted by path."""
    root = cache_dir(cache)
    entries = []
    downloads = root / "downloads"
    for path in sorted(downloads.glob("*/**/*")) if downloads.is_dir() else []:
        if path.is_file() and not path.name.endswith((".part", ".tmp")):
            dataset = path.relative_to(downloads).parts[0]
            entries.append(CacheEntry(dataset, "download", path, path.stat().st_size, path.name))
    for meta_path in sorted((root / "tensors").glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text())
            tensors_path = meta_path.with_name(meta["tensors_file"])
            size = tensors_path.stat().st_size + meta_path.stat().st_size
            splits = ", ".join(
                f"{split} {len(info['classes'])} classes" for split, info in meta["splits"].items()
            )
            settings = ", ".join(f"{k}={v}" for k, v in sorted(meta["settings"].items()))
            detail = f"{settings}; {splits}"
        except (OSError, ValueError, KeyError, TypeError) as err:
            meta, size, tensors_path = {}, meta_path.stat().st_size, meta_path
            detail = f"unreadable entry: {err}"
        entries.append(
            CacheEntry(meta.get("dataset", meta_path.stem), "tensors", tensors_path, size, detail)
        )
    return entries
