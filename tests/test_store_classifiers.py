"""One rule everywhere: every class model gives the same predictions in the class store, in
``lifelong stream``'s learner and in ``Learner.adapt``/``lifelong predict``; stores keep the
statistics each model needs (exactly, across forget), are calibrated for it, keep the images
that let ``lifelong migrate`` move them to another classifier or run, and a schema-1 store is
migrated in place."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from test_store import cli, stroke_images, trained_run

import lifelong
from lifelong.continual.classifiers.base import ClassStatistics
from lifelong.continual.classifiers.registry import classifier_names
from lifelong.continual.registry import LearnerSettings, make_learner
from lifelong.store import ClassStore, ImageFile, Recognizer, open_store
from lifelong.store.db import SCHEMA_VERSION, StoreError
from lifelong.store.recognizer import migrate_store

CLASSIFIERS = [c for c in classifier_names()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def recognizer(run_dir: Path) -> Recognizer:
    return Recognizer.load(run_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return stroke_images(tmp_path_factory.mktemp("images"), classes=3)


def teach(recognizer: Recognizer, store: ClassStore, images, count: int = 4) -> None:
    """Teach the store each class of ``images`` from its first ``count`` images."""
    for name, paths in images.items():
        recognizer.learn(store, name, [ImageFile.read(p) for p in paths[:count]])


def support_and_queries(images):
    support = {name: paths[:4] for name, paths in images.items()}
    queries = [p for paths in images.values() for p in paths[4:]]
    return support, queries


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_store_stream_and_predict_agree(run_dir, recognizer, images, tmp_path, classifier):
    support, queries = support_and_queries(images)
    names = list(support)
    # the class store
    with open_store(tmp_path / "s.db", recognizer, classifier=classifier) as store:
        for name, paths in support.items():
            recognizer.learn(store, name, [ImageFile.read(p) for p in paths])
        stored = recognizer.recognize(store, [ImageFile.read(p) for p in queries], top=3)
        assert store.classifier["name"] == classifier
    # Learner.adapt / lifelong predict
    learner = lifelong.load(run_dir, classifier=classifier)
    paths = [p for ps in support.values() for p in ps]
    labels = [n for n, ps in support.items() for _ in ps]
    predicted = learner.adapt(paths, labels).predict(queries)
    # the continual learner of lifelong stream, one class after another
    stream = make_learner(
        "prototypes",
        learner.algorithm,
        len(names),
        settings=LearnerSettings(classifier=classifier),
        training=learner._training,
    )
    for k, name in enumerate(names):
        x = learner.preprocess(support[name])
        stream.observe(x, torch.full((len(x),), k))
    streamed = stream.predict(learner.preprocess(queries)).softmax(-1)
    for s, p, q in zip(stored, predicted, streamed, strict=True):
        assert s.nearest == p.label == names[int(q.argmax())]
        assert s.probability == pytest.approx(p.probability, abs=1e-4)
        assert p.probability == pytest.approx(float(q.max()), abs=1e-4)


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_every_classifier_is_calibrated(recognizer, tmp_path, classifier):
    with open_store(tmp_path / "s.db", recognizer, classifier=classifier, quantile=0.9) as store:
        meta = store.meta
    calibration = meta["calibration"]
    assert np.isfinite(meta["threshold"]) and meta["threshold"] == calibration["threshold"]
    assert 0.85 <= calibration["known_accepted"] <= 1.0
    assert calibration["own_distance"]["0.5"] <= meta["threshold"]


def test_statistics_stay_exact_through_learn_and_forget(recognizer, images, tmp_path):
    with open_store(tmp_path / "s.db", recognizer, classifier="cl2n") as store:
        teach(recognizer, store, images)
        store.forget("class1")
        names, stats = store.statistics()
        examples = store.examples()
        features = store.features(torch.stack([e[3] for e in examples]))
    expected = ClassStatistics(len(names), features.shape[1])
    expected.add(features, torch.tensor([names.index(e[0]) for e in examples]))
    assert names == ["class0", "class2"]
    assert torch.equal(stats.counts, expected.counts)
    for name in ("sums", "squares", "gram"):
        assert torch.allclose(getattr(stats, name), getattr(expected, name), atol=1e-9)
    # cl2n statistics are sums of unit vectors
    assert torch.allclose(stats.squares.sum(1), stats.counts.double())


def test_images_are_kept_at_model_size_and_originals_on_request(
    recognizer, images, tmp_path, capsys
):
    path = images["class0"][0]
    with open_store(tmp_path / "s.db", recognizer) as store:
        recognizer.learn(store, "a", [ImageFile.read(path)])
        recognizer.learn(store, "b", [ImageFile.read(images["class1"][0])], keep_originals=True)
        a, b = (e[1] for e in store.examples())
    shape = recognizer.learner.facts.image_shape
    assert len(a.image) == int(np.prod(shape)) and a.original is None
    assert b.original == images["class1"][0].read_bytes()
    kept = torch.frombuffer(bytearray(a.image), dtype=torch.uint8).reshape(shape)
    assert torch.equal(kept.float() / 255, recognizer.images([ImageFile.read(path)])[0])
    code, _, err = cli(
        capsys, "learn", recognizer.run_dir, path, "--store", tmp_path / "t.db",
        "--class", "x", "--keep-originals", "--classifier", "slda",
    )  # fmt: skip
    assert code == 0, err
    with ClassStore.open(tmp_path / "t.db") as store:
        assert store.examples()[0][1].original == path.read_bytes()
        assert store.classifier["name"] == "slda"


def test_a_store_refuses_another_classifier_and_migrate_changes_it(
    recognizer, images, tmp_path, capsys
):
    store_path = tmp_path / "s.db"
    with open_store(store_path, recognizer, classifier="mean") as store:
        teach(recognizer, store, images)
    code, _, err = cli(
        capsys, "learn", recognizer.run_dir, images["class0"][5], "--store", store_path,
        "--class", "class0", "--classifier", "gaussian",
    )  # fmt: skip
    assert code == 1 and "keeps the statistics of the mean classifier" in err
    assert "lifelong migrate --store" in err
    code, out, err = cli(capsys, "migrate", "--store", store_path, "--classifier", "gaussian")
    assert code == 0, err
    assert "classifier gaussian (3 classes)" in out
    queries = [ImageFile.read(p) for paths in images.values() for p in paths[4:]]
    with ClassStore.open(store_path) as store:
        migrated = recognizer.recognize(store, queries)
        assert store.meta["calibration"]["threshold"] == store.meta["threshold"]
    with open_store(tmp_path / "fresh.db", recognizer, classifier="gaussian") as fresh:
        teach(recognizer, fresh, images)
        expected = recognizer.recognize(fresh, queries)
    for m, e in zip(migrated, expected, strict=True):
        assert m.nearest == e.nearest and m.probability == pytest.approx(e.probability, abs=1e-6)
    code, _, err = cli(capsys, "migrate", "--store", store_path)
    assert code == 1 and "migrate needs --run NEW_RUN, --classifier NAME or both" in err


def test_migrate_to_a_newer_run_re_embeds_the_kept_images(run_dir, images, tmp_path):
    newer = trained_run(tmp_path, seed=1)
    old = Recognizer.load(run_dir)
    store_path = tmp_path / "s.db"
    with open_store(store_path, old, classifier="slda") as store:
        teach(old, store, images)
    report = migrate_store(store_path, newer)
    assert "3 classes, 12 examples re-embedded" in report and "classifier slda" in report
    new = Recognizer.load(newer)
    queries = [ImageFile.read(p) for paths in images.values() for p in paths[4:]]
    with open_store(store_path, new, create=False) as store:
        migrated = new.recognize(store, queries)
        assert store.meta["fingerprint"] == new.fingerprint
    with open_store(tmp_path / "fresh.db", new, classifier="slda") as fresh:
        teach(new, fresh, images)
        expected = new.recognize(fresh, queries)
    for m, e in zip(migrated, expected, strict=True):
        assert m.nearest == e.nearest and m.probability == pytest.approx(e.probability, abs=1e-5)


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, count INTEGER NOT NULL,
    sum BLOB NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE examples (id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL REFERENCES classes(id),
    sha256 TEXT NOT NULL, source TEXT NOT NULL, added REAL NOT NULL, embedding BLOB NOT NULL,
    UNIQUE (class_id, sha256));
"""


