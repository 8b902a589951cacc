"""`lifelong serve`: a real uvicorn server on 127.0.0.1 (a subprocess) over a real SQLite
store: the API, bad input, a wrong token, concurrent writers, kill -9 during writes, and the
web page in a headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_store import stroke_images, trained_run
from torch.distributed.elastic.utils.distributed import get_free_port

import lifelong
from lifelong.store import ClassStore

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = ["--max-files", "16", "--max-file-mb", "0.2"]
CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def serving(store: Path, log: Path, *args: str | Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``lifelong serve --store STORE ARGS`` on a free port: its URL once /health answers,
    and the process (terminated at the end unless killed already)."""
    port = get_free_port()
    command = [sys.executable, "-m", "lifelong", "serve", "--store", str(store),
               "--port", str(port), "--log-level", "warning", *map(str, args)]  # fmt: skip
    with log.open("a") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def png(seed: int, size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    """A random image (distinct content for each seed) as PNG bytes."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def uploads(items: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "image/png")) for name, data in items]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return stroke_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with a token, whose store it makes (``--run``) on start."""
    folder = tmp_path_factory.mktemp("serve")
    with serving(folder / "s.db", folder / "log", "--run", run_dir, "--token", TOKEN,
                 *LIMITS) as (url, _):  # fmt: skip
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
        yield c


def examples(client: httpx.Client) -> int:
    return client.get("/health").json()["examples"]


def test_health_docs_and_page_are_served(client):
    health = client.get("/health", headers={})  # no token needed
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["auth"] is True and len(health.json()["fingerprint"]) == 64
    anonymous = client.get("/health", headers={"Authorization": ""}).json()
    assert len(anonymous["fingerprint"]) == 12 and "run_dir" not in anonymous
    assert "swagger-ui" in client.get("/docs").text
    schema = client.get("/openapi.json").json()
    assert {"/health", "/classes", "/examples", "/predict", "/classes/{name}"} <= set(
        schema["paths"]
    )
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert 'id="class-name"' in client.get("/").text


def test_thumbnails_show_a_class_as_the_model_sees_it(client, images):
    response = client.post(
        "/examples",
        data={"class_name": "thumbs"},
        files=uploads([(p.name, p.read_bytes()) for p in images["class2"][:3]]),
    )
    assert response.status_code == 200, response.text
    shown = client.get("/thumbnails", params={"class_name": "thumbs", "limit": 2}).json()
    assert [i["source"] for i in shown["images"]] == [p.name for p in images["class2"][:2]]
    first = Image.open(io.BytesIO(base64.b64decode(shown["images"][0]["png"])))
    assert first.mode == "L" and first.size[0] == first.size[1] < 64  # the run's 1xHxW input
    missing = client.get("/thumbnails", params={"class_name": "nope"})
    assert missing.status_code == 404 and "no class 'nope'" in missing.json()["detail"]
    assert client.get("/thumbnails", params={"class_name": "thumbs", "limit": 0}).status_code == 422
    assert client.delete("/classes/thumbs").status_code == 200


def test_a_missing_or_wrong_token_is_401_and_writes_nothing(client, images):
    before = examples(client)
    form = {"class_name": "intruder"}
    files = uploads([("a.png", images["class0"][0].read_bytes())])
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        for method, path in (("GET", "/classes"), ("POST", "/examples"), ("POST", "/predict")):
            response = httpx.request(
                method, f"{client.base_url}{path}", headers=headers, data=form, files=files
            )
            assert response.status_code == 401, (method, path)
            assert response.json()["detail"] == "missing or wrong bearer token"
            assert response.headers["www-authenticate"] == "Bearer"
    assert examples(client) == before


def test_http_predictions_equal_lifelong_predict(client, run_dir, images):
    for c in client.get("/classes").json()["classes"]:
        assert client.delete(f"/classes/{c['name']}").status_code == 200
    query = uploads([("q.png", images["class0"][5].read_bytes())])
    empty = client.post("/predict", files=query)
    assert empty.status_code == 409 and "no classes yet" in empty.json()["detail"]
    support, labels = [], []
    for name, paths in images.items():
        files = uploads([(p.name, p.read_bytes()) for p in paths[:2]])
        added = client.post("/examples", data={"class_name": name}, files=files).json()
        assert (added["name"], added["count"], added["duplicates"]) == (name, 2, [])
        support += paths[:2]
        labels += [name] * 2
    queries = [p for paths in images.values() for p in paths[2:]]
    response = client.post(
        "/predict",
        params={"top": 3},
        files=uploads([(f"{p.parent.name}-{p.name}", p.read_bytes()) for p in queries]),
    )
    assert response.status_code == 200
    served = response.json()["predictions"]
    expected = lifelong.load(run_dir).adapt(support, labels).predict(queries)
    assert len(served) == len(expected) == 12
    for s, e in zip(served, expected, strict=True):
        assert s["nearest"] == e.label
        assert s["probability"] == pytest.approx(e.probability, abs=1e-5)
        top = {c["label"]: c["probability"] for c in s["top"]}
        assert top == pytest.approx(e.probabilities, abs=1e-5)
    strict = client.post("/predict", params={"threshold": -1}, files=query).json()
    assert strict["threshold"] == -1 and strict["predictions"][0]["unknown"] is True
    assert strict["predictions"][0]["label"] is None


def test_the_server_threshold_applies_to_requests_that_give_none(run_dir, images, tmp_path):
    import uvicorn

    from lifelong.store import ImageFile, Recognizer, open_store
    from lifelong.store.server import create_app

    recognizer = Recognizer.load(run_dir)
    with open_store(tmp_path / "s.db", recognizer) as store:
        recognizer.learn(store, "a", [ImageFile.read(images["class0"][0])])
    app = create_app(tmp_path / "s.db", recognizer, threshold=-1.0)
    port = get_free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)  # in this process: the model is loaded
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health").json()["threshold"] == -1.0
        query = uploads([("a.png", images["class0"][0].read_bytes())])
        assert httpx.post(f"{url}/predict", files=query).json()["predictions"][0]["unknown"]
        relaxed = httpx.post(f"{url}/predict", params={"threshold": "inf"}, files=query).json()
        assert relaxed["predictions"][0]["label"] == "a"
    finally:
        server.should_exit = True
        thread.join()


