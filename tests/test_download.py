"""Checksummed downloads against a real HTTP server on 127.0.0.1, and safe extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from lifelong.data.download import DownloadError, UnsafeArchiveError, download, extract

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


def make_zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, b"x")
    return path


def make_tar(path: Path, members: list[tuple[str, bytes | str, bytes]]) -> Path:
    """Members are (name, type, link target or content)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.type, info.linkname = kind, data
                tf.addfile(info)
    return path


def test_extract_zip_and_tar(tmp_path):
    extract(make_zip(tmp_path / "a.zip", ["top/a.txt", "top/sub/b.txt"]), tmp_path / "z")
    assert (tmp_path / "z/top/sub/b.txt").read_bytes() == b"x"
    members = [
        ("d/a.txt", tarfile.REGTYPE, b"hello"),
        ("d/link", tarfile.SYMTYPE, "a.txt"),
    ]
    extract(make_tar(tmp_path / "a.tar.gz", members), tmp_path / "t")
    assert (tmp_path / "t/d/link").read_bytes() == b"hello"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_extract_rejects_zip_members_escaping_the_target(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", ["fine.txt", name])
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    "member",
    [
        ("../evil.txt", tarfile.REGTYPE, b"x"),
        ("/tmp/evil.txt", tarfile.REGTYPE, b"x"),
        ("d/link", tarfile.SYMTYPE, "../../etc/passwd"),
        ("d/link", tarfile.SYMTYPE, "/etc/passwd"),
        ("d/hard", tarfile.LNKTYPE, "../outside"),
    ],
)
def test_extract_rejects_tar_members_escaping_the_target(tmp_path, member):
    archive = make_tar(tmp_path / "bad.tar.gz", [("fine.txt", tarfile.REGTYPE, b"x"), member])
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_rejects_device_files_and_non_archives(tmp_path):
    archive = make_tar(tmp_path / "dev.tar.gz", [("null", tarfile.CHRTYPE, "")])
    with pytest.raises(UnsafeArchiveError, match="device"):
        extract(archive, tmp_path / "out")
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(ValueError, match="neither a zip nor a tar"):
        extract(tmp_path / "plain.txt", tmp_path / "out")
