"""Decoding image files into ``uint8`` tensors ``[C, H, W]`` at model resolution.

Every real-image loader of :mod:`lifelong.data` goes through :func:`decode_image` (one file or
buffer), :func:`decode_classes` (files grouped by class, into a :class:`ClassDataset`) or
:func:`resize_batch` (arrays already in memory, e.g. CIFAR), so all datasets share one
resampling filter: Pillow's LANCZOS (a windowed sinc, ``a = 3``), applied only when the size
changes. Grayscale images have ``C = 1``, colour images ``C = 3``; transparent pixels are
composited onto white (so black ink on a transparent background stays black on white).

Large files are never held at full resolution longer than their decoding: a JPEG is decoded
at a reduced scale (Pillow's ``draft``), other formats are reduced by an integer factor (a box
filter, Pillow's ``reduce``) right after decoding, in both cases to no less than
:data:`DECODE_SIDE` pixels on the shorter side, before the LANCZOS resize to model size. The
same file thus gives the same pixels for training (datasets), ``lifelong predict`` and the
class store.

Example:
    >>> from PIL import Image
    >>> to_tensor(Image.new("1", (105, 105), 0), size=28, invert=True).shape
    torch.Size([1, 28, 28])
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from lifelong.data.classes import ClassDataset, ClassInfo

#: The file suffixes taken for images (lower case) when a folder is read: the formats Pillow
#: decodes that image files usually come in.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
#: Pillow modes decoded as one channel (everything else becomes RGB).
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
#: Images are decoded at no less than this many pixels on their shorter side (module doc): the
#: most that a model input may have without losing detail.
DECODE_SIDE = 512
#: Part of the keys of cached decoded datasets; bumped when a file decodes to other pixels
#: (2: transparency composited onto white, large images reduced while decoding).
DECODING = 2
#: Pillow modes that ``Image.reduce`` averages correctly (others are converted first).
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})

Size = int | tuple[int, int]
Source = str | Path | bytes | BinaryIO


class ImageDecodeError(ValueError):
    """An image file or buffer that Pillow cannot decode (corrupted, truncated, not an image)."""


class ImageTooLarge(ImageDecodeError):
    """An image with more pixels than allowed (a decompression bomb, or just too big)."""


def _size_hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {size!r}")
    return int(h), int(w)


def native_channels(image: Image.Image) -> int:
    """1 for a grayscale Pillow mode (see :data:`GRAYSCALE_MODES`), else 3."""
    return 1 if image.mode in GRAYSCALE_MODES else 3


def to_tensor(
    image: Image.Image, size: Size, channels: int | None = None, invert: bool = False
) -> Tensor:
    """A Pillow image as ``uint8 [C, H, W]``, resized to ``size`` (``int`` for square, or
    ``(H, W)``) with the LANCZOS filter; the aspect ratio is not kept.

    Args:
        image: any Pillow image; 1-bit, 16-bit and float grayscale become 8-bit ``"L"``,
            transparent pixels are composited onto white.
        size: the output size.
        channels: 1 (grayscale) or 3 (RGB); ``None`` keeps the image's own kind.
        invert: ``255 - x``, e.g. so that Omniglot's black strokes become bright (ink = 1).
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    channels = channels or native_channels(image)
    h, w = _size_hw(size)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image)))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.LANCZOS)
    array = np.array(image, dtype=np.uint8)
    if invert:
        np.subtract(255, array, out=array)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """A wide grayscale array as ``uint8``: floats are read as ``[0, 1]``, integers as 16-bit
    (``0..65535``) when any value exceeds 255, else as 8-bit."""
    if array.dtype.kind == "f":
        return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    top = 65535 if array.max(initial=0) > 255 else 255
    return (np.clip(array, 0, top) * (255.0 / top)).round().astype(np.uint8)


def open_header(source: Source, name: str | None = None) -> Image.Image:
    """An image opened lazily (its header read, its pixels not decoded; close it after use),
    with :class:`ImageTooLarge` for a decompression bomb and :class:`ImageDecodeError`, naming
    ``name`` (or the path), for data that is not a readable image."""
    label = _label(source, name)
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"image {label} is too large: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(
            f"cannot decode image {label}: {label} is not an image (in a format Pillow reads)"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(f"cannot decode image {label}: {err}") from err


