"""Checksummed downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from lifelong.data.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several read chunks
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
HTML = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"


class Handler(BaseHTTPRequestHandler):
    """Routes: /file (the payload), /html (an HTML page), /sniff (HTML labelled as binary),
    /cut (announces the payload's length, sends half and hangs up), anything else 404."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Handler.requests.append(self.path)
        routes = {
            "/file": ("application/zip", PAYLOAD, len(PAYLOAD)),
            "/html": ("text/html; charset=utf-8", HTML, len(HTML)),
            "/sniff": ("application/octet-stream", HTML, len(HTML)),
            "/cut": ("application/zip", PAYLOAD[: len(PAYLOAD) // 2], len(PAYLOAD)),
        }
        if self.path not in routes:
            self.send_error(404)
            return
        content_type, body, length = routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_verifies_and_renames(server, tmp_path):
    dest = tmp_path / "data" / "archive.zip"
    assert download(f"{server}/file", dest, md5=MD5, sha256=SHA256, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["archive.zip"]


def test_download_skips_a_verified_file_and_replaces_a_corrupt_one(server, tmp_path):
    dest = tmp_path / "archive.zip"
    download(f"{server}/file", dest, md5=MD5, progress=False)
    before = len(Handler.requests)
    download(f"{server}/file", dest, md5=MD5, progress=False)
    assert len(Handler.requests) == before
    dest.write_bytes(b"corrupt")
    download(f"{server}/file", dest, md5=MD5, progress=False)
    assert len(Handler.requests) == before + 1
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("route", "checksums", "message"),
    [
        ("/file", {"md5": "0" * 32}, "checksum mismatch"),
        ("/file", {"sha256": "f" * 64}, "checksum mismatch"),
        ("/html", {}, "HTML page"),
        ("/sniff", {}, "HTML page"),
        ("/cut", {"md5": MD5}, "cut off"),
        ("/missing", {}, "404"),
    ],
)
def test_download_rejects_bad_transfers_and_leaves_nothing(
    server, tmp_path, route, checksums, message
):
    dest = tmp_path / "archive.zip"
    with pytest.raises(DownloadError, match=message):
        download(f"{server}{route}", dest, progress=False, **checksums)
    assert leftovers(tmp_path) == []


def test_download_refuses_other_schemes(tmp_path):
    with pytest.raises(DownloadError, match="only http"):
        download("file:///etc/passwd", tmp_path / "x", progress=False)