def test_bad_uploads_get_clear_errors_and_write_nothing(client, images):
    before = examples(client)
    good = (images["class1"][0].name, images["class1"][0].read_bytes())
    huge = io.BytesIO()
    Image.new("1", (7000, 7000)).save(huge, format="PNG")  # 49 megapixels, a small file
    cases = [
        ("x", [("notes.txt", b"hello")], 422, "notes.txt is not an image"),
        ("x", [good, ("notes.txt", b"hello")], 422, "notes.txt is not an image"),
        ("x", [("huge.png", huge.getvalue())], 413, "more than the 40,000,000 allowed"),
        ("x", [("big.png", png(0, (400, 400)) + bytes(200_000))], 413, "at most 200,000"),
        ("x", [good] * 17, 413, "17 files; at most 16"),
        ("x", [("zeros.png", bytes(200_000))] * 17, 413, "request of 3,40"),  # Content-Length
        ("  ", [good], 422, "the class name is empty"),
        ("x", [], 422, "no images given"),
    ]
    for name, files, status, message in cases:
        response = client.post("/examples", data={"class_name": name}, files=uploads(files))
        assert response.status_code == status, (name, message, response.text)
        assert message in response.json()["detail"]
    missing_name = client.post("/examples", files=uploads([good]))
    assert missing_name.status_code == 422 and "class name is empty" in missing_name.text
    unknown = client.delete("/classes/no such class")
    assert unknown.status_code == 404 and "no class 'no such class'" in unknown.json()["detail"]
    assert client.post("/predict", params={"top": 0}, files=uploads([good])).status_code == 422
    assert examples(client) == before
    assert "x" not in [c["name"] for c in client.get("/classes").json()["classes"]]


def test_two_clients_adding_to_the_same_class_at_once_both_count(server):
    barrier = threading.Barrier(2)

    def add(writer: int) -> list[int]:
        counts = []
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
            barrier.wait()
            for i in range(5):
                files = uploads([(f"{writer}-{i}.png", png(1000 * writer + i))])
                response = c.post("/examples", data={"class_name": "together"}, files=files)
                counts.append(response.json()["count"])
        return counts

    with ThreadPoolExecutor(2) as pool:
        counts = [n for done in [pool.submit(add, w) for w in (1, 2)] for n in done.result()]
    assert sorted(counts) == list(range(1, 11))  # no update was lost
    with httpx.Client(base_url=server, headers=AUTH) as c:
        classes = {x["name"]: x["examples"] for x in c.get("/classes").json()["classes"]}
    assert classes["together"] == 10


