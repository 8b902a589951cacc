"""Requests to a server without a token, the default: cross-origin writes (CSRF), uploads
whose Content-Type is not their image type, what /health shows, one-line 422s, thresholds
that are not numbers, class names with "/" or surrounding spaces (issue 13)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from test_serve import png, serving, uploads
from test_store import trained_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("open")
    with serving(folder / "s.db", folder / "log", "--run", run_dir) as (url, _):
        c = httpx.Client(base_url=url, timeout=60)
        assert learn(c, "known", 0).status_code == 200
        yield c
        c.close()


def learn(client: httpx.Client, name: str, seed: int, **kwargs: object) -> httpx.Response:
    files = uploads([(f"{seed}.png", png(seed))])
    return client.post("/examples", data={"class_name": name}, files=files, **kwargs)


def classes(client: httpx.Client) -> dict[str, int]:
    return {c["name"]: c["examples"] for c in client.get("/classes").json()["classes"]}


def one_line(response: httpx.Response, status: int, message: str) -> None:
    detail = response.json()["detail"]
    assert response.status_code == status, response.text
    assert isinstance(detail, str) and "\n" not in detail and message in detail, detail


def test_cross_origin_writes_are_refused_without_a_token(client):
    before = classes(client)
    elsewhere = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a file:// page
        {"Origin": "http://127.0.0.1:1"},  # another server of this machine
        {"Referer": "http://evil.example/form.html"},
        {"Sec-Fetch-Site": "cross-site", "Origin": str(client.base_url)},
        {"Sec-Fetch-Site": "same-site"},
    ]
    for headers in elsewhere:
        one_line(learn(client, "csrf", 1, headers=headers), 403, "cross-origin request refused")
        forget = client.delete("/classes", params={"class_name": "known"}, headers=headers)
        one_line(forget, 403, "only this server's own page")
        one_line(client.delete("/classes/known", headers=headers), 403, "cross-origin request")
        query = uploads([("q.png", png(0))])
        one_line(client.post("/predict", files=query, headers=headers), 403, "cross-origin")
    assert classes(client) == before
    own = [
        {"Origin": str(client.base_url).rstrip("/")},
        {"Referer": f"{client.base_url}"},
        {"Sec-Fetch-Site": "same-origin", "Origin": str(client.base_url).rstrip("/")},
        {"Sec-Fetch-Site": "none"},  # typed in the address bar
        {},  # not a browser: curl, a script
    ]
    for seed, headers in enumerate(own, start=2):
        assert learn(client, "mine", seed, headers=headers).status_code == 200, headers
    assert classes(client)["mine"] == len(own)
    assert client.get("/classes", headers={"Origin": "http://evil.example"}).status_code == 200


def encoded(fmt: str, red: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (red, 10, 10)).save(out, format=fmt)
    return out.getvalue()


TYPES = [
    ("PNG", "image/png", True),
    ("JPEG", "image/jpeg", True),
    ("JPEG", "image/jpg", True),
    ("BMP", "image/bmp", True),
    ("PNG", "image/jpeg", False),
    ("PNG", "application/octet-stream", False),
    ("PNG", "text/html", False),
    ("PNG", "", False),
    ("JPEG", "image/png", False),
    ("GIF", "image/png", False),
]


@pytest.mark.parametrize(
    ("fmt", "content_type", "accepted"), TYPES, ids=[f"{f}-as-{t or 'none'}" for f, t, _ in TYPES]
)
def test_an_upload_must_be_sent_as_its_image_type(client, fmt, content_type, accepted):
    before = classes(client).get("typed", 0)
    data = encoded(fmt, red=20 * TYPES.index((fmt, content_type, accepted)))
    files = [("images", ("f", data, content_type))]
    response = client.post("/examples", data={"class_name": "typed"}, files=files)
    if accepted:
        assert response.status_code == 200, response.text
        assert classes(client)["typed"] == before + 1
    else:
        one_line(response, 422, f"is {fmt} data but was sent as")
        assert classes(client).get("typed", 0) == before
        one_line(client.post("/predict", files=files), 422, "data but was sent as")


def test_health_shows_no_paths(client, run_dir):
    health = client.get("/health")
    assert health.status_code == 200
    assert set(health.json()) == {
        "status",
        "classes",
        "examples",
        "fingerprint",
        "threshold",
        "auth",
    }
    assert len(health.json()["fingerprint"]) == 12 and health.json()["auth"] is False
    assert str(run_dir.resolve()) not in health.text and "run_dir" not in health.text


@pytest.mark.parametrize(
    ("method", "path", "params", "message"),
    [
        ("POST", "/predict", {"top": "0"}, "top: Input should be greater than or equal to 1"),
        ("POST", "/predict", {"top": "many"}, "top: Input should be a valid integer"),
        ("POST", "/predict", {"threshold": "far"}, "threshold: Input should be a valid number"),
        ("GET", "/thumbnails", {"limit": "0"}, "class_name: Field required; limit: Input"),
        ("DELETE", "/classes", {}, "class_name: Field required"),
    ],
)
def test_validation_errors_are_one_line(client, method, path, params, message):
    files = uploads([("q.png", png(20))]) if method == "POST" else None
    one_line(client.request(method, path, params=params, files=files), 422, message)


def test_a_threshold_is_a_number_or_inf(client):
    query = uploads([("q.png", png(0))])  # the image class "known" was taught
    for bad in ("nan", "NaN", "-inf", "-Infinity"):
        response = client.post("/predict", params={"threshold": bad}, files=query)
        one_line(response, 422, "threshold must be a number or inf (never unknown)")
    never = client.post("/predict", params={"threshold": "inf"}, files=query).json()
    assert never["threshold"] is None and never["predictions"][0]["label"] == "known"
    always = client.post("/predict", params={"threshold": "-1"}, files=query).json()
    assert always["threshold"] == -1 and always["predictions"][0]["unknown"] is True


def test_any_class_name_can_be_forgotten_and_names_are_stripped(client):
    for seed, name in enumerate(["shelf/left", "a/b/c", "..", "50% off?#", " spaced "], 30):
        assert learn(client, name, seed).json()["name"] == name.strip()
    for name in ("shelf/left", " a/b/c ", "..", "50% off?#", "spaced  "):
        response = client.delete("/classes", params={"class_name": name})
        assert response.status_code == 200, (name, response.text)
        assert response.json() == {"deleted": name.strip(), "examples": 1}
    assert learn(client, "plain", 40).status_code == 200
    assert client.delete("/classes/%20plain%20").json()["deleted"] == "plain"  # the old path
    one_line(client.delete("/classes", params={"class_name": "  "}), 422, "class name is empty")
    one_line(client.delete("/classes", params={"class_name": "x/y"}), 404, "no class 'x/y'")
    assert set(classes(client)) <= {"known", "mine", "typed"}
