"""The class store without a server: SQLite file, incremental prototypes, calibration, the
open-set answer, refusal of foreign files, export/import, the CLI commands, and kill -9 in
the middle of a write."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lifelong.cli import main
from lifelong.continual.classifiers.mean import NearestMean
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.strokes import load_strokes
from lifelong.store import (
    ClassStore,
    ExampleFile,
    ImageFile,
    Recognizer,
    StoreError,
    UnknownClass,
    calibrate,
    export_store,
    import_store,
    open_store,
)
from lifelong.store.db import SCHEMA_VERSION

CLASSES = {"train": 20, "val": 8, "test": 8}


def trained_run(base: Path, seed: int = 0) -> Path:
    """A tiny ProtoNet on strokes, trained once per test session and seed (shared with
    tests/test_serve.py through the session's temporary folder)."""
    out = base / ("store-run" if seed == 0 else f"store-run-{seed}")
    if not (out / "last.json").exists():
        from lifelong.pipeline.config import RunConfig
        from lifelong.pipeline.train import train

        config = RunConfig(
            algorithm="protonet", dataset="strokes",
            dataset_options={"classes": CLASSES, "per_class": 6},
            ways=3, shots=1, queries=2, meta_batch=4, iterations=10, hidden=(16,),
            val_every=10, val_episodes=4, checkpoint_every=10, device="cpu", out=str(out),
            seed=seed,
        )  # fmt: skip
        train(config, progress=False)
    return out


def stroke_images(folder: Path, classes: int = 3) -> dict[str, list[Path]]:
    """Test-split strokes saved as black-on-white PNGs: ``{class name: 6 paths}``."""
    test = load_strokes(CLASSES, per_class=6)["test"]
    files = {}
    for k in range(classes):
        (folder / f"class{k}").mkdir(parents=True, exist_ok=True)
        files[f"class{k}"] = []
        for i, image in enumerate(test[k]):
            path = folder / f"class{k}" / f"{i}.png"
            Image.fromarray(255 - image[0].numpy()).save(path)
            files[f"class{k}"].append(path)
    return files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def recognizer(run_dir: Path) -> Recognizer:
    return Recognizer.load(run_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return stroke_images(tmp_path_factory.mktemp("images"))


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_learning_adds_to_running_sums_and_records_where_examples_came_from(
    recognizer, images, tmp_path
):
    files = [ImageFile.read(p) for p in images["class0"]]
    with open_store(tmp_path / "s.db", recognizer) as store:
        first = recognizer.learn(store, "zero", files[:2])
        second = recognizer.learn(store, " zero ", files[2:5])
        names, stats = store.statistics()
        counts, sums = stats.counts, stats.sums
        examples = store.examples()
        meta = store.meta
    assert (first.count, second.count, second.name) == (2, 5, "zero")
    assert names == ["zero"] and counts.tolist() == [5]
    batch = recognizer.embed(recognizer.images(files[:5])).double().sum(0)
    assert torch.allclose(sums[0], batch, atol=1e-5)  # incremental sums = the batch sum
    assert [e[1].sha256 for e in examples] == [f.sha256 for f in files[:5]]
    assert [e[1].source for e in examples] == [str(p) for p in images["class0"][:5]]
    assert meta["fingerprint"] == recognizer.fingerprint and meta["algorithm"] == "protonet"
    assert meta["run_dir"] == str(recognizer.run_dir)


def test_a_file_learned_twice_by_a_class_is_counted_once(recognizer, images, tmp_path):
    a, b = (ImageFile.read(p) for p in images["class1"][:2])
    with open_store(tmp_path / "s.db", recognizer) as store:
        assert recognizer.learn(store, "one", [a, a]).duplicates == [a.name]
        again = recognizer.learn(store, "one", [a, b])
        other = recognizer.learn(store, "two", [a])  # another class may learn the same file
    assert (again.added, again.duplicates, again.count) == ([b.name], [a.name], 2)
    assert other.count == 1


def test_a_new_store_is_calibrated_on_the_validation_classes(recognizer, tmp_path):
    with open_store(tmp_path / "s.db", recognizer, quantile=0.9) as store:
        meta = store.meta
    calibration = meta["calibration"]
    assert meta["threshold"] == calibration["threshold"] > 0
    assert calibration["split"] == "val" and calibration["classes"] == CLASSES["val"]
    assert calibration["shots"] == 5 and calibration["queries"] == 8  # 6 images: 5 + 1
    assert calibration["quantile"] == 0.9 and calibration["known_accepted"] >= 0.875


def test_calibration_threshold_is_the_quantile_of_own_class_distances():
    # Class k: 2x2 images of value 60 k, one pixel plus 0..9: the distance to one's own
    # prototype is small (at most 9^2) and to any other large.
    rng = np.random.default_rng(0)
    images = np.repeat(np.arange(4) * 60, 5)[:, None, None, None] * np.ones((20, 1, 2, 2))
    images[:, 0, 0, 0] += rng.integers(0, 10, size=20)
    dataset = ClassDataset(
        torch.tensor(images, dtype=torch.uint8), [5] * 4, [ClassInfo(f"c{k}") for k in range(4)]
    )

    def embed(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * 255

    def model(classes: int) -> NearestMean:
        return NearestMean(embed, classes)

    result = calibrate(model, dataset, quantile=1.0, shots=2)
    assert (result.classes, result.shots, result.queries) == (4, 2, 12)
    assert result.known_accepted == 1.0 and result.accuracy == 1.0
    assert result.unknown_rejected == 1.0  # every other class is far beyond the threshold
    assert 0 < result.threshold <= 9**2  # the largest possible own-class squared distance
    median = calibrate(model, dataset, quantile=0.5, shots=2)
    assert median.threshold == pytest.approx(result.own_distance["0.5"])
    assert 0.5 <= median.known_accepted < 1.0
    with pytest.raises(ValueError, match="quantile"):
        calibrate(model, dataset, quantile=0)


def test_recognize_answers_unknown_beyond_the_threshold(recognizer, images, tmp_path):
    with open_store(tmp_path / "s.db", recognizer) as store:
        for name in ("class0", "class1"):
            recognizer.learn(store, name, [ImageFile.read(images[name][0])])
        queries = [ImageFile.read(images["class0"][0]), ImageFile.read(images["class2"][0])]
        default = recognizer.recognize(store, queries, top=2)
        never = recognizer.recognize(store, queries, threshold=float("inf"))
        always = recognizer.recognize(store, queries, threshold=-1.0)
    assert default[0].label == "class0" and default[0].distance < 1e-6  # a support image
    assert [c.label for c in default[0].top] == ["class0", "class1"]
    assert sum(c.probability for c in default[0].top) == pytest.approx(1.0, abs=1e-5)
    assert all(not r.unknown and r.label == r.nearest for r in never)
    assert all(r.unknown and r.label is None for r in always)


def test_store_predictions_equal_lifelong_predict(run_dir, images, tmp_path, capsys):
    store = tmp_path / "s.db"
    for name, paths in images.items():
        assert cli(capsys, "learn", run_dir, "--store", store, "--class", name, *paths[:2])[0] == 0
        (tmp_path / "support" / name).mkdir(parents=True)
        for p in paths[:2]:
            (tmp_path / "support" / name / p.name).write_bytes(p.read_bytes())
    queries = [paths[i] for paths in images.values() for i in (2, 3, 4, 5)]
    code, out, _ = cli(capsys, "recognize", "--store", store, *queries, "--json", "--top", "3")
    assert code == 0
    recognized = json.loads(out)["predictions"]
    code, out, _ = cli(capsys, "predict", run_dir, "--support", tmp_path / "support", "--json",
                       "--query", *queries)  # fmt: skip
    predicted = json.loads(out)["predictions"]
    assert code == 0 and len(recognized) == len(predicted) == 12
    for r, p in zip(recognized, predicted, strict=True):
        assert r["file"] == p["path"] and r["nearest"] == p["label"]
        assert r["probability"] == pytest.approx(p["probability"], abs=1e-5)
        assert {c["label"]: c["probability"] for c in r["top"]} == pytest.approx(
            p["probabilities"], abs=1e-5
        )


def test_cli_learn_classes_forget_and_one_line_errors(run_dir, images, tmp_path, capsys):
    store = tmp_path / "s.db"
    code, out, _ = cli(capsys, "learn", run_dir, "--store", store, "--class", "a",
                       images["class0"][0], images["class0"][0])  # fmt: skip
    assert code == 0 and "new store" in out and "learned 1 image of 'a'" in out
    assert "skipped (already learned)" in out
    code, out, _ = cli(capsys, "learn", run_dir, "--store", store, "--class", "b",
                       images["class1"][0].parent, "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["count"] == 6 and not json.loads(out)["new_store"]
    code, out, _ = cli(capsys, "classes", "--store", store)
    assert code == 0 and out.splitlines()[1].split()[:2] == ["a", "1"]
    assert out.splitlines()[2].split()[:2] == ["b", "6"]
    code, out, _ = cli(capsys, "recognize", "--store", store, images["class1"][0])
    assert code == 0 and out.split()[:2] == [str(images["class1"][0]), "b"]
    assert cli(capsys, "forget", "--store", store, "--class", "a")[:2] == (
        0,
        "forgot 'a' (1 examples)\n",
    )
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    for args, message in [
        (["forget", "--store", store, "--class", "a"], "the store has no class 'a'"),
        (["recognize", "--store", store, not_an_image], "notes.txt is not an image"),
        (["learn", run_dir, "--store", store, "--class", " ", images["class0"][1]], "empty"),
        (["classes", "--store", tmp_path / "none.db"], "no store at"),
        (["classes", "--store", not_an_image], "is not a lifelong class store"),
        (["serve", "--store", not_an_image], "is not a lifelong class store"),
        (
            ["recognize", "--store", store, images["class0"][0], "--run", tmp_path],
            "not a lifelong run",
        ),
    ]:
        code, out, err = cli(capsys, *args)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    with ClassStore.open(store) as db:
        assert [(c.name, c.examples) for c in db.classes()] == [("b", 6)]  # nothing written


def test_files_that_are_not_our_stores_are_refused_unchanged(recognizer, tmp_path):
    text = tmp_path / "text.db"
    text.write_text("not a database at all, but long enough to look like a file header....")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    newer = tmp_path / "newer.db"
    open_store(newer, recognizer).close()
    with sqlite3.connect(newer) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    empty = tmp_path / "empty.db"
    empty.touch()
    for path, message in [
        (text, "not a lifelong class store"),
        (other, "not a lifelong class store"),
        (newer, "newer version of lifelong"),
        (empty, "empty file"),
    ]:
        before = path.read_bytes()
        with pytest.raises(StoreError, match=message):
            ClassStore.open(path)
        assert path.read_bytes() == before
    for path in (text, other):
        with pytest.raises(StoreError, match="not a"):
            ClassStore.create(path, {"embedding_dim": 1})


def test_a_store_of_other_weights_is_refused(run_dir, recognizer, tmp_path):
    open_store(tmp_path / "s.db", recognizer).close()
    changed = Recognizer.load(run_dir)
    with torch.no_grad():
        next(changed.learner.algorithm.parameters()).add_(0.01)
    changed = Recognizer(changed.learner)  # fingerprint of the changed weights
    with pytest.raises(StoreError, match="embeddings would not match"):
        open_store(tmp_path / "s.db", changed)


def test_forget_removes_a_class_and_refuses_an_unknown_one(recognizer, images, tmp_path):
    with open_store(tmp_path / "s.db", recognizer) as store:
        recognizer.learn(store, "x", [ImageFile.read(p) for p in images["class0"][:3]])
        recognizer.learn(store, "y", [ImageFile.read(images["class1"][0])])
        with pytest.raises(UnknownClass, match=r"'z'.*'x', 'y'"):
            store.forget("z")
        assert store.forget("x") == 3
        assert [c.name for c in store.classes()] == ["y"] and len(store.examples()) == 1


def test_export_and_import_give_the_same_store(run_dir, recognizer, images, tmp_path):
    with open_store(tmp_path / "s.db", recognizer) as store:
        for name in ("class0", "class2"):
            recognizer.learn(store, name, [ImageFile.read(p) for p in images[name][:3]])
        before = store.statistics(), store.examples(), store.meta
    assert export_store(tmp_path / "s.db", tmp_path / "s.safetensors") == 6
    assert import_store(tmp_path / "s.safetensors", tmp_path / "t.db", run_dir=run_dir) == 6
    with open_store(tmp_path / "t.db", recognizer, create=False) as copy:
        after = copy.statistics(), copy.examples(), copy.meta
    assert after[0][0] == before[0][0]
    for name in ("counts", "sums", "squares", "gram"):
        assert torch.equal(getattr(after[0][1], name), getattr(before[0][1], name))
    assert [(e[0], e[1], e[2]) for e in after[1]] == [(e[0], e[1], e[2]) for e in before[1]]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(after[1], before[1], strict=True))
    assert after[2] == before[2]
    with pytest.raises(StoreError, match="already exists"):
        import_store(tmp_path / "s.safetensors", tmp_path / "t.db")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}      ")
    with pytest.raises(StoreError, match="not an exported class store"):
        import_store(tmp_path / "bad.safetensors", tmp_path / "u.db")
    assert not (tmp_path / "u.db").exists()


def test_two_writers_adding_to_one_class_at_once_both_count(recognizer, tmp_path):
    with open_store(tmp_path / "s.db", recognizer) as store:
        dim = store.meta["embedding_dim"]
    barrier = threading.Barrier(4)

    def writer(w: int) -> None:
        with ClassStore.open(tmp_path / "s.db") as store:
            barrier.wait()
            for i in range(10):
                z = torch.full((1, dim), float(w))
                store.add("shared", z, [ExampleFile(f"w{w}-{i}", sha256=f"w{w}-{i}")])

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(writer, w) for w in range(4)]:
            done.result()
    with ClassStore.open(tmp_path / "s.db") as store:
        _, stats = store.statistics()
        counts, sums = stats.counts, stats.sums
    assert counts.tolist() == [40]
    assert torch.equal(sums[0], torch.full((dim,), 10.0 * (0 + 1 + 2 + 3), dtype=torch.float64))


PAUSED_ADD = """
import sys, time, torch
from lifelong.store import ClassStore, ExampleFile

class PausingConnection:  # pauses ClassStore.add after its last statement, before COMMIT
    def __init__(self, db):
        self.db = db

    def __getattr__(self, name):
        return getattr(self.db, name)

    def execute(self, sql, *args):
        result = self.db.execute(sql, *args)
        if sql.startswith("UPDATE classes"):
            print("inside", flush=True)
            time.sleep(120)
        return result

store = ClassStore.open(sys.argv[1])
store.db = PausingConnection(store.db)
dim = int(store.meta["embedding_dim"])
files = [ExampleFile(f"new{i}.png", f"{i:064x}") for i in range(50)]
store.add("a", torch.ones(50, dim), files)
"""


def test_kill_9_in_the_middle_of_a_write_leaves_a_sound_store(recognizer, images, tmp_path):
    with open_store(tmp_path / "s.db", recognizer) as store:
        recognizer.learn(store, "a", [ImageFile.read(p) for p in images["class0"][:4]])
    writer = subprocess.Popen(
        [sys.executable, "-c", PAUSED_ADD, str(tmp_path / "s.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline() == "inside\n"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    with ClassStore.open(tmp_path / "s.db", timeout=5) as store:
        assert store.integrity() == "ok"
        assert [(c.name, c.examples) for c in store.classes()] == [("a", 4)]
        assert len(store.examples()) == 4
        recognizer.learn(store, "a", [ImageFile.read(images["class0"][4])])  # the lock is free
        assert store.classes()[0].examples == 5
