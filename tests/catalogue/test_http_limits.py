"""Hostile requests against the server's resources: images that decompress to many pixels,
and a chunked body (no Content-Length) larger than the limit (issue 13)."""

from __future__ import annotations

import itertools
import json
import select
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from test_serve import LIMITS, png, serving, uploads
from test_store import trained_run

MB = 2**20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int) -> bytes:
    """A black RGB PNG, made row by row (never ``width * height`` pixels in memory): it
    compresses about 1000 times (6000x6000: 105 KB for 108 MB of pixels)."""
    row, deflate = bytes(1 + 3 * width), zlib.compressobj(9)
    pixels = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    chunks = [(b"IHDR", header), (b"IDAT", pixels), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(*c) for c in chunks)


def memory(pid: int) -> dict[str, int]:
    """The resident set size of a process now (``VmRSS``) and at its peak (``VmHWM``), bytes."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: int(v.split()[0]) * 1024
        for k, v in (line.split(":") for line in lines)
        if k in ("VmRSS", "VmHWM")
    }


def peak_growth(pid: int, action: Callable[[], object]) -> int:
    """How far above its resident size before ``action`` the process's memory peaked."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from now
    before = memory(pid)["VmRSS"]
    action()
    return memory(pid)["VmHWM"] - before


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A server with the default limits (64 files of 10 MB and 40 Mpx, 160 Mpx per request)."""
    folder = tmp_path_factory.mktemp("limits")
    with serving(folder / "s.db", folder / "log", "--run", run_dir) as (url, process):
        files = uploads([("a.png", png(0))])
        assert (
            httpx.post(f"{url}/examples", data={"class_name": "a"}, files=files).status_code == 200
        )
        yield url, process.pid


def test_hostile_images_keep_the_server_memory_bounded(server):
    url, pid = server
    big = blank_png(6000, 6000)  # 36 Mpx: 144 MB decoded (RGB takes 4 bytes a pixel)
    assert len(big) < 200_000

    def predict(count: int) -> httpx.Response:
        files = uploads([(f"{i}.png", big) for i in range(count)])
        return httpx.post(f"{url}/predict", files=files, timeout=300)

    def hostile() -> list[httpx.Response]:
        with ThreadPoolExecutor(4) as pool:  # 4 requests of 4 images at once: 576 Mpx
            return list(pool.map(predict, [4] * 4))

    responses: list[httpx.Response] = []
    grew = peak_growth(pid, lambda: responses.extend(hostile()))
    print(f"server peak memory growth: {grew / MB:.0f} MB")
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["predictions"][0]["nearest"] == "a" for r in responses)
    # two decoders at a time, one image at full resolution each (144 MB), and small copies
    assert grew < 400 * MB
    over = predict(5)  # 180 Mpx in one request
    assert over.status_code == 413
    assert (
        over.json()["detail"] == "180,000,000 pixels in 5 images; at most 160,000,000 per request"
    )


def post_chunked(url: str, path: str, size: int) -> tuple[int, str, int]:
    """POST a multipart body of ``size`` bytes in chunks (no Content-Length) until the server
    answers or stops reading: its status, its body and how many bytes were sent."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    )
    part = b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
    sent, answer = 0, b""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(head.encode())
        for piece in itertools.chain([part], itertools.repeat(bytes(MB))):
            if sent >= size or select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:  # the server closed the connection, or stopped reading (timeout)
                break
            sent += len(piece)
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:  # after its answer: the server closed with our bytes unread
            pass
    status, _, body = answer.partition(b"\r\n\r\n")
    return int(status.split()[1]), body.decode(), sent


def test_a_chunked_body_over_the_limit_is_not_read(run_dir, tmp_path):
    with serving(tmp_path / "s.db", tmp_path / "log", "--run", run_dir, *LIMITS) as (url, process):
        limit = 16 * 200_000 + 65536  # --max-files 16 --max-file-mb 0.2
        answer: list[tuple[int, str, int]] = []
        grew = peak_growth(
            process.pid, lambda: answer.append(post_chunked(url, "/examples", 512 * MB))
        )
        status, body, sent = answer[0]
        print(f"sent {sent / MB:.0f} MB of 512 MB; server peak memory growth: {grew / MB:.0f} MB")
        assert status == 413
        assert json.loads(body)["detail"] == f"request of over {limit:,} bytes; at most {limit:,}"
        assert sent < 64 * MB  # the limit and what the sockets' buffers hold
        assert grew < 32 * MB
        assert httpx.get(f"{url}/classes").json()["classes"] == []
