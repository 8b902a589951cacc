"""Omniglot loading: the real archives (skipped when absent) and a tiny fake Omniglot."""

from __future__ import annotations

import functools
import hashlib
import io
import threading
import zipfile
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lifelong.data import omniglot
from lifelong.data.cache import ENV_VAR
from lifelong.data.images import ImageDecodeError, decode_image
from lifelong.data.omniglot import OmniglotSet, load_omniglot
from lifelong.pipeline.config import RunConfig
from lifelong.pipeline.data import load_data

DATA = Path(__file__).parents[2] / "shared/data/omniglot"
needs_data = pytest.mark.skipif(
    not (DATA / "images_background.zip").is_file(), reason=f"no Omniglot archives in {DATA}"
)


# ---------------------------------------------------------------- the real archives
@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """The vinyals splits, decoded once per session into a fresh cache (the slow part)."""
    if not (DATA / "images_background.zip").is_file():
        pytest.skip(f"no Omniglot archives in {DATA}")
    cache = tmp_path_factory.mktemp("omniglot-cache")
    return cache, load_omniglot(DATA, cache_dir=cache)


@needs_data
@pytest.mark.omniglot
def test_real_content(real):
    cache, _ = real
    lake = load_omniglot(DATA, class_split="lake", rotations=False, cache_dir=cache)
    background, evaluation = lake["trainval"], lake["test"]
    assert (len(background), len(evaluation)) == (964, 659)
    groups = [{c.group for c in ds.classes} for ds in (background, evaluation)]
    assert (len(groups[0]), len(groups[1]), len(groups[0] | groups[1])) == (30, 20, 50)
    for ds in (background, evaluation):
        assert ds.image_shape == (1, 28, 28)
        assert torch.all(ds.counts == 20)
    assert {"Tifinagh/character55", "Angelic/character20"} <= {
        c.name for c in background.classes + evaluation.classes
    }


@needs_data
@pytest.mark.omniglot
def test_real_vinyals_split(real):
    _, splits = real
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 1028 * 4,
        "val": 172 * 4,
        "trainval": 1200 * 4,
        "test": 423 * 4,
    }
    chars = {k: {c.name for c in v.classes} for k, v in splits.items()}
    assert chars["trainval"] == chars["train"] | chars["val"]
    assert not chars["train"] & chars["val"] and not chars["trainval"] & chars["test"]
    assert len(chars["trainval"] | chars["test"]) == 1623
    assert {c.rotation for c in splits["test"].classes} == {0, 90, 180, 270}
    assert splits["test"].name == "omniglot/vinyals/test"


@needs_data
@pytest.mark.omniglot
def test_real_vinyals_split_is_snells_files(real):
    """The shipped lists give exactly the classes of the split files of Snell et al."""
    _, splits = real
    folder = DATA / "splits/vinyals"
    if not folder.is_dir():
        pytest.skip(f"no split files in {folder}")
    for split in ("train", "val", "trainval", "test"):
        listed = (folder / f"{split}.txt").read_text().split()
        ours = [f"{c.name}/rot{c.rotation:03d}" for c in splits[split].classes]
        assert sorted(ours) == sorted(listed), split


