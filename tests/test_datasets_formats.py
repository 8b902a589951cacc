"""Folder, miniImageNet (CSV and pickle layouts), CIFAR-FS/FC100, the registry and the cache,
on small fake data written by the tests."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lifelong.data.cache import cache_dir, cached
from lifelong.data.cifar import CIFAR_FS_SPLITS, FC100_SPLITS, load_cifar
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.folder import load_folder, split_sizes
from lifelong.data.images import ImageDecodeError
from lifelong.data.miniimagenet import PICKLE, load_miniimagenet
from lifelong.data.registry import DATASETS, cached_datasets, download_dataset, load_dataset
from lifelong.data.safe_pickle import UnsafePickleError, safe_load


def save_image(path: Path, value: int, mode: str = "L", size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)


# ---------------------------------------------------------------- folder
def class_folders(root: Path, n_classes: int, per_class: int = 3) -> Path:
    for k in range(n_classes):
        for i in range(per_class):
            save_image(root / f"class{k}" / f"{i}.png", 10 * k + i)
    (root / "class0" / "notes.txt").write_text("ignored")
    return root


def test_folder_seeded_split_grayscale(tmp_path):
    root = class_folders(tmp_path / "letters", 8)
    splits = load_folder(root, 6, splits=(0.5, 0.25, 0.25), seed=3, cache_dir=tmp_path / "c")
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert (
        splits["train"].image_shape == (1, 6, 6) and splits["train"].name == "folder/letters/train"
    )
    names = [c.name for ds in splits.values() for c in ds.classes]
    assert sorted(names) == [f"class{k}" for k in range(8)]
    k = int(splits["test"].classes[0].name.removeprefix("class"))
    assert torch.all(splits["test"][0][1] == 10 * k + 1)  # a flat image stays flat
    again = load_folder(root, 6, splits=(4, 2, -1), seed=3, cache_dir=tmp_path / "c")
    assert [c.name for c in again["test"].classes] == [c.name for c in splits["test"].classes]


def test_folder_predefined_splits_and_colour(tmp_path):
    save_image(tmp_path / "train/cat/a.jpg", 100, "RGB")
    save_image(tmp_path / "train/cat/b.png", 50)
    save_image(tmp_path / "train/dog/a.png", 60)
    save_image(tmp_path / "test/fox/a.bmp", 70)
    splits = load_folder(tmp_path, (8, 5), cache_dir=tmp_path / "c")
    assert sorted(splits) == ["test", "train"]
    assert [c.name for c in splits["train"].classes] == ["cat", "dog"]
    assert splits["test"].image_shape == (3, 8, 5)  # one colour image makes all RGB
    assert torch.all(splits["train"][1] == 60)  # gray replicated into R, G, B
    gray = load_folder(tmp_path, 8, channels=1, cache_dir=tmp_path / "c")
    assert gray["train"].image_shape == (1, 8, 8)


def test_folder_errors_name_the_culprit(tmp_path):
    root = class_folders(tmp_path / "r", 3)
    (root / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageDecodeError, match=r"class1/broken\.png"):
        load_folder(root, 8, cache_dir=tmp_path / "c")
    (root / "class1" / "broken.png").unlink()
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty holds no images"):
        load_folder(root, 8, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "absent", 8)
    with pytest.raises(ValueError, match="sum to 1"):
        split_sizes(10, (0.5, 0.5, 0.5))


# ---------------------------------------------------------------- miniImageNet
SMALL_SPLITS = {"train": ["n01", "n02"], "val": ["n03"], "test": ["n04", "n05"]}


def mini_csv(root: Path) -> Path:
    for split, labels in SMALL_SPLITS.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for label in labels:
                for i in range(3):
                    name = f"{label}{i:08d}.jpg"
                    save_image(root / "images" / name, 40 * int(label[1:]), "RGB", (100, 90))
                    writer.writerow([name, label])
    return root


def mini_arrays() -> dict[str, dict]:
    rng = np.random.default_rng(0)
    out = {}
    for split, labels in SMALL_SPLITS.items():
        images = rng.integers(0, 256, (3 * len(labels), 84, 84, 3), dtype=np.uint8)
        class_dict = {
            label: [i * len(labels) + k for i in range(3)] for k, label in enumerate(labels)
        }
        out[split] = {"image_data": images, "class_dict": class_dict}
    return out


def test_miniimagenet_csv_layout(tmp_path):
    with pytest.warns(UserWarning, match="not the Ravi & Larochelle"):
        splits = load_miniimagenet(mini_csv(tmp_path), image_size=20, cache_dir=tmp_path / "c")
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 1, "test": 2}
    assert splits["test"].image_shape == (3, 20, 20) and splits["test"].name == "miniimagenet/test"
    assert [c.name for c in splits["test"].classes] == ["n04", "n05"]
    red = splits["test"][1][:, 0].int()  # n05's red channel: 200, up to JPEG rounding
    assert int(red.min()) >= 198 and int(red.max()) <= 202


def test_miniimagenet_pickle_layout(tmp_path):
    arrays = mini_arrays()
    for split, data in arrays.items():
        (tmp_path / PICKLE.format(split)).write_bytes(pickle.dumps(data, protocol=4))
    with pytest.warns(UserWarning, match="not the Ravi & Larochelle"):
        splits = load_miniimagenet(tmp_path, cache_dir=tmp_path / "c")
    data = arrays["train"]
    expected = torch.from_numpy(data["image_data"][data["class_dict"]["n02"]]).permute(0, 3, 1, 2)
    assert splits["train"].image_shape == (3, 84, 84)
    assert torch.equal(splits["train"][1], expected)


def test_miniimagenet_refuses_code_in_pickles_and_explains_missing_files(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for split in SMALL_SPLITS:
        (tmp_path / PICKLE.format(split)).write_bytes(pickle.dumps({"image_data": Exploit()}))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|os)\.system"):
        load_miniimagenet(tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="cannot be downloaded") as err:
        load_miniimagenet(tmp_path / "none", cache_dir=tmp_path / "c")
    assert "train.csv" in str(err.value) and "mini-imagenet-cache-train.pkl" in str(err.value)


def test_safe_load_reads_numpy_1_and_2_pickles():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        data = pickle.dumps({"a": array, "b": [1, "x"]}, protocol=protocol)
        assert np.array_equal(safe_load(data)["a"], array)
    numpy1 = pickle.dumps(array, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in numpy1
    assert np.array_equal(safe_load(numpy1, name="old.pkl"), array)
    with pytest.raises(pickle.UnpicklingError, match=r"old\.pkl: not a readable pickle"):
        safe_load(numpy1[:20], name="old.pkl")


# ---------------------------------------------------------------- CIFAR-FS and FC100
FINE = sorted(name for names in CIFAR_FS_SPLITS.values() for name in names)
COARSE = sorted(name for names in FC100_SPLITS.values() for name in names)


def cifar_batch(labels: list[int]) -> dict:
    """Images whose red plane is the fine label, green 100 + label, blue 200."""
    data = np.empty((len(labels), 3, 1024), dtype=np.uint8)
    data[:, 0] = np.asarray(labels)[:, None]
    data[:, 1] = 100 + np.asarray(labels)[:, None]
    data[:, 2] = 200
    return {
        "batch_label": "fake",
        "filenames": [f"{i}.png" for i in range(len(labels))],
        "fine_labels": labels,
        "coarse_labels": [k // 5 for k in labels],
        "data": data.reshape(len(labels), 3072),
    }


def cifar_archive(folder: Path) -> Path:
    """A small cifar-100-python.tar.gz with the official structure: 2 train and 1 test images
    per class (the real one has 500 and 100)."""
    members = {
        "meta": {"fine_label_names": FINE, "coarse_label_names": COARSE},
        "train": cifar_batch(list(range(100)) * 2),
        "test": cifar_batch(list(range(100))[::-1]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "cifar-100-python.tar.gz", "w:gz") as tf:
        for name, content in members.items():
            data = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return folder


def test_cifar_fs_split(tmp_path):
    splits = load_cifar("cifar-fs", cifar_archive(tmp_path / "d"), cache_dir=tmp_path / "c")
    assert {k: len(v) for k, v in splits.items()} == {"train": 64, "val": 16, "test": 20}
    for split, ds in splits.items():
        assert [c.name for c in ds.classes] == sorted(CIFAR_FS_SPLITS[split])
        assert ds.image_shape == (3, 32, 32) and torch.all(ds.counts == 3)
    k = FINE.index("whale")
    whale = splits["test"][splits["test"].classes.index(ClassInfo("whale", COARSE[k // 5]))]
    assert torch.all(whale[:, 0] == k) and torch.all(whale[:, 1] == 100 + k)
    assert torch.all(whale[:, 2] == 200)


def test_fc100_split_by_superclass_and_resize(tmp_path):
    root = cifar_archive(tmp_path / "d")
    splits = load_cifar("fc100", root, image_size=16, cache_dir=tmp_path / "c")
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "val": 20, "test": 20}
    for split, ds in splits.items():
        assert {c.group for c in ds.classes} == set(FC100_SPLITS[split])
        assert ds.image_shape == (3, 16, 16) and ds.name == f"fc100/{split}"
    fs = load_cifar("cifar-fs", root, cache_dir=tmp_path / "c")
    assert len(fs["train"]) == 64


def test_cifar_extracted_folder_and_missing_archive(tmp_path):
    root = cifar_archive(tmp_path / "d")
    with tarfile.open(root / "cifar-100-python.tar.gz") as tf:
        tf.extractall(tmp_path / "x", filter="data")
    a = load_cifar("fc100", root, cache_dir=tmp_path / "c")
    b = load_cifar("fc100", tmp_path / "x", cache_dir=tmp_path / "c")
    assert torch.equal(a["val"].images, b["val"].images)
    with pytest.raises(FileNotFoundError, match="lifelong download cifar-fs"):
        load_cifar("cifar-fs", tmp_path / "none", cache_dir=tmp_path / "c")


# ---------------------------------------------------------------- registry and cache
def test_registry_loads_and_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    assert set(DATASETS) >= {"omniglot", "miniimagenet", "cifar-fs", "fc100", "folder"}
    assert DATASETS["omniglot"].downloadable and not DATASETS["miniimagenet"].downloadable
    root = class_folders(tmp_path / "r", 5)
    splits = load_dataset("folder", root=root, image_size=8, splits=(3, 1, 1))
    assert isinstance(splits["train"], ClassDataset) and len(splits["train"]) == 3
    cached_now = cached_datasets()
    assert list(cached_now) == ["folder"] and cached_now["folder"][0].bytes > 0
    with pytest.raises(ValueError, match="does not take the option"):
        load_dataset("folder", root=root, image_size=8, rotations=True)
    with pytest.raises(ValueError, match="needs `data_root` DIR"):
        load_dataset("folder", image_size=8)
    with pytest.raises(ValueError, match="not a class dataset"):
        load_dataset("sinusoid")
    with pytest.raises(ValueError, match="cannot be downloaded: ImageNet"):
        download_dataset("miniimagenet")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def toy_build(calls: list[int]) -> dict[str, ClassDataset]:
    calls.append(1)
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 1, 3, 4)
    return {"all": ClassDataset(images, [1, 1], [ClassInfo("a", "g"), ClassInfo("b", "g", 90)])}


def test_cache_round_trip_and_corrupt_entries(tmp_path):
    calls: list[int] = []
    first = cached("toy", "src", {"size": 3}, lambda: toy_build(calls), tmp_path)
    second = cached("toy", "src", {"size": 3}, lambda: toy_build(calls), tmp_path)
    assert len(calls) == 1
    assert torch.equal(first["all"].images, second["all"].images)
    assert second["all"].classes == [ClassInfo("a", "g"), ClassInfo("b", "g", 90)]
    cached("toy", "src", {"size": 4}, lambda: toy_build(calls), tmp_path)
    assert len(calls) == 2  # other settings, other entry
    metas = {json.loads(p.read_text())["settings"]["size"]: p for p in tmp_path.glob("*/*.json")}
    metas[3].write_text("{ truncated")
    with pytest.warns(UserWarning, match="ignoring unreadable cache entry"):
        cached("toy", "src", {"size": 3}, lambda: toy_build(calls), tmp_path)
    assert len(calls) == 3
    assert not list((tmp_path / "tensors").glob("*.tmp"))


def test_miniimagenet_class_in_two_splits_is_an_error(tmp_path):
    mini_csv(tmp_path)
    with open(tmp_path / "val.csv", "a", newline="") as f:
        csv.writer(f).writerow(["n01" + "0" * 8 + ".jpg", "n01"])
    with pytest.raises(ValueError, match="class n01 is in both train and val"):
        load_miniimagenet(tmp_path, image_size=8, cache_dir=tmp_path / "c")