class Writers:
    """Clients that add distinct images to class ``crash`` until told to stop or the server
    dies; ``acknowledged`` holds the SHA-256 of every image whose request got a 200."""

    def __init__(self, url: str, round_: int, clients: int) -> None:
        self.url, self.round, self.stop = url, round_, threading.Event()
        self.acknowledged: set[str] = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.write, args=(w,)) for w in range(clients)]
        for t in self.threads:
            t.start()

    def write(self, writer: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            for i in range(10**6):
                if self.stop.is_set():
                    return
                data = png(10**7 * self.round + 10**5 * writer + i)
                files = uploads([(f"{writer}-{i}.png", data)])
                try:
                    response = c.post("/examples", data={"class_name": "crash"}, files=files)
                except httpx.TransportError:
                    return  # the server was killed: not acknowledged
                assert response.status_code == 200, response.text
                with self.lock:
                    self.acknowledged.add(hashlib.sha256(data).hexdigest())

    def join(self) -> set[str]:
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.acknowledged


def crash_rounds(run_dir: Path, folder: Path, rounds: int, clients: int = 3) -> tuple[int, int]:
    """``rounds`` times: start a server, let ``clients`` add distinct images to one class, and
    kill -9 the server after a random number (3 to 12) of acknowledged writes, while requests
    are in flight. Returns the number of acknowledged examples and how many of them the store
    holds afterwards (it must open cleanly and hold all of them)."""
    store, log = folder / "crash.db", folder / "crash.log"
    acknowledged: set[str] = set()
    chance = random.Random(0)
    for r in range(rounds):
        with serving(store, log, *(["--run", run_dir] if r == 0 else [])) as (url, process):
            writers, target = Writers(url, r, clients), chance.randint(3, 12)
            while len(writers.acknowledged) < target and process.poll() is None:
                time.sleep(0.005)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            acknowledged |= writers.join()
    with serving(store, log) as (url, _):  # the store opens cleanly after the last kill
        listed = {c["name"]: c["examples"] for c in httpx.get(f"{url}/classes").json()["classes"]}
    with ClassStore.open(store) as db:
        assert db.integrity() == "ok"
        stored = {e[1].sha256 for e in db.examples()}
    assert listed["crash"] == len(stored) >= len(acknowledged)
    return len(acknowledged), len(acknowledged & stored)


def test_kill_9_during_writes_keeps_every_acknowledged_example(run_dir, tmp_path):
    acknowledged, found = crash_rounds(run_dir, tmp_path, rounds=1)
    assert acknowledged >= 3 and found == acknowledged


@pytest.mark.slow
def test_ten_rounds_of_kill_9_during_writes_lose_no_acknowledged_example(run_dir, tmp_path):
    acknowledged, found = crash_rounds(run_dir, tmp_path, rounds=10)
    assert acknowledged >= 30 and found == acknowledged


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_web_page_teaches_a_class_and_recognises_images_in_headless_chromium(
    server, images, tmp_path
):
    playwright = pytest.importorskip("playwright.sync_api")
    alpha, beta = images["class0"][0], images["class1"][0]
    with httpx.Client(base_url=server, headers=AUTH) as c:  # only the classes taught here
        for taught in c.get("/classes").json()["classes"]:
            c.delete("/classes", params={"class_name": taught["name"]}).raise_for_status()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(server)
            page.locator("#token-row").wait_for(state="visible")  # this server has a token
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            for name, image in (("alpha", alpha), ("beta", beta)):
                page.fill("#class-name", name)
                page.set_input_files("#learn-files", [str(image)])
                page.click("#learn-button")
                page.locator(f'li[data-class="{name}"]').wait_for()
                assert f"learned 1 image of {name}" in page.text_content("#learn-status")
            assert "alpha (1 example)" in page.text_content('li[data-class="alpha"]')
            page.locator('li[data-class="alpha"] .thumbs img').first.wait_for()
            page.set_input_files("#predict-files", [str(alpha), str(beta)])
            page.locator(".result").nth(1).wait_for()
            labels = page.locator(".result .label").all_text_contents()
            assert labels == ["alpha", "beta"]  # each image is its class's only example
            bars = page.locator(".result").nth(0).locator(".bar-label").all_text_contents()
            assert bars[0] == "alpha" and set(bars) <= {"alpha", "beta"}
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.fill("#class-name", "")
            page.click("#learn-button")
            assert page.text_content("#learn-status") == "type a class name first"
            page.fill("#class-name", " shelf/left ")  # a name with "/" is forgotten too
            page.set_input_files("#learn-files", [str(images["class2"][0])])
            page.click("#learn-button")
            page.locator('li[data-class="shelf/left"] button').click()
            page.locator('li[data-class="shelf/left"]').wait_for(state="detached")
            assert "error" not in (page.get_attribute("#status", "class") or "")
        finally:
            browser.close()