@needs_data
@pytest.mark.omniglot
def test_real_random_split_is_seeded(real):
    cache, vinyals = real
    first, again, other = (
        load_omniglot(DATA, class_split="random", seed=s, rotations=False, cache_dir=cache)
        for s in (0, 0, 1)
    )
    assert {k: len(v) for k, v in first.items()} == {k: len(v) // 4 for k, v in vinyals.items()}
    assert first["test"].classes == again["test"].classes != other["test"].classes
    assert first["test"].name == "omniglot/random/test"


@needs_data
@pytest.mark.omniglot
def test_real_ink_is_one(real):
    _, splits = real
    images = splits["test"].images
    assert images.dtype == torch.uint8 and int(images.max()) == 255
    assert float((images == 0).float().mean()) > 0.5  # background is 0, strokes bright
    with zipfile.ZipFile(DATA / "images_background.zip") as zf:
        name = next(n for n in zf.namelist() if n.endswith(".png"))
        data = zf.read(name)
    original = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    full = decode_image(data, 105, channels=1, invert=True)
    assert torch.equal(full[0], torch.from_numpy(255 - original))


@needs_data
@pytest.mark.omniglot
def test_real_cached_load_equals_first_load(real, monkeypatch):
    cache, first = real

    def no_decoding(*args):
        raise AssertionError("the second load decoded the archives again")

    monkeypatch.setattr(omniglot, "_decode", no_decoding)
    again = load_omniglot(DATA, cache_dir=cache)
    for split, ds in first.items():
        assert torch.equal(again[split].images, ds.images)
        assert torch.equal(again[split].counts, ds.counts)
        assert again[split].classes == ds.classes


# ---------------------------------------------------------------- a tiny fake Omniglot
FAKE_SETS = (
    OmniglotSet("images_background", "", alphabets=2, characters=3),
    OmniglotSet("images_evaluation", "", alphabets=1, characters=2),
)
FAKE_LAYOUT = {
    "images_background": {"Alpha": 2, "Beta": 1},
    "images_evaluation": {"Gamma": 2},
}


@pytest.fixture
def fake(monkeypatch):
    """Shrink the expected Omniglot content to 3 + 2 characters."""
    monkeypatch.setattr(omniglot, "SETS", FAKE_SETS)
    sizes = {"train": 2, "val": 1, "trainval": 3, "test": 2}
    for split in ("vinyals", "random", "lake"):
        monkeypatch.setitem(omniglot.SPLIT_SIZES, split, sizes)
    lists = {"val": ["Alpha/character02"], "test": ["Beta/character01", "Gamma/character01"]}
    monkeypatch.setattr(omniglot, "_read_lists", lambda: lists)


def drawing(k: int) -> bytes:
    """A 105x105 1-bit PNG, white with a black square whose place depends on ``k``."""
    image = Image.new("1", (105, 105), 1)
    image.paste(0, (5 * (k % 10), 5 * (k // 10), 5 * (k % 10) + 30, 5 * (k // 10) + 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def fake_files(drop_one: bool = False, corrupt: bool = False) -> dict[str, bytes]:
    files = {}
    for set_name, alphabets in FAKE_LAYOUT.items():
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                for d in range(1, 21):
                    name = f"{set_name}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"
                    files[name] = drawing(c + d)
    if drop_one:
        del files["images_background/Alpha/character01/0001_20.png"]
    if corrupt:
        files["images_evaluation/Gamma/character02/0002_07.png"] = b"\x89PNG\r\n garbage"
    return files


def write_zips(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for set_name in FAKE_LAYOUT:
        with zipfile.ZipFile(folder / f"{set_name}.zip", "w") as zf:
            zf.writestr(f"{set_name}/", b"")
            for name, data in files.items():
                if name.startswith(set_name):
                    zf.writestr(name, data)
    return folder


def write_folders(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_fake_zip_and_folder_layouts_agree(fake, tmp_path):
    files = fake_files()
    from_zip = load_omniglot(write_zips(tmp_path / "z", files), cache_dir=tmp_path / "c")
    from_dirs = load_omniglot(write_folders(tmp_path / "d", files), cache_dir=tmp_path / "c")
    assert {k: len(v) for k, v in from_zip.items()} == {
        "train": 8,
        "val": 4,
        "trainval": 12,
        "test": 8,
    }
    for split, ds in from_zip.items():
        assert torch.equal(ds.images, from_dirs[split].images)
        assert ds.classes == from_dirs[split].classes
    image = from_zip["train"][0][0, 0]  # first drawing, rotation 0
    assert image.shape == (28, 28) and int(image.max()) == 255 and int(image[-1, -1]) == 0


def test_fake_lake_split_keeps_background_and_evaluation_apart(fake, tmp_path):
    splits = load_omniglot(
        write_zips(tmp_path, fake_files()), "lake", rotations=False, cache_dir=tmp_path / "c"
    )
    assert [c.name for c in splits["test"].classes] == ["Gamma/character01", "Gamma/character02"]
    assert {c.group for c in splits["trainval"].classes} == {"Alpha", "Beta"}
    assert len(splits["train"]) + len(splits["val"]) == len(splits["trainval"])


def test_fake_incomplete_archive_is_named(fake, tmp_path):
    write_zips(tmp_path, fake_files(drop_one=True))
    with pytest.raises(
        ValueError, match=r"characters without 20 drawings: Alpha/character01 \(19\)"
    ):
        load_omniglot(tmp_path, cache_dir=tmp_path / "c")


def test_fake_corrupted_png_is_named(fake, tmp_path):
    write_zips(tmp_path, fake_files(corrupt=True))
    with pytest.raises(ImageDecodeError, match=r"images_evaluation\.zip:.*0002_07\.png"):
        load_omniglot(tmp_path, cache_dir=tmp_path / "c")


def test_changed_archive_is_decoded_again(fake, tmp_path):
    files = fake_files()
    first = load_omniglot(write_zips(tmp_path / "z", files), "lake", cache_dir=tmp_path / "c")
    files["images_background/Alpha/character01/0001_01.png"] = drawing(77)
    second = load_omniglot(write_zips(tmp_path / "z", files), "lake", cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c" / "tensors").glob("*.safetensors"))) == 2
    assert not torch.equal(first["trainval"].images, second["trainval"].images)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="lifelong download omniglot") as err:
        load_omniglot(tmp_path / "nothing", cache_dir=tmp_path / "c")
    assert "--data-root DIR" in str(err.value)
    with pytest.raises(ValueError, match="unknown Omniglot class_split 'snell'"):
        load_omniglot(tmp_path, class_split="snell")


def test_fake_download_then_load(fake, tmp_path, monkeypatch):
    served = write_zips(tmp_path / "served", fake_files())
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        md5s = {
            s.name: hashlib.md5((served / f"{s.name}.zip").read_bytes()).hexdigest()
            for s in FAKE_SETS
        }
        monkeypatch.setattr(omniglot, "URL", f"http://127.0.0.1:{httpd.server_address[1]}/{{}}.zip")
        monkeypatch.setattr(
            omniglot, "SETS", tuple(replace(s, md5=md5s[s.name]) for s in FAKE_SETS)
        )
        splits = load_omniglot(download=True, cache_dir=tmp_path / "cache")
    finally:
        httpd.shutdown()
        httpd.server_close()
    downloaded = tmp_path / "cache" / "downloads" / "omniglot"
    assert sorted(p.name for p in downloaded.iterdir()) == [
        "images_background.zip",
        "images_evaluation.zip",
    ]
    assert len(splits["test"]) == 8


def test_fake_test_split_without_rotations(fake, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "c"))
    root = str(write_zips(tmp_path, fake_files()))
    rotated = load_data(RunConfig(dataset="omniglot", data_root=root, class_split="lake"))
    plain = load_data(replace(rotated.config, test_rotations=False))
    assert plain.facts.classes == {**rotated.facts.classes, "test": 2}
    assert [c.rotation for c in plain.splits["test"].classes] == [0, 0]
    assert torch.equal(plain.splits["test"][1], rotated.splits["test"][4])  # class-major
    assert plain.splits["train"] is rotated.splits["train"]  # the other splits: as they were
