"""A trained run's embedding put to work on a class store: learn classes, recognise images.

:class:`Recognizer` loads a run once (``lifelong.load``: the run's own preprocessing of
image files) and

* **learns**: embeds a few images of a class and adds them to the store's statistics
  (:meth:`ClassStore.add <lifelong.store.db.ClassStore.add>`);
* **recognises**: builds the prototype memory of the continual-learning protocols
  (:class:`~lifelong.continual.classifiers.mean.NearestMean`) from the store's class means and
  classifies by the ProtoNet rule, ``p(y=k|x) = softmax_k(-d(f(x), c_k) / T)`` (Snell et al.
  2017, eq. 2), with the run's distance ``d`` and temperature ``T``; an image whose nearest
  prototype is farther than the open-set threshold (:mod:`lifelong.store.calibration`) is
  "unknown".

For a ProtoNet run, the predictions equal those of ``Learner.adapt(...).predict(...)`` (and
``lifelong predict``) with the same support images. Embeddings must not depend on the other
images of a batch, so runs whose batch norm uses batch statistics (the MAML family, Reptile)
are refused. The store records a fingerprint of the run's weights (:func:`weights_fingerprint`)
and a store made with other weights is refused.

Example:
    >>> recognizer = Recognizer.load("runs/pn")
    >>> with open_store("shop.db", recognizer) as store:
    ...     recognizer.learn(store, "mug", [ImageFile.read(p) for p in mug_photos])
    ...     recognizer.recognize(store, [ImageFile.read("photo.jpg")])[0].label
    'mug'
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from lifelong.algorithms.registry import algorithm_classes
from lifelong.api import Learner, load
from lifelong.continual.classifiers.base import ClassStatistics
from lifelong.continual.classifiers.mean import NearestMean
from lifelong.data.images import ImageDecodeError, open_image
from lifelong.pipeline.data import load_data
from lifelong.store.calibration import calibrate
from lifelong.store.db import Added, ClassStore, EmptyStore, ExampleFile, StoreError

MAX_PIXELS = 40_000_000


class ImageTooLarge(ValueError):
    """An image with more pixels than allowed (a decompression bomb, or just too big)."""


@dataclass(frozen=True)
class ImageFile:
    """An image file's name and bytes (a path's content, or an upload)."""

    name: str
    data: bytes

    @classmethod
    def read(cls, path: str | Path) -> ImageFile:
        return cls(str(path), Path(path).read_bytes())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def decode(self, max_pixels: int = MAX_PIXELS) -> Image.Image:
        """The decoded image; :class:`ImageDecodeError` if it is not an image,
        :class:`ImageTooLarge` if it has more than ``max_pixels`` pixels (checked on the
        header, before decoding)."""
        try:
            with Image.open(io.BytesIO(self.data)) as probe:
                width, height = probe.size
        except Image.DecompressionBombError as err:
            raise ImageTooLarge(f"image {self.name} is too large: {err}") from err
        except UnidentifiedImageError as err:
            raise ImageDecodeError(
                f"{self.name} is not an image (in a format Pillow reads)"
            ) from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageDecodeError(f"{self.name} is not an image Pillow can read ({err})") from err
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image {self.name} has {width}x{height} pixels, more than the {max_pixels:,} "
                "allowed"
            )
        return open_image(self.data, self.name)


@dataclass(frozen=True)
class Candidate:
    """A class for an image: its probability and the distance to its prototype."""

    label: str
    probability: float
    distance: float


@dataclass(frozen=True)
class Recognition:
    """What image ``file`` was recognised as: ``label`` is the nearest class, or ``None`` when
    the image is farther than the threshold from every prototype (``unknown``); ``top`` lists
    the most probable classes."""

    file: str
    label: str | None
    nearest: str
    probability: float
    distance: float
    unknown: bool
    top: list[Candidate]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def store_algorithms() -> list[str]:
    """The algorithms whose runs can back a class store."""
    return [name for name, cls in algorithm_classes().items() if cls.can_back_store()]


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: every tensor's name, dtype, shape and bytes, in name
    order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class Recognizer:
    """The embedding of a trained run, shared by the requests of a server (its forward
    passes take turns under a lock)."""

    def __init__(self, learner: Learner, checkpoint: str = "best") -> None:
        config = learner.config
        if learner.facts.regression or not type(learner.algorithm).can_back_store():
            raise ValueError(
                f"run {str(learner.run.run_dir)!r} is a {config.algorithm} run on "
                f"{config.dataset}: a class store needs an image embedding that is the same "
                f"for an image alone or in a batch ({', '.join(store_algorithms())} runs)"
            )
        self.learner, self.checkpoint = learner, checkpoint
        algorithm = learner.algorithm
        self.embedding = algorithm.embedding()
        self.distance = algorithm.distance
        self.p = float(algorithm.p)
        self.temperature = float(algorithm.temperature)
        self.fingerprint = weights_fingerprint(algorithm)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> Recognizer:
        return cls(load(run_dir, checkpoint, device), checkpoint)

    @property
    def run_dir(self) -> Path:
        return Path(self.learner.run.run_dir).resolve()

    def meta(self) -> dict[str, Any]:
        """What a new store records about the run."""
        config, shape = self.learner.config, self.learner.facts.image_shape or ()
        return {
            "run_dir": str(self.run_dir),
            "checkpoint": self.checkpoint,
            "fingerprint": self.fingerprint,
            "algorithm": config.algorithm,
            "dataset": config.dataset,
            "image_shape": list(shape),
            "embedding_dim": int(self.embed(torch.zeros(1, *shape)).shape[1]),
            "distance": self.distance,
            "p": self.p,
            "temperature": self.temperature,
        }

    def check_store(self, store: ClassStore) -> None:
        """Refuse a store made with other weights than this run's."""
        meta = store.meta
        if meta.get("fingerprint") != self.fingerprint:
            raise StoreError(
                f"store {str(store.path)!r} belongs to the run {meta.get('run_dir')!r} with "
                f"weights {str(meta.get('fingerprint'))[:12]}, but run {str(self.run_dir)!r} "
                f"has weights {self.fingerprint[:12]}: its embeddings would not match"
            )

    # ------------------------------------------------------------------ embedding
    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``float32 [n, D]`` of preprocessed images ``[n, C, H, W]``."""
        with self._lock:
            return self.embedding(x.to(self.learner.device)).float().cpu()

    def images(self, files: Sequence[ImageFile], max_pixels: int = MAX_PIXELS) -> Tensor:
        """Files decoded and preprocessed as the run's training images ``[n, C, H, W]``."""
        if not files:
            raise ValueError("no images given")
        return self.learner.preprocess([f.decode(max_pixels) for f in files])

    # ------------------------------------------------------------------ learn and recognise
    def learn(
        self,
        store: ClassStore,
        name: str,
        files: Sequence[ImageFile],
        max_pixels: int = MAX_PIXELS,
    ) -> Added:
        """Add the images ``files`` to class ``name`` of ``store`` (one transaction)."""
        z = self.embed(self.images(files, max_pixels))
        return store.add(name, z, [ExampleFile(f.name, f.sha256) for f in files])

    def memory(self, store: ClassStore) -> tuple[list[str], NearestMean]:
        """The store's classes and their prototype memory (class means of the embedding)."""
        names, counts, sums = store.statistics()
        if not names:
            raise EmptyStore(
                f"store {str(store.path)!r} has no classes yet: teach it some with "
                "`lifelong learn RUN_DIR --store FILE --class NAME IMAGE...`"
            )
        memory = NearestMean(self._embed_raw, len(names), self.distance, self.p, self.temperature)
        memory.load(ClassStatistics.of(counts, sums, torch.zeros_like(sums), None))
        return names, memory

    def _embed_raw(self, x: Tensor) -> Tensor:
        return self.embedding(x.to(self.learner.device))

    def recognize(
        self,
        store: ClassStore,
        files: Sequence[ImageFile],
        top: int = 3,
        threshold: float | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> list[Recognition]:
        """Recognise each image among the store's classes. ``threshold``: the open-set
        distance threshold (``None``: the store's calibrated one; ``inf``: never unknown)."""
        if top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        if threshold is None:
            threshold = store.meta.get("threshold")
        limit = math.inf if threshold is None else float(threshold)
        x = self.images(files, max_pixels)
        names, memory = self.memory(store)
        with self._lock:
            logits = memory.predict(x).float().cpu()
        probabilities = logits.softmax(-1)
        distances = -logits * self.temperature
        order = probabilities.argsort(dim=-1, descending=True, stable=True)[:, :top]
        results = []
        for file, p, d, best in zip(files, probabilities, distances, order, strict=True):
            k = int(best[0])
            unknown = bool(d[k] > limit)
            results.append(
                Recognition(
                    file=file.name,
                    label=None if unknown else names[k],
                    nearest=names[k],
                    probability=float(p[k]),
                    distance=float(d[k]),
                    unknown=unknown,
                    top=[Candidate(names[int(j)], float(p[j]), float(d[j])) for j in best],
                )
            )
        return results


def open_store(
    path: str | Path,
    recognizer: Recognizer,
    create: bool = True,
    quantile: float = 0.95,
) -> ClassStore:
    """The store at ``path`` for ``recognizer``'s run: made (and calibrated on the run's
    validation classes, see :mod:`lifelong.store.calibration`) when ``create`` and there is
    none yet; an existing store must belong to the same weights."""
    path = Path(path)
    if not create or (path.is_file() and path.stat().st_size > 0):
        store = ClassStore.open(path)
    else:
        meta = {**recognizer.meta(), **calibration_meta(recognizer, quantile)}
        store = ClassStore.create(path, meta)
    try:
        recognizer.check_store(store)
    except BaseException:
        store.close()
        raise
    return store


def recognizer_for(
    store_path: str | Path, run_dir: str | Path | None = None, device: str = "cpu"
) -> Recognizer:
    """The recognizer of a store's run (``run_dir``: where the run is now, if it moved; its
    weights must be those the store was made with)."""
    with ClassStore.open(store_path) as store:
        meta = store.meta
        if run_dir is None and not Path(meta["run_dir"]).is_dir():
            raise StoreError(
                f"the run of store {str(store_path)!r}, {meta['run_dir']!r}, does not exist: "
                "if it moved, give its new folder (--run DIR)"
            )
        recognizer = Recognizer.load(run_dir or meta["run_dir"], meta["checkpoint"], device)
        recognizer.check_store(store)
    return recognizer


def calibration_meta(recognizer: Recognizer, quantile: float) -> dict[str, Any]:
    """``threshold`` and ``calibration`` entries of a new store's meta; without validation
    classes the threshold is ``None`` (never "unknown") and ``calibration`` says why."""
    config = recognizer.learner.config
    try:
        splits = load_data(config).splits or {}
    except (OSError, ValueError) as err:
        return {"threshold": None, "calibration": {"error": f"cannot load the run's data: {err}"}}
    if "val" not in splits:
        reason = f"dataset {config.dataset} has no validation classes"
        return {"threshold": None, "calibration": {"error": reason}}
    result = calibrate(recognizer.embed, splits["val"], recognizer.distance, recognizer.p, quantile)
    return {"threshold": result.threshold, "calibration": result.to_dict()}
