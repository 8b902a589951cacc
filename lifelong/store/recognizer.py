"""A trained run's embedding put to work on a class store: learn classes, recognise images.

:class:`Recognizer` loads a run once (``lifelong.load``: the run's own preprocessing of
image files) and

* **learns**: embeds a few images of a class and adds them to the store's statistics
  (:meth:`ClassStore.add <lifelong.store.db.ClassStore.add>`), keeping each image at the
  model's resolution (and the original file when asked);
* **recognises**: fits the store's class model (:mod:`lifelong.continual.classifiers`: by
  default the nearest mean, the ProtoNet rule ``p(y=k|x) = softmax_k(-d(f(x), c_k) / T)``,
  Snell et al. 2017, eq. 2) from the store's statistics; an image whose energy to the nearest
  class exceeds the open-set threshold (:mod:`lifelong.store.calibration`) is "unknown".

The predictions equal those of ``Learner.adapt(...).predict(...)`` (and ``lifelong
predict``) and of ``lifelong stream`` with the same class model and support images.
Embeddings must not depend on the other images of a batch, so runs whose batch norm uses
batch statistics (the MAML family, Reptile) are refused. The store records a fingerprint of
the run's weights (:func:`weights_fingerprint`) and a store made with other weights is
refused.

Example:
    >>> recognizer = Recognizer.load("runs/pn")
    >>> with open_store("shop.db", recognizer) as store:
    ...     recognizer.learn(store, "mug", [ImageFile.read(p) for p in mug_photos])
    ...     recognizer.recognize(store, [ImageFile.read("photo.jpg")])[0].label
    'mug'
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from lifelong.algorithms.registry import algorithm_classes
from lifelong.api import Learner, load
from lifelong.continual.classifiers.base import ClassModel
from lifelong.continual.classifiers.registry import build_classifier, classifier_class
from lifelong.data.images import ImageTooLarge as ImageTooLarge  # re-exported for the store
from lifelong.data.images import open_image
from lifelong.pipeline.data import load_data
from lifelong.store.calibration import calibrate
from lifelong.store.db import Added, ClassStore, EmptyStore, ExampleFile, StoreError

MAX_PIXELS = 40_000_000


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
        """The image, decoded as :func:`~lifelong.data.images.open_image` does (large images
        reduced while decoding); :class:`~lifelong.data.images.ImageDecodeError` if it is not
        an image, :class:`ImageTooLarge` if it has more than ``max_pixels`` pixels (checked
        on the header, before decoding)."""
        return open_image(self.data, self.name, max_pixels)


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
        self.fingerprint = weights_fingerprint(algorithm)
        self._lock = threading.Lock()
        self._cached: tuple[tuple[Any, ...], list[str], ClassModel] | None = None

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> Recognizer:
        return cls(load(run_dir, checkpoint, device), checkpoint)

    @property
    def run_dir(self) -> Path:
        return Path(self.learner.run.run_dir).resolve()

    def meta(self, classifier: ClassModel) -> dict[str, Any]:
        """What a new store records about the run and its class model."""
        config, shape = self.learner.config, self.learner.facts.image_shape or ()
        return {
            "classifier": classifier.config(),
            "run_dir": str(self.run_dir),
            "checkpoint": self.checkpoint,
            "fingerprint": self.fingerprint,
            "algorithm": config.algorithm,
            "dataset": config.dataset,
            "image_shape": list(shape),
            "embedding_dim": int(self.embed(torch.zeros(1, *shape)).shape[1]),
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
        keep_originals: bool = False,
    ) -> Added:
        """Add the images ``files`` to class ``name`` of ``store`` (one transaction), each
        with its image at the model's resolution (and the file itself if
        ``keep_originals``)."""
        x = self.images(files, max_pixels)
        pixels = (x * 255).round().to(torch.uint8)
        examples = [
            ExampleFile(
                f.name,
                f.sha256,
                image=p.numpy().tobytes(),
                original=f.data if keep_originals else None,
            )
            for f, p in zip(files, pixels, strict=True)
        ]
        return store.add(name, self.embed(x), examples)

    def model(self, store: ClassStore) -> tuple[list[str], ClassModel]:
        """The store's classes and its class model over this run's embedding, kept while the
        store (its file, its creation time, its generation of writes) stays the same."""
        with store.snapshot():
            key = (str(store.path.resolve()), store.meta.get("created"), store.generation())
            cached = self._cached
            if cached is None or cached[0] != key:
                cached = self._cached = (key, *store_model(store, self._embed_raw))
        return cached[1], cached[2]

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
        names, model = self.model(store)
        with self._lock:
            logits = model.predict(x).float().cpu()
        probabilities = logits.softmax(-1)
        distances = model.energies(logits)
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


def store_model(
    store: ClassStore, embed: Callable[[Tensor], Tensor]
) -> tuple[list[str], ClassModel]:
    """The classes of ``store`` and its class model over ``embed``, fitted from the store's
    statistics; :class:`EmptyStore` before any class is taught."""
    names, stats = store.statistics()
    if not names:
        raise EmptyStore(
            f"store {str(store.path)!r} has no classes yet: teach it some with "
            "`lifelong learn RUN_DIR --store FILE --class NAME IMAGE...`"
        )
    model = build_classifier(store.classifier, embed, len(names))
    model.load(stats)
    return names, model


def open_store(
    path: str | Path,
    recognizer: Recognizer,
    create: bool = True,
    quantile: float = 0.95,
    classifier: str | None = None,
    options: dict[str, float] | None = None,
) -> ClassStore:
    """The store at ``path`` for ``recognizer``'s run: made with the class model
    ``classifier`` (default: the recognizer's) and calibrated on the run's validation classes
    (see :mod:`lifelong.store.calibration`) when ``create`` and there is none yet; an existing
    store must belong to the same weights, and to ``classifier`` when one is named."""
    path = Path(path)
    if not create or (path.is_file() and path.stat().st_size > 0):
        store = ClassStore.open(path)
    else:
        model = recognizer.learner.class_model(1, classifier, options)
        meta = {**recognizer.meta(model), **calibration_meta(recognizer, model, quantile)}
        store = ClassStore.create(path, meta)
    try:
        recognizer.check_store(store)
        kept = store.classifier["name"]
        if classifier is not None and classifier != kept:
            raise StoreError(
                f"store {str(path)!r} keeps the statistics of the {kept} classifier: change it "
                f"with `lifelong migrate --store {path} --classifier {classifier}`"
            )
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


def calibration_meta(recognizer: Recognizer, model: ClassModel, quantile: float) -> dict[str, Any]:
    """``threshold`` and ``calibration`` entries of a new store's meta for the class model
    ``model`` (its kind and settings); without validation classes the threshold is ``None``
    (never "unknown") and ``calibration`` says why."""
    config = recognizer.learner.config
    try:
        splits = load_data(config).splits or {}
    except (OSError, ValueError) as err:
        return {"threshold": None, "calibration": {"error": f"cannot load the run's data: {err}"}}
    if "val" not in splits:
        reason = f"dataset {config.dataset} has no validation classes"
        return {"threshold": None, "calibration": {"error": reason}}

    def fresh(num_classes: int) -> ClassModel:
        return build_classifier(model.config(), recognizer.embed, num_classes)

    result = calibrate(fresh, splits["val"], quantile)
    return {"threshold": result.threshold, "calibration": result.to_dict()}


def migrate_store(
    path: str | Path,
    run_dir: str | Path | None = None,
    classifier: str | None = None,
    options: dict[str, float] | None = None,
    checkpoint: str = "best",
    quantile: float = 0.95,
    device: str = "cpu",
) -> str:
    """Move the store at ``path`` to the run ``run_dir`` (every example re-embedded from the
    image the store kept at the model's resolution) and/or to the class model ``classifier``
    (with ``options``; by default the store's own, with its settings), recalibrate its
    threshold, all in one transaction (:meth:`ClassStore.refit`). Returns a one-line report.

    Raises:
        StoreError: a run with another input size, or examples without a kept image (learned
            into a schema-1 store): nothing is changed.
    """
    with ClassStore.open(path) as store:
        meta = store.meta
        if run_dir is None:
            recognizer = recognizer_for(path, None, device)
        else:
            recognizer = Recognizer.load(run_dir, checkpoint, device)
        kept = store.classifier
        name = classifier or kept["name"]
        if not options:  # the store's own settings when it keeps its classifier
            own = classifier_class(name).options
            options = {k: v for k, v in kept.items() if k in own} if name == kept["name"] else {}
        model = recognizer.learner.class_model(1, name, options)
        embeddings = None
        if run_dir is not None:
            embeddings = reembed(store, recognizer, meta)
        new_meta = {**recognizer.meta(model), **calibration_meta(recognizer, model, quantile)}
        store.refit(new_meta, embeddings)
        count = len(store.classes())
    moved = f"to run {new_meta['run_dir']}, " if run_dir is not None else ""
    return (
        f"migrated {path} {moved}classifier {name} ({count} classes"
        f"{f', {len(embeddings)} examples re-embedded' if embeddings is not None else ''})"
    )


def reembed(store: ClassStore, recognizer: Recognizer, meta: dict[str, Any]) -> dict[int, Tensor]:
    """The new run's embedding of every example's kept image (example id -> ``[D]``)."""
    shape = list(recognizer.learner.facts.image_shape or ())
    if shape != list(meta.get("image_shape") or []):
        raise StoreError(
            f"store {str(store.path)!r} keeps images of {meta.get('image_shape')}, but run "
            f"{str(recognizer.run_dir)!r} takes {shape}: it cannot re-embed them"
        )
    rows = store.example_images()
    missing = sum(image is None for _, image in rows)
    if missing:
        raise StoreError(
            f"{missing} examples of store {str(store.path)!r} were learned before stores kept "
            "images (schema 1): they cannot be re-embedded; learn them again into a new store"
        )
    embeddings: dict[int, Tensor] = {}
    for start in range(0, len(rows), 256):
        part = rows[start : start + 256]
        pixels = torch.frombuffer(
            bytearray(b"".join(image for _, image in part)), dtype=torch.uint8
        )
        z = recognizer.embed(pixels.reshape(len(part), *shape).float() / 255)
        embeddings.update({i: v for (i, _), v in zip(part, z, strict=True)})
    return embeddings
