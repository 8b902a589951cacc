"""One decoding path for training, `lifelong predict` and uploads: transparency composited
onto white everywhere, large images decoded reduced, a decompression bomb in a folder
dataset refused with one line (issue 13)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_http_limits import blank_png, png_chunk
from test_store import trained_run

import lifelong
from lifelong.data.folder import load_folder
from lifelong.data.images import DECODE_SIDE, ImageDecodeError, open_image
from lifelong.store import ImageFile, ImageTooLarge, Recognizer


def ink_on_transparent(path: Path, size: tuple[int, int], mode: str = "RGBA") -> None:
    """A black bar on a fully transparent background (the colour under it black too)."""
    array = np.zeros((size[1], size[0], len(mode)), dtype=np.uint8)
    array[size[1] // 4 : 3 * size[1] // 4, :, -1] = 255  # opaque black ink
    Image.fromarray(array, mode).save(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_folder_dataset_composites_transparency_onto_white(tmp_path, mode):
    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
        ink_on_transparent(tmp_path / "set" / name / "1.png", (40, 30), mode)
    images = load_folder(tmp_path / "set", 12, splits=(2, 0, 0), cache_dir=tmp_path / "cache")
    x = images["train"].images
    assert x.shape[1:] == ((3 if mode == "RGBA" else 1), 12, 12)
    assert x[:, :, 0].min() > 240 and x[:, :, -1].min() > 240  # white (LANCZOS rings a bit)
    assert x.min() == 0  # the ink


def test_training_and_use_decode_a_file_alike(tmp_path_factory, tmp_path):
    run_dir = trained_run(tmp_path_factory.getbasetemp())
    learner = lifelong.load(run_dir)
    channels, size = learner.facts.image_shape[0], learner.facts.image_shape[1:]
    (tmp_path / "set" / "a").mkdir(parents=True)
    (tmp_path / "set" / "b").mkdir(parents=True)
    big, small = tmp_path / "set" / "a" / "big.png", tmp_path / "set" / "b" / "small.png"
    ink_on_transparent(big, (3000, 2000))  # decoded reduced by 3
    ink_on_transparent(small, (50, 40))
    training = load_folder(tmp_path / "set", size, channels, (2, 0, 0), cache_dir=tmp_path / "c")
    predict = (learner.preprocess([big, small]) * 255).round().to(torch.uint8)
    store = Recognizer(learner).images([ImageFile.read(big), ImageFile.read(small)])
    assert torch.equal((store * 255).round().to(torch.uint8), predict)
    assert torch.equal(predict, 255 - training["train"].images)  # the run's ink convention


def test_large_images_are_decoded_reduced(tmp_path):
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(photo, format="JPEG")
    assert open_image(photo.getvalue()).size == (1000, 750)  # decoded at 1/4 of the scale
    reduced = open_image(blank_png(6000, 6000))  # decoded, then reduced by 11 at once
    assert reduced.size == (546, 546) and min(reduced.size) >= DECODE_SIDE
    palette = Image.new("P", (2100, 1100), 3)
    palette.putpalette([0, 0, 0] * 3 + [250, 20, 20])
    out = io.BytesIO()
    palette.save(out, format="PNG")
    colours = open_image(out.getvalue())  # a palette is averaged as colours, not indices
    assert colours.size == (1050, 550) and colours.getpixel((5, 5))[:3] == (250, 20, 20)
    with pytest.raises(ImageTooLarge, match=r"big\.png has 6000x6000 pixels, more than the 1,000"):
        ImageFile("big.png", blank_png(6000, 6000)).decode(max_pixels=1000)


def test_a_decompression_bomb_in_a_folder_dataset_is_one_line(tmp_path):
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 400 Mpx, 8-bit grey
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"")
    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.new("L", (20, 20)).save(tmp_path / "set" / name / "1.png")
    (tmp_path / "set" / "b" / "2.png").write_bytes(bomb + png_chunk(b"IEND", b""))
    for channels in (None, 1):  # the colour probe of every header, and the decoding
        with pytest.raises(ImageDecodeError) as error:
            load_folder(tmp_path / "set", 12, channels, (2, 0, 0), cache_dir=tmp_path / "c")
        message = str(error.value)
        assert "set/b/2.png is too large" in message and "400000000 pixels" in message
        assert "\n" not in message
