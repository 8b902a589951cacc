"""Checksummed downloads.

:func:`download` streams a URL (``urllib``, standard library) into ``<dest>.part`` with a
progress bar, hashing on the fly, and renames it onto ``dest`` only after every check passed:
the server did not send an HTML page instead of the file (an error or login page), the
transfer was not cut off (``Content-Length``), and the md5/sha256 match. On any failure the
partial file is deleted, so a file at ``dest`` is always complete and verified.

The dataset loaders read the downloaded archives in place (Omniglot's zips, the CIFAR-100
tar), so nothing is ever extracted to disk.

Example:
    >>> download("https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    ...          "data/images_background.zip",
    ...          md5="68d2efa1b9178cc56df9314c21c6e718")  # doctest: +SKIP
    PosixPath('data/images_background.zip')
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from lifelong.data.cache import replace_durably

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download that failed or delivered something other than the expected file."""


def _digests(path: Path, names: list[str]) -> dict[str, str]:
    hashes = {n: hashlib.new(n) for n in names}
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            for h in hashes.values():
                h.update(block)
    return {n: h.hexdigest() for n, h in hashes.items()}


def _expected(md5: str | None, sha256: str | None) -> dict[str, str]:
    return {n: v.lower() for n, v in (("md5", md5), ("sha256", sha256)) if v}


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html"))


def download(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; returns ``dest``.

    If ``dest`` already exists and matches the given checksums (or none are given), nothing is
    fetched. Otherwise the file is streamed to ``<dest>.part`` and renamed onto ``dest``
    atomically once complete and verified.

    Raises:
        DownloadError: HTTP or network failure, an HTML page instead of the file, a transfer
            shorter or longer than its ``Content-Length``, or a checksum mismatch. The partial
            file is deleted.
    """
    dest = Path(dest)
    expected = _expected(md5, sha256)
    if dest.is_file() and _digests(dest, list(expected)) == expected:
        return dest
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"only http(s) URLs can be downloaded, got {url!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hashes = {n: hashlib.new(n) for n in expected}
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "lifelong"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as f:
            content_type = response.headers.get_content_type()
            if content_type == "text/html":
                raise DownloadError(
                    f"{url} served an HTML page (Content-Type {content_type}) instead of the "
                    "file: the link may be broken or need a login"
                )
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := response.read(CHUNK):
                    if received == 0 and _looks_like_html(chunk):
                        raise DownloadError(
                            f"{url} served an HTML page instead of the file: the link may be "
                            "broken or need a login"
                        )
                    f.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(
                f"the transfer of {url} was cut off: received {received} of {total} bytes"
            )
        for name, value in expected.items():
            got = hashes[name].hexdigest()
            if got != value:
                raise DownloadError(
                    f"checksum mismatch for {url}: {name} {got}, expected {value}; the file "
                    "is corrupted or was changed on the server"
                )
        replace_durably(part, dest)
    except http.client.IncompleteRead as err:
        raise DownloadError(
            f"the transfer of {url} was cut off: received {len(err.partial)} more bytes, "
            f"{err.expected} missing"
        ) from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise DownloadError(f"downloading {url} failed: {err}") from err
    finally:
        part.unlink(missing_ok=True)
    return dest