def schema_1_store(path: Path, recognizer: Recognizer, images) -> None:
    """A store as lifelong wrote it before class models: sums only, no images."""
    with open_store(path.with_name("template.db"), recognizer) as template:
        meta = template.meta
    del meta["classifier"]
    meta.update(distance="sqeuclidean", p=2.0, temperature=1.0)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    for k, (name, paths) in enumerate(images.items()):
        z = recognizer.embed(recognizer.images([ImageFile.read(p) for p in paths[:4]]))
        db.execute(
            "INSERT INTO classes VALUES (?, ?, ?, ?, 0, 0)",
            (k + 1, name, len(z), z.double().sum(0).numpy().astype("<f8").tobytes()),
        )
        db.executemany(
            "INSERT INTO examples (class_id, sha256, source, added, embedding) VALUES (?,?,?,0,?)",
            [(k + 1, f"{name}{i}", f"{name}{i}.png", v.numpy().astype("<f4").tobytes())
             for i, v in enumerate(z)],
        )  # fmt: skip
    db.execute("PRAGMA application_id=0x4C4C5354")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()


def test_a_schema_1_store_is_migrated_in_place(recognizer, images, tmp_path):
    path = tmp_path / "old.db"
    schema_1_store(path, recognizer, images)
    with ClassStore.open(path) as store:
        names, stats = store.statistics()
        embeddings = torch.stack([e[3] for e in store.examples()])
        classifier, threshold = store.classifier, store.meta["threshold"]
        queries = [ImageFile.read(p) for p in images["class2"][4:]]
        answers = recognizer.recognize(store, queries)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert names == list(images) and classifier["name"] == "mean"
    assert classifier["temperature"] == 1.0 and threshold is not None
    z = embeddings.double()
    assert torch.allclose(stats.gram, z.T @ z) and torch.allclose(
        stats.squares.sum(0), (z * z).sum(0)
    )
    assert all(a.nearest == "class2" for a in answers)
    with pytest.raises(StoreError, match="learned before stores kept images"):
        migrate_store(path, recognizer.run_dir)


