"""CIFAR-FS and FC100: few-shot splits of CIFAR-100's 100 classes (600 32x32 images each).

- **CIFAR-FS** (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form
  solvers"): a random split of the fine classes into 64 train, 16 val and 20 test classes.
- **FC100** (Oreshkin et al. 2018, "TADAM: Task dependent adaptive metric for improved few-shot
  learning"): a split by superclass, 12/4/4 superclasses = 60/20/20 fine classes, so that
  train and test classes are semantically far apart.

Both are built from the official archive ``cifar-100-python.tar.gz`` (Krizhevsky 2009), read in
place (its train and test images together: 600 per class). Its members are pickles, read with
:func:`lifelong.data.safe_pickle.safe_load`. ClassInfo names are fine classes, groups their
superclasses.

Example:
    >>> splits = load_cifar("fc100", root="/data/cifar", download=True)  # doctest: +SKIP
    >>> splits["test"]
    ClassDataset('fc100/test', classes=20, images=12000, shape=3x32x32)
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.data.cache import cached, downloads_dir, files_fingerprint
from lifelong.data.classes import ClassDataset, ClassInfo
from lifelong.data.download import download
from lifelong.data.images import resize_batch
from lifelong.data.safe_pickle import safe_load

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"

# CIFAR-FS fine classes of each split, as published with Bertinetto et al. 2019 and shipped
# by torchmeta (github.com/tristandeleu/pytorch-meta,
# torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json); val and test checked
# against a second public copy of the lists.
CIFAR_FS_SPLITS = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can",
        "castle", "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup",
        "dinosaur", "dolphin", "elephant", "forest", "girl", "hamster", "house", "kangaroo",
        "keyboard", "lawn_mower", "lion", "lizard", "lobster", "mountain", "mouse", "mushroom",
        "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate", "porcupine",
        "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper",
        "snake", "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train",
        "trout", "tulip", "turtle", "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish",
        "lamp", "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
        "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe",
        "whale", "woman", "worm",
    ),
}  # fmt: skip

# FC100 superclasses of each split (Oreshkin et al. 2018: superclass indices 1-6, 9, 10, 15,
# 17-19 / 8, 11, 13, 16 / 0, 7, 12, 14), as in torchmeta's
# torchmeta/datasets/assets/cifar100/fc100/*.json.
FC100_SPLITS = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables",
        "household_electrical_devices", "household_furniture", "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes", "reptiles", "trees", "vehicles_1", "vehicles_2",
    ),
    "val": (
        "large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
        "small_mammals",
    ),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip

#: For each variant: which ClassInfo field the split lists name, and the lists.
VARIANTS: dict[str, tuple[Callable[[ClassInfo], str], dict[str, tuple[str, ...]]]] = {
    "cifar-fs": (lambda c: c.name, CIFAR_FS_SPLITS),
    "fc100": (lambda c: c.group, FC100_SPLITS),
}


def download_cifar100(
    folder: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Fetch the official CIFAR-100 python archive (md5-checked, about 160 MB) into ``folder``
    (default: the cache's ``downloads/cifar100``); returns the folder."""
    folder = Path(folder).expanduser() if folder else downloads_dir("cifar100", cache_dir)
    download(URL, folder / ARCHIVE, md5=MD5)
    return folder


@contextmanager
def _members(folder: Path) -> Iterator[Callable[[str], Any]]:
    """Yields a function unpickling a member (``train``, ``test``, ``meta``) of the archive,
    read in place, or of the extracted folder."""
    archive = folder / ARCHIVE
    if not archive.is_file():
        yield lambda member: safe_load(folder / FOLDER / member, encoding="latin1")
        return
    with tarfile.open(archive) as tf:

        def read(member: str) -> Any:
            try:
                f = tf.extractfile(f"{FOLDER}/{member}")
            except KeyError:
                f = None
            if f is None:
                raise ValueError(f"{archive} has no file {FOLDER}/{member}")
            return safe_load(f, f"{archive}:{FOLDER}/{member}", encoding="latin1")

        yield read