def open_image(
    source: Source, name: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode an image at no less than :data:`DECODE_SIDE` pixels on its shorter side (see
    the module doc), with the errors of :func:`open_header`; :class:`ImageTooLarge` if it has
    more than ``max_pixels`` pixels (checked on the header, before decoding)."""
    label = _label(source, name)
    image = open_header(source, name)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"image {label} has {width}x{height} pixels, more than the {max_pixels:,} allowed"
        )
    try:
        image.draft(None, (DECODE_SIDE, DECODE_SIDE))  # JPEG: decoded at 1/2, 1/4 or 1/8
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(f"cannot decode image {label}: {err}") from err
    factor = min(image.size) // DECODE_SIDE
    return _reducible(image).reduce(factor) if factor > 1 else image


def _reducible(image: Image.Image) -> Image.Image:
    """``image`` in a mode whose pixel values ``Image.reduce`` may average (not palette
    indices or bits)."""
    if image.mode in REDUCIBLE_MODES:
        return image
    if image.mode == "1" or image.mode.startswith("I;16"):
        return image.convert("L" if image.mode == "1" else "I")
    alpha = image.mode == "PA" or "transparency" in image.info
    return image.convert("RGBA" if alpha else "RGB")


def _label(source: Source, name: str | None) -> str:
    return name or (str(source) if isinstance(source, str | Path) else "<image bytes>")


def decode_image(
    source: Source,
    size: Size,
    channels: int | None = None,
    invert: bool = False,
    name: str | None = None,
) -> Tensor:
    """Decode one image file (path, open file or bytes) to ``uint8 [C, H, W]``, resized with
    Pillow's LANCZOS filter; see :func:`to_tensor` for the arguments.

    Raises:
        ImageDecodeError: the file is corrupted, truncated or not an image; the message names
            ``name`` (default: the path).

    Example:
        >>> img = decode_image("images_background/Greek/character01/0394_01.png", 28,
        ...                    invert=True)  # doctest: +SKIP
        >>> img.shape, img.dtype
        (torch.Size([1, 28, 28]), torch.uint8)
    """
    return to_tensor(open_image(source, name), size, channels, invert)


def decode_classes(
    files: Sequence[Sequence[str | Path]],
    classes: Sequence[ClassInfo],
    size: Size,
    channels: int | None = None,
    invert: bool = False,
    name: str = "dataset",
    read: Callable[[str], bytes] | None = None,
    origin: str = "",
) -> ClassDataset:
    """Decode the image files of each class into one :class:`ClassDataset`, with a progress bar.

    Args:
        files: the files of each class, in the order of ``classes``: paths, or member names
            that ``read`` turns into bytes (e.g. ``ZipFile.read``).
        classes: one :class:`ClassInfo` per class.
        size, invert: as in :func:`to_tensor`.
        channels: 1 or 3; ``None``: 1 if every image is grayscale, else 3 (headers are read
            first to decide, so colour and grayscale files can be mixed).
        name: the dataset's name (progress bar, errors).
        read: fetches a file's bytes by name; ``None``: ``files`` are paths.
        origin: prefixed to member names in error messages, e.g. the archive's path.

    Raises:
        ImageDecodeError: naming the first file that cannot be decoded.
    """

    def source(f: str | Path) -> tuple[bytes | Path, str]:
        if read is None:
            return Path(f), str(f)
        return read(str(f)), f"{origin}:{f}" if origin else str(f)

    flat = [f for class_files in files for f in class_files]
    if channels is None:
        channels = 1
        for f in flat:
            with open_header(*source(f)) as img:
                if native_channels(img) == 3:
                    channels = 3
                    break
    h, w = _size_hw(size)
    images = torch.empty((len(flat), channels, h, w), dtype=torch.uint8)
    bar = tqdm(flat, desc=f"{name}: decoding", unit="img", leave=False, disable=None)
    for i, f in enumerate(bar):  # (no bar unless on a terminal: not in logs, nor before errors)
        data, label = source(f)
        images[i] = decode_image(data, size, channels, invert, label)
    return ClassDataset(images, [len(c) for c in files], classes, name)


def resize_batch(images: np.ndarray, size: Size) -> Tensor:
    """``uint8`` images ``[N, H, W, C]`` (or ``[N, H, W]``) as a tensor ``[N, C, h, w]`` at
    ``size``, resized one by one with the LANCZOS filter when the size differs."""
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images [N, H, W, 1 or 3], got {images.dtype} {images.shape}"
        )
    h, w = _size_hw(size)
    if images.shape[1:3] == (h, w):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    channels = images.shape[-1]
    out = torch.empty((len(images), channels, h, w), dtype=torch.uint8)
    for i, array in enumerate(images):
        out[i] = to_tensor(Image.fromarray(array.squeeze(-1) if channels == 1 else array), size)
    return out
