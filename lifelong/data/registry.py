"""Every dataset by name: what it is, how to get it, how to load it.

:func:`load_dataset` turns a name and its options into ``{split: ClassDataset}``;
:func:`download_dataset` fetches what can be fetched; :func:`cached_datasets` lists what the
cache holds. Loaders are imported only when used, so listing datasets costs nothing.

Example:
    >>> splits = load_dataset("omniglot", class_split="lake", image_size=28)  # doctest: +SKIP
    >>> sorted(splits)
    ['test', 'train', 'trainval', 'val']
    >>> load_dataset("fc100", root="/data/cifar", download=True)["test"]  # doctest: +SKIP
    ClassDataset('fc100/test', classes=20, images=12000, shape=3x32x32)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.data.cache import CacheEntry, cache_entries
from lifelong.data.classes import ClassDataset


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of the registry.

    Attributes:
        description: one line for ``lifelong datasets``.
        loader: ``"module:function"`` returning ``{split: ClassDataset}``; ``None`` when the
            dataset is not a class dataset.
        args: positional arguments passed to the loader first (e.g. the CIFAR variant).
        downloader: ``"module:function(folder)"`` fetching the data; ``None``: not downloadable.
        takes_root: whether the loader reads files from a data root.
        required: options the loader cannot do without.
        cache_names: the names its entries have in the cache (downloads and tensors).
        how_to_get: how to obtain the data when it cannot be downloaded.
    """

    description: str
    loader: str | None
    args: tuple[Any, ...] = ()
    downloader: str | None = None
    takes_root: bool = True
    required: tuple[str, ...] = ()
    cache_names: tuple[str, ...] = ()
    how_to_get: str = ""

    @property
    def downloadable(self) -> bool:
        return self.downloader is not None


DATASETS: dict[str, DatasetInfo] = {
    "omniglot": DatasetInfo(
        "1623 handwritten characters of 50 alphabets, 20 drawings each (Lake et al. 2015); "
        "vinyals or lake split, rotations as extra classes",
        "lifelong.data.omniglot:load_omniglot",
        downloader="lifelong.data.omniglot:download_omniglot",
        cache_names=("omniglot",),
    ),
    "miniimagenet": DatasetInfo(
        "100 ImageNet classes x 600 images, 84x84 RGB, Ravi & Larochelle split 64/16/20",
        "lifelong.data.miniimagenet:load_miniimagenet",
        cache_names=("miniimagenet",),
        how_to_get="ImageNet's terms need a login: put images/ with train.csv, val.csv, "
        "test.csv, or mini-imagenet-cache-{train,val,test}.pkl, into a folder and pass "
        "--data-root DIR",
    ),
    "cifar-fs": DatasetInfo(
        "CIFAR-100 fine classes split 64/16/20, 32x32 RGB (Bertinetto et al. 2019)",
        "lifelong.data.cifar:load_cifar",
        args=("cifar-fs",),
        downloader="lifelong.data.cifar:download_cifar100",
        cache_names=("cifar100",),
    ),
    "fc100": DatasetInfo(
        "CIFAR-100 split by superclass 12/4/4 = 60/20/20 classes, 32x32 RGB (Oreshkin et al. 2018)",
        "lifelong.data.cifar:load_cifar",
        args=("fc100",),
        downloader="lifelong.data.cifar:download_cifar100",
        cache_names=("cifar100",),
    ),
    "folder": DatasetInfo(
        "your own images, one sub-folder per class (optionally under train/ val/ test/)",
        "lifelong.data.folder:load_folder",
        required=("root", "image_size"),
        cache_names=("folder",),
        how_to_get="it is your own data: pass --data-root DIR",
    ),
    "strokes": DatasetInfo(
        "procedural handwritten-like characters, generated offline (the default)",
        "lifelong.data.strokes:load_strokes",
        takes_root=False,
        how_to_get="it is generated on the fly; there is nothing to download",
    ),
    "sinusoid": DatasetInfo(
        "sine-wave regression tasks (Finn et al. 2017); a task sampler, not a class dataset",
        None,
        takes_root=False,
        how_to_get="it is generated on the fly; there is nothing to download",
    ),
}


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _resolve(target: str) -> Callable[..., Any]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def load_dataset(
    name: str, root: str | Path | None = None, download: bool = False, **options: Any
) -> dict[str, ClassDataset]:
    """The splits of dataset ``name`` (a key of :data:`DATASETS`).

    Args:
        name: the dataset.
        root: where its files are (default: the cache's download folder of the dataset).
        download: fetch the data first if it is missing (downloadable datasets only).
        **options: passed to the dataset's loader, e.g. ``image_size``, ``class_split``.

    Raises:
        ValueError: an unknown dataset or option, a missing required option, ``download``
            for a dataset that cannot be downloaded, or ``sinusoid`` (not a class dataset:
            its tasks come from :class:`lifelong.data.sinusoid.SinusoidSampler`).
    """
    info = _info(name)
    if info.loader is None:
        raise ValueError(
            f"{name} is not a class dataset: {info.description}; sample its tasks with "
            "lifelong.data.sinusoid.SinusoidSampler"
        )
    if download and not info.downloadable:
        raise ValueError(f"{name} cannot be downloaded: {info.how_to_get}")
    if root is not None and not info.takes_root:
        raise ValueError(f"{name} reads no files, so it takes no data root (got {root})")
    loader = _resolve(info.loader)
    params = list(inspect.signature(loader).parameters.values())[len(info.args) :]
    accepted = [p.name for p in params if p.kind != p.VAR_KEYWORD]
    unknown = sorted(set(options) - set(accepted))
    if unknown and len(accepted) == len(params):
        raise ValueError(
            f"{name} does not take the option(s) {', '.join(unknown)}; it takes "
            f"{', '.join(a for a in accepted if a not in ('root', 'download', 'cache_dir'))}"
        )
    if info.takes_root:
        options["root"] = root
    if info.downloadable:
        options["download"] = download
    missing = [r for r in info.required if options.get(r) is None]
    if missing:
        flags = ", ".join("--data-root DIR" if r == "root" else r for r in missing)
        raise ValueError(f"{name} needs {flags}")
    return loader(*info.args, **options)


def download_dataset(
    name: str, root: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Fetch dataset ``name`` into ``root`` (default: the cache's download folder) and return
    that folder. Checksums are verified; see :mod:`lifelong.data.download`."""
    info = _info(name)
    if not info.downloadable:
        raise ValueError(f"{name} cannot be downloaded: {info.how_to_get}")
    return _resolve(info.downloader)(root, cache_dir)


def cached_datasets(cache_dir: str | Path | None = None) -> dict[str, list[CacheEntry]]:
    """What the cache holds, by dataset name (only names with something cached): downloaded
    archives and preprocessed tensors, each with its path and size in bytes. CIFAR-FS and FC100
    share their entries (both are made from CIFAR-100).

    Example:
        >>> for name, entries in cached_datasets().items():  # doctest: +SKIP
        ...     print(name, sum(e.bytes for e in entries))
        omniglot 40013337
    """
    entries = cache_entries(cache_dir)
    out = {}
    for name, info in DATASETS.items():
        mine = [e for e in entries if e.dataset in info.cache_names]
        if mine:
            out[name] = mine
    return out