def _decode(folder: Path, image_size: int) -> dict[str, ClassDataset]:
    """All 100 classes (train and test images), sorted by fine class name."""
    with _members(folder) as read:
        meta = read("meta")
        parts = [read("train"), read("test")]
    fine_names, coarse_names = meta["fine_label_names"], meta["coarse_label_names"]
    data = np.concatenate([p["data"] for p in parts])
    fine = np.concatenate([np.asarray(p["fine_labels"]) for p in parts])
    coarse = np.concatenate([np.asarray(p["coarse_labels"]) for p in parts])
    if data.dtype != np.uint8 or data.shape[1:] != (3 * 32 * 32,) or len(fine) != len(data):
        raise ValueError(f"{folder}: CIFAR-100 data of unexpected type {data.dtype} {data.shape}")
    infos, counts, order = [], [], []
    for k in sorted(range(len(fine_names)), key=fine_names.__getitem__):
        members = np.flatnonzero(fine == k)
        if members.size == 0:
            continue
        infos.append(ClassInfo(fine_names[k], group=coarse_names[int(coarse[members[0]])]))
        counts.append(members.size)
        order.append(members)
    images = data[np.concatenate(order)].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    images = resize_batch(images, image_size)
    return {"all": ClassDataset(images, torch.tensor(counts), infos, "cifar100")}


def load_cifar(
    variant: str,
    root: str | Path | None = None,
    image_size: int = 32,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, ClassDataset]:
    """CIFAR-FS (``variant="cifar-fs"``) or FC100 (``"fc100"``) as ``train``/``val``/``test``.

    Args:
        variant: ``"cifar-fs"`` or ``"fc100"``.
        root: a folder holding ``cifar-100-python.tar.gz`` or the extracted
            ``cifar-100-python/`` folder; default: the cache's ``downloads/cifar100``.
        image_size: side of the square RGB images (LANCZOS resampling when it is not 32).
        download: fetch the official archive into ``root`` when it is missing.
        cache_dir: where decoded tensors are cached.

    Raises:
        FileNotFoundError: the archive is missing; the message says how to get it.
        ValueError: an unknown variant, or an archive lacking classes of the split.
        UnsafePickleError: an archive member that is not plain numpy/builtin data.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown CIFAR variant {variant!r}; choose one of {sorted(VARIANTS)}")
    folder = Path(root).expanduser() if root is not None else downloads_dir("cifar100", cache_dir)

    def present() -> bool:
        return (folder / ARCHIVE).is_file() or (folder / FOLDER).is_dir()

    if download and not present():
        download_cifar100(folder)
    if not present():
        raise FileNotFoundError(
            f"CIFAR-100 not found in {folder}: neither {ARCHIVE} nor {FOLDER}/. Run "
            f"`lifelong download {variant}` to fetch the official archive (about 160 MB) into "
            f"{downloads_dir('cifar100', cache_dir)}, or pass `--data-root DIR` (Python: "
            f"load_dataset('{variant}', root=DIR)) with DIR holding {ARCHIVE}."
        )
    archive = folder / ARCHIVE
    sources = [archive] if archive.is_file() else sorted((folder / FOLDER).iterdir())
    everything = cached(
        "cifar100",
        files_fingerprint(sources, folder),
        {"image_size": image_size},
        lambda: _decode(folder, image_size),
        cache_dir,
        origin=str(folder),
    )["all"]
    key, lists = VARIANTS[variant]
    out = {}
    for split, wanted in lists.items():
        indices = [i for i, c in enumerate(everything.classes) if key(c) in wanted]
        found = {key(everything.classes[i]) for i in indices}
        if found != set(wanted):
            raise ValueError(
                f"{folder}: the {variant} {split} split needs the CIFAR-100 classes "
                f"{sorted(set(wanted) - found)}, which the archive lacks"
            )
        out[split] = everything.subset(indices, f"{variant}/{split}")
    return out
