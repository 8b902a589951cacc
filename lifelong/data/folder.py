"""Your own images as a few-shot dataset: one sub-folder per class.

Two layouts are understood::

    root/<class>/<image>                   classes split at random (seeded) by `splits`
    root/{train,val,test}/<class>/<image>  the split folders that exist are the splits

A folder that holds images and no class folders is unlabeled: ``root/<image>`` is a
``train`` split of unlabeled images, and so is ``root/train/<image>`` beside labelled
``val/`` and ``test/`` class folders. An unlabeled split is one class named
:data:`UNLABELED`; only a run with ``labels: none`` meta-trains on it
(:mod:`lifelong.unlabeled`).

Any format Pillow reads is accepted (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM/PBM; see
:data:`~lifelong.data.images.IMAGE_SUFFIXES`); other files and hidden files are ignored. Every
image is resized to ``image_size`` with Pillow's LANCZOS filter (without keeping the aspect
ratio) and stored as ``uint8`` in memory; the decoded tensors are cached
(:mod:`lifelong.data.cache`), keyed by the file list with sizes and modification times, so
editing the folder triggers a new decode.

Example:
    >>> splits = load_folder("my_letters/", image_size=28, splits=(0.6, 0.2, 0.2))  # doctest: +SKIP
    >>> splits["test"]
    ClassDataset('folder/my_letters/test', classes=10, images=200, shape=1x28x28)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lifelong.data.cache import cached, files_fingerprint
from lifelong.data.classes import ClassDataset, ClassInfo, split_indices
from lifelong.data.images import DECODING, IMAGE_SUFFIXES, Size, decode_classes

SPLITS = ("train", "val", "test")
UNLABELED = "(unlabeled)"
"""The one class of a split of unlabeled images."""


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(folder: Path) -> list[Path]:
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"class folder {folder} holds no images (looked for {suffixes})")
    return files


def split_sizes(n: int, splits: Sequence[float | int]) -> list[int]:
    """Class counts of the train/val/test splits: ``splits`` are either fractions summing to 1
    (rounded; the last split takes the rest) or class counts (``-1`` last takes the rest).

    Example:
        >>> split_sizes(10, (0.6, 0.2, 0.2)), split_sizes(10, (5, 2, -1))
        ([6, 2, 2], [5, 2, 3])
    """
    if len(splits) != len(SPLITS):
        raise ValueError(f"splits must give train, val and test sizes, got {tuple(splits)}")
    if all(isinstance(s, int) for s in splits):
        sizes = [int(s) for s in splits]
        if sizes[-1] == -1:
            sizes[-1] = n - sum(sizes[:-1])
    else:
        if not math.isclose(sum(splits), 1.0, abs_tol=1e-6) or min(splits) < 0:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {tuple(splits)}")
        sizes = [round(f * n) for f in splits[:-1]]
        sizes.append(n - sum(sizes))
    if min(sizes) < 0 or sum(sizes) != n:
        raise ValueError(f"cannot split {n} classes into train/val/test sizes {sizes}")
    return sizes


def load_folder(
    root: str | Path,
    image_size: Size,
    channels: int | None = None,
    splits: Sequence[float | int] = (0.6, 0.2, 0.2),
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> dict[str, ClassDataset]:
    """Class datasets from a folder of class folders (see the module docstring).

    Args:
        root: the folder.
        image_size: side of square images, or ``(height, width)``.
        channels: 1 (grayscale) or 3 (RGB); ``None``: 1 if every image is grayscale, else 3.
        splits: train/val/test fractions or class counts (see :func:`split_sizes`), used when
            ``root`` has no ``train/``, ``val/`` or ``test/`` folder. A split of 0 classes is
            left out of the result.
        seed: seed of the random class split.
        cache_dir: where decoded tensors are cached.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders, or a class folder without images.
        ImageDecodeError: an unreadable image, named in the message.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    predefined = [s for s in SPLITS if (root / s).is_dir()]
    folders = {s: root / s for s in predefined} if predefined else {"all": root}
    class_dirs = {where: _visible_dirs(folder) for where, folder in folders.items()}
    unlabeled = [where for where, dirs in class_dirs.items() if not dirs]
    for where in unlabeled:  # images without class folders: one class of unlabeled images
        has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in folders[where].iterdir())
        if where not in ("all", "train") or not has_images:
            only = "" if not has_images else "; only the training images may be unlabeled"
            raise ValueError(
                f"{folders[where]} holds no class folders (one sub-folder per class){only}"
            )
        class_dirs[where] = [folders[where]]
    if unlabeled == ["all"]:
        predefined = ["train"]
        class_dirs = {"train": class_dirs["all"]}
    files = {where: [_class_files(d) for d in dirs] for where, dirs in class_dirs.items()}
    infos = [
        ClassInfo(UNLABELED if where in unlabeled or unlabeled == ["all"] else d.name)
        for where, dirs in class_dirs.items()
        for d in dirs
    ]
    label = f"folder/{root.resolve().name}"

    def build() -> dict[str, ClassDataset]:
        every = [f for per_split in files.values() for f in per_split]
        return {"all": decode_classes(every, infos, image_size, channels, name=label)}

    source = [f for per_split in files.values() for class_files in per_split for f in class_files]
    size = list(image_size) if isinstance(image_size, Sequence) else image_size
    everything = cached(
        "folder",
        files_fingerprint(source, root),
        {"image_size": size, "channels": channels, "decoding": DECODING},
        build,
        cache_dir,
        origin=str(root),
    )["all"]
    if predefined:
        parts, start = {}, 0
        for s in predefined:
            parts[s] = list(range(start, start + len(class_dirs[s])))
            start += len(parts[s])
    else:
        sizes = split_sizes(len(everything), splits)
        parts = dict(zip(SPLITS, split_indices(len(everything), sizes, seed), strict=True))
    return {s: everything.subset(idx, f"{label}/{s}") for s, idx in parts.items() if idx}