def test_a_schema_1_store_that_cannot_be_migrated_is_refused_unchanged(
    recognizer, images, tmp_path
):
    path = tmp_path / "old.db"
    schema_1_store(path, recognizer, images)
    before = path.read_bytes()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process is writing and holds the lock
    try:
        with pytest.raises(StoreError, match=r"could not be migrated .* left unchanged"):
            ClassStore.open(path, timeout=0.2)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert path.read_bytes() == before


def test_the_fitted_model_is_kept_until_the_store_changes(recognizer, images, tmp_path):
    path = tmp_path / "s.db"
    with open_store(path, recognizer) as store:
        recognizer.learn(store, "a", [ImageFile.read(p) for p in images["class0"][:3]])
        first = recognizer.model(store)[1]
        assert recognizer.model(store)[1] is first  # nothing changed: the same fitted model
    with ClassStore.open(path) as other:  # another connection (another process) writes
        recognizer.learn(other, "b", [ImageFile.read(p) for p in images["class1"][:3]])
    with ClassStore.open(path) as store:
        names, model = recognizer.model(store)
        assert names == ["a", "b"] and model is not first
        store.forget("a")
        assert recognizer.model(store)[0] == ["b"]
    replaced = tmp_path / "t.db"
    with open_store(replaced, recognizer) as store:  # another file, also at one write
        recognizer.learn(store, "c", [ImageFile.read(p) for p in images["class2"][:3]])
    replaced.replace(path)
    with ClassStore.open(path) as store:
        assert recognizer.model(store)[0] == ["c"]
