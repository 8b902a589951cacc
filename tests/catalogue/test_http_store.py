"""The HTTP server over a store file that changes under it: replaced by a store of other
weights, or made anew, while the server runs (issue 13)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from test_serve import png, serving, uploads
from test_store import trained_run

from lifelong.store import ClassStore, ImageFile, Recognizer, open_store


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


def add(client: httpx.Client, name: str, seed: int) -> httpx.Response:
    return client.post(
        "/examples", data={"class_name": name}, files=uploads([("x.png", png(seed))])
    )


def refused(response: httpx.Response, message: str) -> None:
    detail = response.json()["detail"]
    assert response.status_code == 409, response.text
    assert "the store changed while the server ran" in detail and message in detail
    assert "\n" not in detail


def counts(path: Path) -> dict[str, int]:
    with ClassStore.open(path) as store:
        return {c.name: c.examples for c in store.classes()}


def other_weights(store: Path, copy: Path) -> Path:
    """A copy of ``store`` that says it belongs to other weights."""
    shutil.copyfile(store, copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'fingerprint'", (json.dumps("0" * 64),))
    db.close()
    return copy


def test_a_store_replaced_or_made_anew_under_the_server_is_refused(run_dir, tmp_path):
    store, log = tmp_path / "s.db", tmp_path / "log"
    with (
        serving(store, log, "--run", run_dir) as (url, _),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        assert add(client, "a", 1).status_code == 200
        original = tmp_path / "original.db"
        store.rename(original)

        # made anew for the same run: reads are fine, writes are refused
        recognizer = Recognizer.load(run_dir)
        with open_store(store, recognizer) as new:
            recognizer.learn(new, "b", [ImageFile("b.png", png(2))])
        assert client.get("/classes").json()["classes"][0]["name"] == "b"
        refused(add(client, "b", 3), "is not the store the server started with")
        refused(client.delete("/classes", params={"class_name": "b"}), "started with")
        assert counts(store) == {"b": 1}

        # a store of other weights copied over it (the same file, as `cp` does): all refused
        shutil.copyfile(other_weights(original, tmp_path / "other.db"), store)
        for response in (add(client, "a", 4), client.get("/classes"), client.get("/health")):
            refused(response, "belongs to the run")
        assert counts(store) == {"a": 1}

        # the server's own store back: it works again
        shutil.copyfile(original, store)
        assert add(client, "a", 5).json()["count"] == 2


def test_health_names_no_paths_of_a_changed_store_without_the_token(run_dir, tmp_path):
    store, log = tmp_path / "s.db", tmp_path / "log"
    with serving(store, log, "--run", run_dir, "--token", "t") as (url, _):
        health = httpx.get(f"{url}/health")  # no token needed
        assert health.status_code == 200 and health.json()["auth"] is True
        assert str(run_dir.resolve()) not in health.text and "run_dir" not in health.text
        assert str(tmp_path) not in health.text
        shutil.copyfile(other_weights(store, tmp_path / "other.db"), store)
        anonymous = httpx.get(f"{url}/health")
        assert anonymous.status_code == 409
        assert anonymous.json() == {"detail": "the store changed while the server ran"}
        refused(httpx.get(f"{url}/health", headers={"Authorization": "Bearer t"}), "belongs to")
