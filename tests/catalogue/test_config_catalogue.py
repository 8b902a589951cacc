"""Bad-input catalogue, settings: `lifelong train` flags, YAML files and dataset options that
must each be refused with exit status 1 (2: a usage error) and one line, before any file of
the run folder is written."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from PIL import Image
from test_cli import TINY_RUN, refused
from test_http_limits import png_chunk

TINY = [a for a in TINY_RUN if a != "--quiet"]
"""A tiny strokes run's flags: the cases that load data load 36 classes of 6 images."""

FLAGS = [
    (["--meta-lr", "nan"], "--meta-lr must be a finite number, got nan"),
    (["--meta-lr", "inf"], "--meta-lr must be a finite number, got inf"),
    (["--inner-lr", "-inf"], "--inner-lr must be a finite number"),
    (["--lr-gamma", "nan"], "--lr-gamma must be a finite number"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number"),
    (["--time-limit", "inf"], "--time-limit must be a finite number"),
    (["--distance-p", "nan"], "--distance-p must be a finite number"),
    (["--temperature", "0"], "--temperature must be positive, got 0.0"),
    (["--meta-lr", "-0.1"], "--meta-lr must be positive"),
    (["--hidden", "[40, 40]"], "--hidden must be whole numbers separated by commas, e.g. 40,40"),
    (["--hidden", "40,,40"], "--hidden must be whole numbers separated by commas"),
    (["--hidden", "40.5"], "--hidden must be whole numbers separated by commas"),
    (["--hidden", "0"], "--hidden must be positive"),
    (["--ways", "0"], "--ways must be positive, got 0"),
    (["--ways", "-1"], "--ways must be positive"),
    (["--shots", "0"], "--shots must be positive"),
    (["--queries", "0"], "--queries must be positive"),
    (["--test-ways", "0"], "--test-ways must be positive"),
    (["--iterations", "0"], "--iterations must be positive"),
    (["--meta-batch", "0"], "--meta-batch must be positive"),
    (["--val-every", "0"], "--val-every must be positive"),
    (["--val-episodes", "0"], "--val-episodes must be positive"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be positive"),
    (["--image-size", "0"], "--image-size must be positive"),
    (["--inner-steps", "-1"], "--inner-steps must be 0 or more"),
    (["--device", "cuda:x"], "--device must be one of auto, cpu, cuda or cuda:INDEX"),
    (["--device", "tpu"], "--device must be one of"),
    (["--lr-schedule", "exponential"], "--lr-schedule must be one of none, cosine, step, linear"),
    (["--train-split", "test"], "--train-split must be one of train, trainval"),
    (["--backbone", "vgg"], "--backbone must be one of conv4, resnet12, mlp"),
    (["--precision", "float8"], "--precision must be one of"),
    (["--distance", "manhattan"], "--distance must be one of"),
    (["--algorithm", "nope"], "unknown algorithm 'nope'"),
    (["--dataset-option", "=5"], "--dataset-option takes KEY=VALUE, got '=5'"),
    (["--dataset-option", "novalue"], "--dataset-option takes KEY=VALUE"),
]
"""Flags refused when the settings are read (no data loaded)."""

WITH_DATA = [
    (["--ways", "1"], "--ways 1: a classification task needs at least 2 classes"),
    (["--ways", "2", "--test-ways", "1"], "--test-ways 1: a classification task needs at least"),
    (
        ["--ways", "1", "--test-ways", "5"],
        "protonet learns nothing from fewer: its loss would be 0",
    ),
    (["--dataset-option", "classes={train: 1, val: 4}"], "split 'train' of strokes has 1 class"),
    (["--dataset-option", "classes=1", "--ways", "1"], "split 'train' of strokes has 1 class"),
    (["--test-ways", "9"], "--test-ways 9 is more than the 8 classes"),
    (["--ways", "21"], "--ways 21 is more than the 20 classes of split 'train'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--strided", "--backbone", "mlp"], "--strided applies to the conv4 backbone only"),
    (["--hidden", "40,40"], "conv4 takes one --hidden value"),
    (["--backbone", "resnet12"], "--hidden applies to the conv4 and mlp backbones"),
    (["--algorithm", "maml", "--distance", "cosine"], "--distance is an option of protonet"),
    (["--algorithm", "oml", "--precision", "bfloat16"], "--precision is an option of"),
    (["--image-size", "8"], "conv4 cannot take 1x8x8 images"),
    (["--dataset-option", "classes=abc"], "classes must be a number of classes or one per split"),
    (["--dataset-option", "classes=[1, 2]"], "classes must be a number of classes or one per"),
    (["--dataset-option", "classes={train: x}"], "classes must be a number of classes or one"),
    (["--dataset-option", "classes=-3"], "cannot make splits of -3 classes: give at least 1"),
    (["--dataset-option", "classes=0"], "cannot make splits of 0 classes"),
    (["--dataset-option", "classes={train: -2, test: 4}"], "a negative number of classes"),
    (["--dataset-option", "classes={train: 0}"], "cannot make splits of no classes"),
    (["--dataset-option", "classes={tset: 5}"], "unknown splits ['tset']"),
    (["--dataset-option", "per_class=0"], "per_class must be >= 1"),
    (["--dataset-option", "per_class=abc"], "per_class must be a whole number, got 'abc'"),
    (["--dataset-option", "seed=1.5"], "seed must be a whole number, got 1.5"),
    (["--dataset-option", "fractions=abc"], "fractions must be 3 non-negative numbers"),
    (
        ["--dataset-option", "classes=30", "--dataset-option", "fractions=[1, -1, 1]"],
        "fractions must be 3 non-negative numbers",
    ),
    (["--dataset-option", "style=3"], "style must be a StrokeStyle"),
    (["--dataset-option", "nosuch=1"], "strokes does not take the option(s) nosuch"),
    (["--dataset", "sinusoid"], "sinusoid tasks are generated: it takes no --dataset-option"),
]
"""Flags over the tiny run's, refused once the data's facts are known."""

YAML = [
    ("- ways\n", "expected a mapping of options, got list"),
    ("ways: [1\n", "is not valid YAML"),
    ("wayz: 5\n", "unknown option 'wayz' (did you mean 'ways'?)"),
    ("meta_lr: .nan\n", "--meta-lr must be a finite number, got nan"),
    ("meta_lr: abc\n", "meta_lr must be a number, got 'abc'"),
    ("ways: five\n", "ways must be an integer, got 'five'"),
    ("ways: null\n", "ways must be given, got null"),
    ("hidden: 40 40\n", "--hidden must be whole numbers separated by commas"),
    ("rotations: maybe\n", "rotations must be true or false"),
    ("dataset_options: [1]\n", "dataset_options must be a mapping"),
    ("iterations: 1.5\n", "iterations must be an integer"),
]
"""Config files (``--config FILE``)."""


@pytest.mark.parametrize(("flags", "message"), FLAGS + WITH_DATA)
def test_bad_flags(flags, message, tmp_path, capsys):
    args = ["train", *TINY, *flags, "--iterations", "1", "--out", tmp_path / "run"]
    if "--iterations" in flags:
        args = ["train", *TINY, *flags, "--out", tmp_path / "run"]
    refused(capsys, args, 1, message, (tmp_path,))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("text", "message"), YAML)
