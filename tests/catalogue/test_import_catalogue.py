"""Bad-input catalogue, `lifelong import`: an exported file edited the way a careless or
hostile sender could, each refused with one line, with no store (nor temporary file) left."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load, save
from test_cli import refused
from test_store import stroke_images, trained_run

from lifelong.store import ImageFile, Recognizer, export_store, open_store


class Raw(str):
    """A metadata entry written as it is (not as JSON)."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of a store of classes ``a`` and ``b``, 3 images each."""
    folder = tmp_path_factory.mktemp("exported")
    run = trained_run(tmp_path_factory.getbasetemp())
    images = stroke_images(folder / "images", classes=2)
    recognizer = Recognizer.load(run)
    with open_store(folder / "s.db", recognizer) as store:
        for name, paths in zip("ab", images.values(), strict=True):
            recognizer.learn(store, name, [ImageFile.read(p) for p in paths[:3]])
    export_store(folder / "s.db", folder / "s.safetensors")
    return folder / "s.safetensors"


def rewrite(source: Path, target: Path, change: Callable[[dict, dict], None]) -> None:
    """``source`` with ``change(entries, tensors)`` applied: ``entries`` are its metadata
    (``format`` a string, the others parsed JSON; a :class:`Raw` value is written as it is)."""
    tensors = load(source.read_bytes())
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
    entries = {k: v if k == "format" else json.loads(v) for k, v in metadata.items()}
    change(entries, tensors)
    text = {
        k: v if k == "format" or isinstance(v, Raw) else json.dumps(v) for k, v in entries.items()
    }
    target.write_bytes(save(tensors, metadata=text))


def first_class(**changes: object) -> Callable[[dict, dict], None]:
    return lambda e, t: e["classes"][0].update(changes)


def first_example(**changes: object) -> Callable[[dict, dict], None]:
    return lambda e, t: e["examples"][0].update(changes)


def meta(**changes: object) -> Callable[[dict, dict], None]:
    return lambda e, t: e["meta"].update(changes)


def tensor(
    name: str, value: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[dict, dict], None]:
    return lambda e, t: t.update({name: value(t[name])})


def scaled(factor: float) -> Callable[[dict, dict], None]:
    """Embeddings times ``factor``, with statistics that agree with them."""

    def change(entries: dict, tensors: dict) -> None:
        tensors["embeddings"] = tensors["embeddings"] * factor
        tensors["sums"] = tensors["sums"] * factor
        tensors["squares"] = tensors["squares"] * factor**2
        tensors["gram"] = tensors["gram"] * factor**2

    return change


