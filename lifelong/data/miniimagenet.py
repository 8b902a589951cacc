"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle 2017.

100 ImageNet classes of 600 images each, split into 64 train, 16 val and 20 test classes, at
84x84 RGB. ImageNet's terms require a login, so nothing is downloaded: put the files in a
folder, in either of the two layouts the split is commonly distributed in:

(a) ``images/`` plus ``train.csv``, ``val.csv``, ``test.csv`` with columns ``filename,label``
    (Ravi & Larochelle's split files; images of any size, resized with LANCZOS);
(b) ``mini-imagenet-cache-{train,val,test}.pkl``: pickled dicts with ``image_data``, ``uint8``
    ``[N, 84, 84, 3]``, and ``class_dict``, ``{label: [indices into image_data]}``. They are
    read with :func:`lifelong.data.safe_pickle.safe_load`, which refuses anything but numpy
    arrays and builtin containers.

Example:
    >>> splits = load_miniimagenet("/data/miniimagenet")  # doctest: +SKIP
    >>> splits["train"]
    ClassDataset('miniimagenet/train', classes=64, images=38400, shape=3x84x84)
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import torch

from lifelong.data.cache import cached, downloads_dir, files_fingerprint
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.images import decode_classes, resize_batch
from lifelong.data.safe_pickle import safe_load

SPLITS = ("train", "val", "test")
#: Classes per split and images per class of the Ravi & Larochelle split.
EXPECTED_CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 600
PICKLE = "mini-imagenet-cache-{}.pkl"


def _layout(folder: Path) -> str | None:
    if (folder / "images").is_dir() and all((folder / f"{s}.csv").is_file() for s in SPLITS):
        return "csv"
    if all((folder / PICKLE.format(s)).is_file() for s in SPLITS):
        return "pickle"
    return None


def _not_found(folder: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"miniImageNet not found in {folder}. It cannot be downloaded automatically (its "
        "images come from ImageNet, whose terms need a login). Put into that folder either "
        "(a) images/ together with train.csv, val.csv and test.csv (Ravi & Larochelle's split, "
        f"columns filename,label) or (b) {PICKLE.format('train')}, {PICKLE.format('val')} and "
        f"{PICKLE.format('test')}; or pass `--data-root DIR` (Python: "
        "load_miniimagenet(root=DIR)) pointing to such a folder."
    )


def _read_csv(path: Path, images: Path) -> dict[str, list[Path]]:
    """``{label: [image paths]}`` from a ``filename,label`` split file."""
    by_label: dict[str, list[Path]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(
                f"{path}: expected the columns filename,label, got {reader.fieldnames}"
            )
        for row in reader:
            file = images / row["filename"]
            if not file.is_file():
                raise FileNotFoundError(f"{file} (listed in {path}) does not exist")
            by_label.setdefault(row["label"], []).append(file)
    return dict(sorted(by_label.items()))


def _from_csv(folder: Path, image_size: int) -> dict[str, ClassDataset]:
    out = {}
    for s in SPLITS:
        by_label = _read_csv(folder / f"{s}.csv", folder / "images")
        infos = [ClassInfo(label) for label in by_label]
        out[s] = decode_classes(
            list(by_label.values()), infos, image_size, 3, name=f"miniimagenet/{s}"
        )
    return out


def _from_pickle(folder: Path, image_size: int) -> dict[str, ClassDataset]:
    out = {}
    for s in SPLITS:
        path = folder / PICKLE.format(s)
        data = safe_load(path)
        images = data.get("image_data") if isinstance(data, dict) else None
        class_dict = data.get("class_dict") if isinstance(data, dict) else None
        if not (
            isinstance(images, np.ndarray)
            and images.dtype == np.uint8
            and images.ndim == 4
            and images.shape[-1] == 3
            and isinstance(class_dict, dict)
        ):
            raise ValueError(
                f"{path}: expected a dict with 'image_data' (uint8 [N, H, W, 3]) and "
                "'class_dict' ({label: [indices]})"
            )
        labels = sorted(class_dict)
        order = np.concatenate([np.asarray(class_dict[label], dtype=np.int64) for label in labels])
        if order.size and (order.min() < 0 or order.max() >= len(images)):
            raise ValueError(f"{path}: class_dict indices outside 0..{len(images) - 1}")
        out[s] = ClassDataset(
            resize_batch(images[order], image_size),
            torch.tensor([len(class_dict[label]) for label in labels]),
            [ClassInfo(str(label)) for label in labels],
            f"miniimagenet/{s}",
        )
    return out


def _check(splits: dict[str, ClassDataset], folder: Path) -> None:
    """Overlapping splits are an error; a split other than Ravi & Larochelle's a warning."""
    seen: dict[str, str] = {}
    for s, ds in splits.items():
        for c in ds.classes:
            if c.name in seen:
                raise ValueError(f"{folder}: class {c.name} is in both {seen[c.name]} and {s}")
            seen[c.name] = s
    got = {s: len(ds) for s, ds in splits.items()}
    uneven = [
        f"{c.name} ({n})"
        for ds in splits.values()
        for c, n in zip(ds.classes, ds.counts.tolist(), strict=True)
        if n != IMAGES_PER_CLASS
    ]
    if got != EXPECTED_CLASSES or uneven:
        warnings.warn(
            f"{folder} is not the Ravi & Larochelle miniImageNet split: classes per split "
            f"{got} (expected {EXPECTED_CLASSES}), classes without {IMAGES_PER_CLASS} "
            f"images: {', '.join(uneven[:3]) or 'none'}",
            stacklevel=3,
        )


def load_miniimagenet(
    root: str | Path | None = None, image_size: int = 84, cache_dir: str | Path | None = None
) -> dict[str, ClassDataset]:
    """miniImageNet as ``train``/``val``/``test`` class datasets (see the module docstring).

    Args:
        root: the folder with layout (a) or (b); default: the cache's
            ``downloads/miniimagenet``, where you may put the files.
        image_size: side of the square RGB images (LANCZOS resampling when it is not 84).
        cache_dir: where decoded tensors are cached.

    Raises:
        FileNotFoundError: the files are missing (the message says where to put them), or an
            image listed in a CSV file does not exist.
        ValueError: malformed CSV or pickle files, or a class in two splits.
        UnsafePickleError: a pickle that references anything but numpy arrays.
        ImageDecodeError: an unreadable image, named in the message.
    """
    folder = (
        Path(root).expanduser() if root is not None else downloads_dir("miniimagenet", cache_dir)
    )
    layout = _layout(folder)
    if layout is None:
        raise _not_found(folder)
    if layout == "csv":
        sources = [folder / f"{s}.csv" for s in SPLITS] + sorted((folder / "images").iterdir())
        build = _from_csv
    else:
        sources = [folder / PICKLE.format(s) for s in SPLITS]
        build = _from_pickle
    splits = cached(
        "miniimagenet",
        files_fingerprint(sources, folder),
        {"image_size": image_size, "layout": layout},
        lambda: build(folder, image_size),
        cache_dir,
        origin=str(folder),
    )
    _check(splits, folder)
    return splits