def test_bad_config_files(text, message, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(text)
    args = ["train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run"]
    refused(capsys, args, 1, message, (tmp_path,))


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "--config", "missing.yaml"], 1, "cannot read config file 'missing.yaml'"),
        (["train", "--ways", "x"], 2, "Invalid value for '--ways'"),
        (["train", "--meta-lr", "fast"], 2, "Invalid value for '--meta-lr'"),
        (["train", "--no-such-flag"], 2, "No such option: --no-such-flag"),
        (["train", "--algorithm", "protonet"], 1, "no run folder given: set --out RUN_DIR"),
        (["train", "--resume"], 1, "--resume needs --out RUN_DIR"),
        (["train", "-a", "protonet", "-d", "sinusoid", "-o", "r"], 1, "protonet solves classif"),
    ],
)
def test_bad_train_invocations(args, code, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(capsys, args, code, message, (tmp_path,))
    assert list(Path(tmp_path).iterdir()) == []


FOLDER_RUN = [
    "--algorithm", "protonet", "--dataset", "folder", "--image-size", "12", "--hidden", "8",
    "--shots", "1", "--queries", "1", "--iterations", "1", "--quiet",
]  # fmt: skip
"""A tiny run on a folder dataset (``--data-root`` given by each case)."""


def image_folder(root: Path, classes: int, per_class: int = 3) -> Path:
    """``root/c0/0.png``...: ``classes`` folders of small grey PNGs."""
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (20, 16), 40 * i + k).save(root / f"c{k}" / f"{i}.png")
    return root


def bomb() -> bytes:
    """The header of a 20000x20000 8-bit grey PNG (400 Mpx) and no pixels."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    chunks = [(b"IHDR", header), (b"IDAT", b""), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(*c) for c in chunks)


FOLDERS = [
    ("one-class", ["--ways", "1"], "split 'train' of folder has 1 class: a classification task"),
    ("one-class", ["--ways", "2"], "split 'train' of folder has 1 class"),
    ("bomb", ["--ways", "2"], "c1/9.png is too large: Image size (400000000 pixels) exceeds"),
    ("not-an-image", ["--ways", "2"], "c0/9.png is not an image (in a format Pillow reads)"),
    ("hollow", ["--ways", "2"], "data/c5 holds no images (looked for .bmp"),
    ("missing", ["--ways", "2"], "data does not exist or is not a folder"),
    ("a-file", ["--ways", "2"], "data does not exist or is not a folder"),
]
"""Folder datasets that `lifelong train` must refuse: a folder of one class (with ``--ways 1``,
whose loss would be 0), a 20000x20000 PNG (a decompression bomb), a file that is not an image,
a class folder without images, a folder that does not exist or is a file."""


@pytest.mark.parametrize(("layout", "flags", "message"), FOLDERS)
def test_bad_folder_datasets(layout, flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    if layout == "one-class":
        image_folder(data, classes=1, per_class=6)
    elif layout == "a-file":
        data.write_bytes(bomb())
    elif layout != "missing":
        image_folder(data, classes=5)
    if layout == "bomb":
        (data / "c1" / "9.png").write_bytes(bomb())
    if layout == "not-an-image":
        (data / "c0" / "9.png").write_text("not a PNG, whatever its name says")
    if layout == "hollow":
        (data / "c5").mkdir()
    args = ["train", *FOLDER_RUN, *flags, "--data-root", data, "--out", tmp_path / "run"]
    refused(capsys, args, 1, message, (data,) if data.exists() else ())
    assert not (tmp_path / "run").exists()
