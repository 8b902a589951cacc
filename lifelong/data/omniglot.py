"""Omniglot (Lake et al. 2015): 1623 handwritten characters of 50 alphabets, 20 drawings each.

The official distribution is two archives: ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters), each holding
``<set>/<Alphabet>/characterNN/<id>_<drawer>.png``: 105x105 1-bit images, black strokes on
white. :func:`load_omniglot` reads the archives directly (or the extracted folders), checks
that they are complete, resizes every drawing with Pillow's LANCZOS filter and inverts it so
that ink = 1 (``uint8`` 255 on a 0 background), and caches the decoded tensors
(:mod:`lifelong.data.cache`), so only the first load decodes the 32,460 PNGs.

Class splits (the keys of the returned dict are ``train``, ``val``, ``trainval``, ``test``):

- ``"vinyals"``: the split of Vinyals et al. 2016 ("Matching Networks for One Shot Learning")
  as published in the list files of Snell et al. 2017 ("Prototypical Networks"), shipped in
  ``lifelong/data/splits/omniglot-vinyals.json`` (MIT, (c) 2017 Jake Snell): 1200 training
  characters of both sets (1028 train + 172 val) and 423 test characters of 13 evaluation-set
  alphabets; each rotation by 0/90/180/270 degrees is a class of its own (1200 x 4 = 4800
  training classes).
- ``"random"``: a seeded random partition of the 1623 characters into the same sizes, as the
  code of Finn et al. 2017 (MAML) draws its own split of all the characters; the test
  characters are then of all 50 alphabets (an easier test than ``"vinyals"``).
- ``"lake"``: the background/evaluation split of Lake et al. 2015: the background set is
  ``trainval`` (964 characters, with a seeded carve-out of 100 validation characters), the
  evaluation set (659 characters) is ``test``. Rotations are added the same way when
  ``rotations=True``.

Example:
    >>> splits = load_omniglot("/data/omniglot")  # doctest: +SKIP
    >>> splits["trainval"]
    ClassDataset('omniglot/vinyals/trainval', classes=4800, images=96000, shape=1x28x28)
    >>> splits["test"].classes[0]
    ClassInfo(name='Angelic/character01', group='Angelic', rotation=0)
"""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath

import torch

from lifelong.data.cache import cached, downloads_dir, files_fingerprint
from lifelong.data.classes import ClassDataset, ClassInfo, split_indices
from lifelong.data.download import download
from lifelong.data.images import decode_classes

URL = "https://github.com/brendenlake/omniglot/raw/master/python/{}.zip"
DRAWINGS = 20


@dataclass(frozen=True)
class OmniglotSet:
    """One official archive: its name, md5 and expected content."""

    name: str
    md5: str
    alphabets: int
    characters: int

    @property
    def url(self) -> str:
        return URL.format(self.name)


SETS = (
    OmniglotSet("images_background", "68d2efa1b9178cc56df9314c21c6e718", 30, 964),
    OmniglotSet("images_evaluation", "6b91aef0f799c5bb55b94e3f2daec811", 20, 659),
)

#: The Vinyals split's val and test characters, in the package (see the module docstring).
VINYALS_LISTS = "splits/omniglot-vinyals.json"

VINYALS_SIZES = {"train": 1028, "val": 172, "trainval": 1200, "test": 423}

#: Number of characters in each split, before rotations.
SPLIT_SIZES = {
    "vinyals": VINYALS_SIZES,
    "random": VINYALS_SIZES,
    "lake": {"train": 864, "val": 100, "trainval": 964, "test": 659},
}