CASES = [
    (tensor("embeddings", lambda z: z * float("nan")), "must be finite numbers of magnitude"),
    (tensor("embeddings", lambda z: z + float("inf")), "must be finite numbers of magnitude"),
    (scaled(1e38), "must be finite numbers of magnitude at most 1e+09"),
    (scaled(1e12), "must be finite numbers of magnitude at most 1e+09"),
    (first_class(name=""), "the class name is empty"),
    (first_class(name="   "), "the class name is empty"),
    (first_class(name="x" * 10_000), "the class name is 10000 characters long (at most 200)"),
    (first_class(name="a\x07b"), "contains control characters"),
    (first_class(name="a\nb"), "contains control characters"),
    (first_class(name=" a "), "the class name ' a ' has surrounding spaces"),
    (first_class(name=7), "class 0: name must be a string, got 7"),
    (first_class(name="b"), "holds inconsistent classes or examples"),
    (lambda e, t: e.pop("classes"), "it has no 'classes' entry"),
    (lambda e, t: e.pop("examples"), "it has no 'examples' entry"),
    (lambda e, t: e.pop("meta"), "it has no 'meta' entry"),
    (lambda e, t: e["classes"][0].pop("created"), "class 0 has no 'created'"),
    (lambda e, t: e["classes"][1].pop("updated"), "class 1 has no 'updated'"),
    (first_class(created="yesterday"), "class 0: created must be a finite number"),
    (first_class(created=float("nan")), "class 0: created must be a finite number, got nan"),
    (first_class(updated=True), "class 0: updated must be a finite number, got True"),
    (lambda e, t: e.update(meta=[1, 2]), "meta is a list, expected a dict"),
    (lambda e, t: e.update(classes={"a": 1}), "classes is a dict, expected a list"),
    (lambda e, t: e.update(examples="x"), "examples is a str, expected a list"),
    (lambda e, t: e.update(classes=Raw("[{oops")), "classes is not JSON"),
    (lambda e, t: e.update(meta=Raw("")), "meta is not JSON"),
    (lambda e, t: e["classes"].__setitem__(0, "a"), "class 0 is a str, expected a mapping"),
    (lambda e, t: e["examples"].__setitem__(2, None), "example 2 is a NoneType"),
    (lambda e, t: e["examples"][0].pop("sha256"), "example 0 has no 'sha256'"),
    (first_example(sha256=""), "example 0: sha256 is empty"),
    (first_example(sha256=5), "example 0: sha256 must be a string"),
    (first_example(source=None), "example 0: source must be a string"),
    (first_example(added="now"), "example 0: added must be a finite number"),
    (first_example(added=float("inf")), "example 0: added must be a finite number"),
    (lambda e, t: e["examples"].__setitem__(1, e["examples"][0]), "inconsistent classes"),
    (lambda e, t: e["examples"].pop(), "tensor embeddings is (6, 16), expected (5, 16)"),
    (meta(embedding_dim=0), "meta embedding_dim must be a positive integer, got 0"),
    (meta(embedding_dim="16"), "meta embedding_dim must be a positive integer, got '16'"),
    (meta(embedding_dim=8), "tensor sums is (2, 16), expected (2, 8)"),
    (lambda e, t: e["meta"].pop("embedding_dim"), "meta embedding_dim must be a positive"),
    (meta(image_shape="1x28x28"), "meta image_shape must be a list of positive integers"),
    (meta(image_shape=[1, 0, 28]), "meta image_shape must be a list of positive integers"),
    (meta(image_shape=[1, 14, 14]), "images are (6, 784) torch.uint8, expected (6, 196)"),
    (lambda e, t: e["meta"].pop("run_dir"), "meta run_dir must be a non-empty string"),
    (meta(fingerprint=""), "meta fingerprint must be a non-empty string"),
    (meta(checkpoint="worst"), "meta checkpoint must be best or last, got 'worst'"),
    (meta(threshold="high"), "meta threshold must be a number or null, got 'high'"),
    (meta(threshold=float("nan")), "meta threshold must be a number or null, got nan"),
    (meta(classifier=["mean"]), "meta classifier must be a mapping"),
    (meta(classifier={"name": "nope"}), "unusable classifier"),
    (lambda e, t: e.pop("format"), "is not an exported class store of this version"),
    (lambda e, t: e.update(format="lifelong-store-export/9"), "format 'lifelong-store-export/9'"),
    (tensor("example_class", lambda k: k + 5), "examples refer to classes beyond the 2"),
    (tensor("example_class", lambda k: -k), "examples refer to classes beyond the 2"),
    (tensor("example_class", lambda k: k.float()), "tensor example_class is torch.float32"),
    (tensor("counts", lambda n: n.bool()), "tensor counts is torch.bool, expected integer"),
    (tensor("embeddings", lambda z: z.long()), "tensor embeddings is torch.int64"),
    (tensor("counts", lambda n: n + 1), "class counts do not match the examples"),
    (tensor("sums", lambda s: s + 1), "tensor sums does not match the embeddings"),
    (tensor("squares", lambda s: s * 2), "tensor squares does not match the embeddings"),
    (tensor("gram", lambda g: g[:2]), "tensor gram is missing or of the wrong shape"),
    (lambda e, t: t.pop("sums"), "tensor sums is missing"),
    (lambda e, t: t.pop("embeddings"), "tensor embeddings is missing"),
    (
        tensor("embeddings", lambda z: z[:, :8].contiguous()),
        "tensor embeddings is (6, 8), expected (6, 16)",
    ),
    (tensor("images", lambda x: x[:, :10].contiguous()), "images are (6, 10) torch.uint8"),
    (tensor("images", lambda x: x.float()), "images are (6, 784) torch.float32"),
    (tensor("has_image", lambda h: h.float()), "has_image must say for each example"),
    (lambda e, t: t.pop("has_image"), "has_image must say for each example"),
]
"""Edits of an exported file, and the message each import must give."""


@pytest.mark.parametrize(("change", "message"), CASES)
def test_import_refuses_an_edited_file(change, message, exported, tmp_path, capsys):
    rewrite(exported, tmp_path / "edited.safetensors", change)
    args = ["import", tmp_path / "edited.safetensors", "--store", tmp_path / "new.db"]
    refused(capsys, args, 1, message, (tmp_path,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.safetensors"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not an exported class store"),
        (b"\x08" + b"\x00" * 7 + b"{}      ", "is not an exported class store"),
        (b"not a safetensors file at all", "is not an exported class store"),
        (b"\xff" * 8 + b"{}", "is not an exported class store"),
    ],
)
def test_import_refuses_what_is_not_an_export(content, message, tmp_path, capsys):
    (tmp_path / "f.safetensors").write_bytes(content)
    args = ["import", tmp_path / "f.safetensors", "--store", tmp_path / "new.db"]
    refused(capsys, args, 1, message, (tmp_path,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]


def test_import_refusals_of_the_command(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.db").write_bytes(b"a store already")
    (tmp_path / "folder").mkdir()
    for args, message in [
        (["import", exported, "--store", "s.db"], "'s.db' already exists: import into a new file"),
        (["import", "missing.safetensors", "--store", "n.db"], "No such file or directory"),
        (["import", "folder", "--store", "n.db"], "Is a directory"),
        (["import", exported, "--store", "n.db", "--run", "folder"], "not a lifelong run folder"),
        (["import", exported, "--store", "n.db", "--run", "gone"], "not a lifelong run folder"),
    ]:
        refused(capsys, args, 1, message, (tmp_path, exported))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "s.db"]
