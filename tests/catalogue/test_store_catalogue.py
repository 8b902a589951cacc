"""Bad-input catalogue, the class store from the command line: learn, recognize, classes,
forget, migrate, export and serve's options, each refused with one line and every store file
byte for byte as it was."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from test_cli import cli, refused
from test_store import stroke_images, trained_run

from lifelong.continual.classifiers.registry import DEFAULT_CLASSIFIER
from lifelong.store import ClassStore, ImageFile, Recognizer, open_store
from lifelong.store.db import SCHEMA_VERSION


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def place(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``s.db`` (classes ``a`` and ``b``), ``empty-store.db`` (no class), files
    that are not stores, and images (``images/class0/0.png``...)."""
    folder = tmp_path_factory.mktemp("place")
    images = stroke_images(folder / "images", classes=2)
    recognizer = Recognizer.load(run_dir)
    with open_store(folder / "s.db", recognizer) as store:
        for name, paths in zip("ab", images.values(), strict=True):
            recognizer.learn(store, name, [ImageFile.read(p) for p in paths[:2]])
    open_store(folder / "empty-store.db", recognizer).close()
    open_store(folder / "newer.db", recognizer).close()
    for name, statement in [
        ("newer.db", f"PRAGMA user_version={SCHEMA_VERSION + 1}"),
        ("other-app.db", "CREATE TABLE notes (x)"),
        ("blank.db", "VACUUM"),
    ]:
        with closing(sqlite3.connect(folder / name, isolation_level=None)) as db:
            db.execute(statement)
    (folder / "empty.db").touch()
    (folder / "notes.txt").write_text("hello, not an image nor a store" * 4)
    (folder / "no-images").mkdir()
    (folder / "a-folder.db").mkdir()
    return folder


STORE = ["--store", "s.db"]
LEARN = ["learn", "RUN", *STORE]
IMAGE = "images/class0/0.png"

CASES = [
    (["forget", *STORE, "--class", "c"], 1, "the store has no class 'c' (its classes: 'a', 'b')"),
    (["forget", *STORE, "--class", ""], 1, "the class name is empty"),
    (["forget", *STORE, "--class", "a\tb"], 1, "contains control characters"),
    (["forget", *STORE, "--class", "x" * 300], 1, "300 characters long (at most 200)"),
    (["forget", "--store", "nope.db", "--class", "a"], 1, "no store at 'nope.db'"),
    ([*LEARN, "--class", " ", IMAGE], 1, "the class name is empty"),
    ([*LEARN, "--class", "a\nb", IMAGE], 1, "contains control characters"),
    ([*LEARN, "--class", "x" * 10_000, IMAGE], 1, "10000 characters long (at most 200)"),
    ([*LEARN, "--class", "a", "missing.png"], 1, "image 'missing.png' does not exist"),
    ([*LEARN, "--class", "a", "notes.txt"], 1, "notes.txt is not an image"),
    ([*LEARN, "--class", "a", "no-images"], 1, "folder 'no-images' has no images"),
    ([*LEARN, "--class", "a", IMAGE, "--classifier", "nope"], 1, "unknown classifier 'nope'"),
    (
        [*LEARN, "--class", "a", IMAGE, "--classifier", "cl2n"],
        1,
        f"keeps the statistics of the {DEFAULT_CLASSIFIER} classifier",
    ),
    ([*LEARN, "--class", "a", IMAGE, "--classifier-option", "x=nan"], 2, "must be finite"),
    ([*LEARN, "--class", "a", IMAGE, "--checkpoint", "worst"], 1, "must be best or last"),
    (
        ["learn", "RUN", "--store", "n.db", "--class", "a", IMAGE, "--quantile", "nan"],
        1,
        "quantile",
    ),
    (["learn", "RUN", "--store", "n.db", "--class", "a", IMAGE, "--quantile", "0"], 1, "quantile"),
    (["learn", "RUN", "--store", "n.db", "--class", "a", IMAGE, "--quantile", "2"], 1, "quantile"),
    (
        ["learn", "RUN", "--store", "other-app.db", "--class", "a", IMAGE],
        1,
        "not a lifelong class store",
    ),
    (["learn", "RUN", "--store", "notes.txt", "--class", "a", IMAGE], 1, "not a lifelong class"),
    (["learn", "RUN", "--store", "a-folder.db", "--class", "a", IMAGE], 1, "is not a file"),
    (["learn", "images", *STORE, "--class", "a", IMAGE], 1, "is not a lifelong run folder"),
    (["recognize", *STORE, IMAGE, "--threshold", "nan"], 2, "nan is not a distance"),
    (["recognize", *STORE, IMAGE, "--threshold", "-inf"], 2, "-inf is not a distance"),
    (["recognize", *STORE, IMAGE, "--top", "0"], 1, "top must be at least 1, got 0"),
    (["recognize", *STORE, "notes.txt"], 1, "notes.txt is not an image"),
    (["recognize", *STORE, IMAGE, "--run", "images"], 1, "not a lifelong run folder"),
    (["recognize", "--store", "empty-store.db", IMAGE], 1, "has no classes yet"),
    (["classes", "--store", "empty.db"], 1, "'empty.db' is an empty file, not a lifelong class"),
    (["classes", "--store", "other-app.db"], 1, "the SQLite database of another application"),
    (["classes", "--store", "blank.db"], 1, "is an empty SQLite database, not a lifelong class"),
    (["classes", "--store", "notes.txt"], 1, "is not a lifelong class store"),
    (["classes", "--store", "newer.db"], 1, "was written by a newer version of lifelong"),
    (["classes", "--store", "a-folder.db"], 1, "no store at 'a-folder.db'"),
    (["migrate", *STORE], 1, "migrate needs --run NEW_RUN, --classifier NAME or both"),
    (["migrate", *STORE, "--classifier", "nope"], 1, "unknown classifier 'nope'"),
    (["migrate", *STORE, "--run", "images"], 1, "is not a lifelong run folder"),
    (["migrate", *STORE, "--run", "RUN", "--checkpoint", "pn"], 1, "must be best or last"),
    (["export", "--store", "nope.db", "out.safetensors"], 1, "no store at 'nope.db'"),
    (["export", "--store", "other-app.db", "out.safetensors"], 1, "of another application"),
    (["serve", *STORE, "--port", "99999"], 2, "Invalid value for '--port'"),
    (["serve", *STORE, "--port", "0"], 2, "Invalid value for '--port'"),
    (["serve", "--store", "new.db", "--run", "RUN", "--port", "-1"], 2, "'--port'"),
    (["serve", *STORE, "--max-files", "-1"], 2, "Invalid value for '--max-files'"),
    (["serve", *STORE, "--max-files", "0"], 2, "Invalid value for '--max-files'"),
    (["serve", *STORE, "--max-file-mb", "0"], 2, "must be a positive number, got 0.0"),
    (["serve", *STORE, "--max-file-mb", "nan"], 2, "must be a positive number, got nan"),
    (["serve", *STORE, "--max-file-mb", "inf"], 2, "must be a positive number, got inf"),
    (["serve", *STORE, "--threshold", "nan"], 2, "nan is not a distance"),
    (["serve", *STORE, "--threshold", "-inf"], 2, "-inf is not a distance"),
    (["serve", "--store", "notes.txt"], 1, "is not a lifelong class store"),
    (["serve", "--store", "empty.db"], 1, "is an empty file"),
]
"""Store commands run in the folder of :func:`place` (``RUN``: the tiny run)."""