def download_omniglot(
    folder: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Fetch the two official archives (md5-checked, about 15 MB) into ``folder`` (default: the
    cache's ``downloads/omniglot``); returns the folder."""
    folder = Path(folder).expanduser() if folder else downloads_dir("omniglot", cache_dir)
    for s in SETS:
        download(s.url, folder / f"{s.name}.zip", md5=s.md5)
    return folder


def _missing(folder: Path) -> list[str]:
    return [
        s.name
        for s in SETS
        if not ((folder / f"{s.name}.zip").is_file() or (folder / s.name).is_dir())
    ]


def _not_found(folder: Path, cache_dir: str | Path | None) -> FileNotFoundError:
    default = downloads_dir("omniglot", cache_dir)
    return FileNotFoundError(
        f"Omniglot not found in {folder}: missing {' and '.join(_missing(folder))} "
        "(a .zip archive or the extracted folder). Run `lifelong download omniglot` to fetch "
        f"the official archives (about 15 MB) into {default}, or pass `--data-root DIR` "
        "(Python: load_omniglot(root=DIR)) with DIR holding images_background.zip and "
        "images_evaluation.zip or the extracted folders; load_omniglot(download=True) "
        "downloads them."
    )


def _set_files(folder: Path, s: OmniglotSet, stack: ExitStack):
    """The PNG member names of one set, a function reading a member's bytes, and where they
    come from (for messages); the zip is read in place, never extracted."""
    archive = folder / f"{s.name}.zip"
    if archive.is_file():
        zf = stack.enter_context(zipfile.ZipFile(archive))
        return zf.namelist(), zf.read, str(archive)
    names = [p.relative_to(folder).as_posix() for p in (folder / s.name).rglob("*.png")]
    return names, lambda name: (folder / name).read_bytes(), str(folder)


def _fingerprint(folder: Path) -> str:
    """Archives by size and sha256, extracted folders by their file list (sizes, times)."""
    parts = []
    for s in SETS:
        archive = folder / f"{s.name}.zip"
        if archive.is_file():
            parts.append(files_fingerprint([archive], folder, content=True))
        else:
            parts.append(files_fingerprint((folder / s.name).rglob("*.png"), folder))
    return "+".join(parts)


def _characters(names: list[str], s: OmniglotSet, origin: str) -> dict[tuple[str, str], list]:
    """Group ``<set>/<Alphabet>/<character>/<file>.png`` names by character and check that the
    set is complete."""
    chars: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) == 4 and parts[0] == s.name and parts[3].endswith(".png"):
            chars[parts[1], parts[2]].append(name)
    alphabets = {a for a, _ in chars}
    wrong = [f"{a}/{c} ({len(v)})" for (a, c), v in sorted(chars.items()) if len(v) != DRAWINGS]
    if len(alphabets) != s.alphabets or len(chars) != s.characters or wrong:
        detail = (
            f"; characters without {DRAWINGS} drawings: {', '.join(wrong[:5])}" if wrong else ""
        )
        raise ValueError(
            f"{origin} is not the complete Omniglot {s.name} set: expected {s.characters} "
            f"characters in {s.alphabets} alphabets with {DRAWINGS} drawings each, found "
            f"{len(chars)} characters in {len(alphabets)} alphabets{detail}. Fetch the "
            "official archives with `lifelong download omniglot`."
        )
    return {k: sorted(v) for k, v in sorted(chars.items())}


def _decode(folder: Path, image_size: int) -> dict[str, ClassDataset]:
    """Both sets decoded at ``image_size``, ink = 1, characters in sorted order."""
    out = {}
    with ExitStack() as stack:
        for s in SETS:
            names, read, origin = _set_files(folder, s, stack)
            chars = _characters(names, s, origin)
            out[s.name.removeprefix("images_")] = decode_classes(
                list(chars.values()),
                [ClassInfo(f"{a}/{c}", group=a) for a, c in chars],
                image_size,
                channels=1,
                invert=True,
                name=f"omniglot/{s.name}",
                read=read,
                origin=origin,
            )
    return out


def _concat(a: ClassDataset, b: ClassDataset, name: str) -> ClassDataset:
    return ClassDataset(
        torch.cat([a.images, b.images]),
        torch.cat([a.counts, b.counts]),
        a.classes + b.classes,
        name,
    )


def _split(
    base: dict[str, ClassDataset], class_split: str, seed: int
) -> dict[str, tuple[ClassDataset, list[int]]]:
    """The source dataset and character indices of each split."""
    background, evaluation = base["background"], base["evaluation"]
    sizes = SPLIT_SIZES[class_split]
    if class_split in ("vinyals", "random"):
        source = _concat(background, evaluation, "omniglot")
        if class_split == "vinyals":
            train, val, test = _listed_split(source, sizes)
        else:
            train, val, test = split_indices(
                len(source), [sizes["train"], sizes["val"], sizes["test"]], seed
            )
        parts = {"train": train, "val": val, "trainval": sorted(train + val), "test": test}
        return {k: (source, v) for k, v in parts.items()}
    train, val = split_indices(len(background), [sizes["train"], sizes["val"]], seed)
    return {
        "train": (background, train),
        "val": (background, val),
        "trainval": (background, list(range(len(background)))),
        "test": (evaluation, list(range(len(evaluation)))),
    }


def _read_lists() -> dict[str, list[str]]:
    return json.loads(files("lifelong.data").joinpath(VINYALS_LISTS).read_text())


def _listed_split(
    source: ClassDataset, sizes: dict[str, int]
) -> tuple[list[int], list[int], list[int]]:
    """Train, val and test character indices of ``source`` by the shipped Vinyals lists
    (train: every character in neither list), checked against the expected sizes."""
    lists = _read_lists()
    index = {c.name: i for i, c in enumerate(source.classes)}
    parts = {}
    for split in ("val", "test"):
        unknown = [name for name in lists[split] if name not in index]
        if unknown or len(set(lists[split])) != sizes[split]:
            raise ValueError(
                f"{VINYALS_LISTS} {split}: expected {sizes[split]} Omniglot characters, "
                f"got {len(set(lists[split]))}, unknown: {unknown[:3]}"
            )
        parts[split] = sorted(index[name] for name in lists[split])
    listed = set(parts["val"]) | set(parts["test"])
    train = [i for i in range(len(source)) if i not in listed]
    if len(train) != sizes["train"]:
        raise ValueError(f"{VINYALS_LISTS}: the val and test lists overlap")
    return train, parts["val"], parts["test"]


def load_omniglot(
    root: str | Path | None = None,
    class_split: str = "vinyals",
    rotations: bool = True,
    image_size: int = 28,
    seed: int = 0,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, ClassDataset]:
    """Omniglot as ``train``/``val``/``trainval``/``test`` class datasets.

    Args:
        root: a folder holding ``images_background.zip`` and ``images_evaluation.zip`` (or the
            extracted ``images_background/`` and ``images_evaluation/`` folders); default:
            the cache's ``downloads/omniglot``. Nothing is ever written there except downloads.
        class_split: ``"vinyals"`` (the published 1028/172/423 characters), ``"random"``
            (a seeded partition of those sizes) or ``"lake"`` (background 864/100 vs.
            evaluation 659); see the module docstring.
        rotations: add each character rotated by 90, 180 and 270 degrees as new classes.
        image_size: side of the square images (LANCZOS resampling from 105x105).
        seed: seed of the ``"random"`` split and of ``"lake"``'s validation carve-out.
        download: fetch the official archives into ``root`` when they are missing.
        cache_dir: where decoded tensors are cached (default
            :func:`lifelong.data.cache.cache_dir`).

    Raises:
        FileNotFoundError: the data is missing; the message says how to get it.
        ValueError: an unknown split, or archives that are not the complete Omniglot sets.
        ImageDecodeError: a corrupted PNG, named in the message.
    """
    if class_split not in SPLIT_SIZES:
        raise ValueError(
            f"unknown Omniglot class_split {class_split!r}; choose one of {sorted(SPLIT_SIZES)}"
        )
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    folder = Path(root).expanduser() if root is not None else downloads_dir("omniglot", cache_dir)
    if download and _missing(folder):
        download_omniglot(folder)
    if _missing(folder):
        raise _not_found(folder, cache_dir)
    base = cached(
        "omniglot",
        _fingerprint(folder),
        {"image_size": image_size, "ink": 1},
        lambda: _decode(folder, image_size),
        cache_dir,
        origin=str(folder),
    )
    out = {}
    for split, (source, indices) in _split(base, class_split, seed).items():
        name = f"omniglot/{class_split}/{split}"
        ds = source.subset(indices, name)
        out[split] = ds.with_rotations(name=name) if rotations else ds
    return out