@pytest.mark.parametrize(("args", "code", "message"), CASES)
def test_bad_store_commands(args, code, message, run_dir, place, capsys, monkeypatch):
    monkeypatch.chdir(place)
    args = [run_dir if a == "RUN" else a for a in args]
    refused(capsys, args, code, message, (place,))


def test_an_infinite_threshold_is_null_in_json(place, capsys, monkeypatch):
    """inf (never unknown) is written ``null``, as the server does: JSON has no infinity."""
    monkeypatch.chdir(place)
    code, out, _ = cli(capsys, "recognize", *STORE, IMAGE, "--threshold", "inf", "--json")
    answer = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in {out}"))
    assert code == 0 and answer["threshold"] is None
    assert answer["predictions"][0]["label"] == "a" and not answer["predictions"][0]["unknown"]


def test_forget_strips_the_name_as_learn_does(run_dir, place, tmp_path, capsys):
    store = tmp_path / "s.db"
    store.write_bytes((place / "s.db").read_bytes())
    code, out, _ = cli(capsys, "forget", "--store", store, "--class", "  a ")
    assert (code, out) == (0, "forgot 'a' (2 examples)\n")
    with ClassStore.open(store) as db:
        assert [c.name for c in db.classes()] == ["b"]


@pytest.mark.parametrize("command", ["forget", "learn"])
def test_a_store_locked_for_writing_too_long_is_one_line(
    command, run_dir, place, capsys, monkeypatch
):
    opener = ClassStore.open.__func__
    monkeypatch.setattr(
        ClassStore, "open", classmethod(lambda cls, p, timeout=0.3: opener(cls, p, timeout))
    )
    monkeypatch.chdir(place)
    args = {
        "forget": ["forget", *STORE, "--class", "a"],
        "learn": ["learn", run_dir, *STORE, "--class", "a", "images/class0/5.png"],
    }[command]
    writer = sqlite3.connect(place / "s.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process is writing and holds the lock
    try:
        message = (
            "'s.db' is busy: another process has kept it locked for writing for more than 0.3 s"
        )
        refused(capsys, args, 1, message, (place,))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with ClassStore.open(place / "s.db") as db:
        assert [(c.name, c.examples) for c in db.classes()] == [("a", 2), ("b", 2)]
