"""Use a trained run on your own data: ``lifelong.load(RUN_DIR)``.

A :class:`Learner` wraps the run's algorithm with the run's own preprocessing, so that a few
labelled images of *new* classes (the support set) are enough to classify further images:

1. each image (a path, a Pillow image or a tensor) becomes ``C x H x W`` at the run's size and
   channel count with the same LANCZOS resampling as the training data
   (:mod:`lifelong.data.images`); colour files are converted to grayscale for grayscale runs
   (and vice versa), transparent pixels are composited onto white;
2. **ink convention**: grayscale datasets such as Omniglot and strokes store ink = 1 (bright
   strokes on a dark background). The run records its training background (``"dark"`` or
   ``"bright"``, from the mean of the images' outermost pixel ring); a user image whose own
   border ring falls on the other side of mid-grey is inverted. So black-on-white scans and
   drawings work as they are, and images already in the training convention are left alone.
   Colour runs never invert.

Tensors are taken as images: ``uint8`` in ``0..255`` or floats in ``[0, 1]``, ``[C, H, W]`` or
a batch ``[N, C, H, W]``, with exactly the run's channel count (no guessing which channel is
which); they are resized and inverted like files.

A run whose embedding is a fixed function of each image (ProtoNet, the transfer baseline, OML:
``Algorithm.can_back_store()``) learns the support set with a **class model** of
:mod:`lifelong.continual.classifiers` (``classifier``: the nearest mean by default, CL2N,
streaming LDA or Gaussians), the same rule, fitted from the same sums, as ``lifelong stream``
and the class store; other runs (the MAML family) adapt as their algorithm does.

Example:
    >>> learner = lifelong.load("runs/omniglot-proto")
    >>> learner.adapt(["alpha/1.png", "beta/1.png"], ["alpha", "beta"])
    >>> [p.label for p in learner.predict(["query.png"])]
    ['beta']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lifelong.algorithms.base import Predictor
from lifelong.continual.classifiers.base import ClassModel
from lifelong.continual.classifiers.registry import (
    DEFAULT_CLASSIFIER,
    classifier_class,
    make_classifier,
)
from lifelong.data.classes import ClassDataset
from lifelong.data.images import IMAGE_SUFFIXES, open_image, to_tensor
from lifelong.pipeline.data import background_of, load_data
from lifelong.pipeline.device import resolve_device
from lifelong.pipeline.trained import Trained, load_trained

ImageLike = str | Path | Image.Image | Tensor


@dataclass(frozen=True)
class Prediction:
    """The predicted class of one query image, its probability and those of every class."""

    label: str
    probability: float
    probabilities: dict[str, float]


class Learner:
    """A trained run, ready to learn new classes from a few examples (see the module doc).

    Classification: :meth:`adapt` with images and their labels (any strings or numbers),
    then :meth:`predict` returns one :class:`Prediction` per query image. Regression runs
    (sinusoids) take float tensors ``x [K, 1]``, ``y [K, 1]`` and predict a tensor.
    """

    def __init__(
        self,
        trained: Trained,
        device: torch.device,
        classifier: str = DEFAULT_CLASSIFIER,
        classifier_options: dict[str, float] | None = None,
    ) -> None:
        classifier_class(classifier)
        self.run = trained
        self.config, self.facts = trained.config, trained.facts
        self.device = device
        self.algorithm = trained.algorithm.to(device).eval()
        self.classifier, self.classifier_options = classifier, dict(classifier_options or {})
        self.classes: list[str] = []
        self._predictor: Predictor | None = None
        self._training: ClassDataset | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Learner({c.algorithm} on {c.dataset}, {c.ways}-way {c.shots}-shot, "
            f"iteration {self.run.step}, run {str(self.run.run_dir)!r})"
        )

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Images as the model sees them: ``float [N, C, H, W]`` in ``[0, 1]``."""
        if self.facts.image_shape is None:
            raise ValueError(f"run {str(self.run.run_dir)!r} is a regression run: it takes tensors")
        items: list[ImageLike]
        if isinstance(images, Tensor) and images.dim() == 4:
            items = list(images)
        elif isinstance(images, str | Path | Image.Image | Tensor):
            items = [images]
        else:
            items = list(images)
        if not items:
            raise ValueError("no images given")
        return torch.stack([self._image(item, i) for i, item in enumerate(items)]).float() / 255

    def _image(self, item: ImageLike, index: int) -> Tensor:
        channels, height, width = self.facts.image_shape or (0, 0, 0)
        if isinstance(item, Tensor):
            image = _tensor_image(item, channels, index)
        elif isinstance(item, Image.Image):
            image = item
        else:
            image = open_image(item)
        pixels = to_tensor(image, (height, width), channels)
        background = self.facts.background
        if channels == 1 and background and background_of(pixels[None]) != background:
            pixels = 255 - pixels
        return pixels

    # ------------------------------------------------------------------ class models
    @property
    def uses_class_model(self) -> bool:
        """Whether :meth:`adapt` fits a class model (a fixed per-image embedding)."""
        return not self.facts.regression and type(self.run.algorithm).can_back_store()

    def class_model(
        self,
        num_classes: int,
        name: str | None = None,
        options: dict[str, float] | None = None,
    ) -> ClassModel:
        """A fresh class model (``name``: default this learner's ``classifier``) over the
        run's embedding; CL2N's feature mean comes from the run's meta-training images."""
        name = name or self.classifier
        if options is None:
            options = self.classifier_options if name == self.classifier else {}
        training = None
        if classifier_class(name).needs_training:
            if self._training is None:
                self._training = load_data(self.config).splits["train"]
            training = self._training
        return make_classifier(name, self.algorithm, num_classes, training, options)

    # ------------------------------------------------------------------ adapt and predict
    def adapt(
        self, support_images: ImageLike | Sequence[ImageLike] | Tensor, support_labels: Sequence
    ) -> Learner:
        """Learn a task from labelled examples; the classes are the distinct labels, in order
        of first appearance. Returns ``self``."""
        labels = support_labels.tolist() if isinstance(support_labels, Tensor) else support_labels
        if self.facts.regression:
            x, y = _regression_tensor(support_images), _regression_tensor(labels)
            self.classes = []
        else:
            x = self.preprocess(support_images)
            if len(labels) != x.shape[0]:
                raise ValueError(f"{x.shape[0]} support images but {len(labels)} labels")
            self.classes = list(dict.fromkeys(str(label) for label in labels))
            if len(self.classes) < 2:
                raise ValueError(
                    f"the support set has one class ({self.classes[0]!r}): give examples of at "
                    "least 2 classes, one to tell apart from the other"
                )
            y = torch.tensor([self.classes.index(str(label)) for label in labels])
            if self.run.algorithm.fixed_head and len(self.classes) != self.config.ways:
                raise ValueError(
                    f"this {self.config.algorithm} run has a {self.config.ways}-way head, but the "
                    f"support set has {len(self.classes)} classes"
                )
        ways = len(self.classes)
        if self.uses_class_model:
            model = self.class_model(ways)
            model.observe(x.to(self.device), y.to(self.device))
            self._predictor = model.predict
        else:
            self._predictor = self.algorithm.adapt(x.to(self.device), y.to(self.device), ways)
        return self

    def predict(
        self, query_images: ImageLike | Sequence[ImageLike] | Tensor, batch_size: int = 256
    ) -> list[Prediction] | Tensor:
        """Classify query images (one :class:`Prediction` each), or, for a regression run,
        the predictions ``[n, 1]`` at inputs ``x``."""
        if self._predictor is None:
            raise ValueError("call adapt(support_images, support_labels) before predict")
        if self.facts.regression:
            with torch.no_grad():
                return self._predictor(_regression_tensor(query_images).to(self.device)).cpu()
        x = self.preprocess(query_images)
        with torch.no_grad():
            logits = torch.cat([self._predictor(c.to(self.device)) for c in x.split(batch_size)])
        probabilities = logits.float().softmax(-1).cpu()
        best = probabilities.argmax(-1)
        return [
            Prediction(
                self.classes[int(k)],
                float(p[k]),
                {name: float(q) for name, q in zip(self.classes, p, strict=True)},
            )
            for p, k in zip(probabilities, best, strict=True)
        ]


def load(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "cpu",
    classifier: str = DEFAULT_CLASSIFIER,
    classifier_options: dict[str, float] | None = None,
) -> Learner:
    """The trained learner of a run folder (its ``best`` checkpoint: the best validation
    metric; ``last`` for the final weights) with the class model ``classifier`` (see the
    module doc)."""
    trained = load_trained(run_dir, checkpoint)
    return Learner(trained, resolve_device(device), classifier, classifier_options)


def image_folder(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The images and labels of a support folder with one sub-folder per class
    (``support/alpha/1.png``, ``support/beta/1.png`` -> labels ``alpha``, ``beta``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"support {str(folder)!r} is a file: give a folder with one sub-folder of images "
            "per class"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"support folder {str(folder)!r} does not exist")
    paths: list[Path] = []
    labels: list[str] = []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"support folder {str(folder)!r} has no class sub-folders")
    for class_dir in classes:
        images = image_files(class_dir)
        if not images:
            raise ValueError(f"class folder {str(class_dir)!r} has no images")
        paths += images
        labels += [class_dir.name] * len(images)
    return paths, labels


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def image_paths(items: list[Path], what: str = "") -> list[Path]:
    """Files as given, folders as their image files (:func:`image_files`); a missing path or
    an empty folder is a ``ValueError`` (``what`` prefixes its nouns, e.g. ``"query "``)."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            found = image_files(item)
            if not found:
                raise ValueError(f"{what}folder {str(item)!r} has no images")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise ValueError(f"{what}image {str(item)!r} does not exist")
    return paths


def _tensor_image(tensor: Tensor, channels: int, index: int) -> Image.Image:
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] != channels:
        raise ValueError(
            f"image {index} is a tensor of shape {tuple(tensor.shape)}; this run expects "
            f"{channels} channel{'s' if channels > 1 else ''} ([{channels}, H, W])"
        )
    if tensor.is_floating_point():
        tensor = (tensor.detach().clamp(0, 1) * 255).round()
    array = tensor.detach().cpu().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array[..., 0] if channels == 1 else array))


def _regression_tensor(values: object) -> Tensor:
    x = torch.as_tensor(values, dtype=torch.float32)
    return x.reshape(-1, 1) if x.dim() <= 1 else x
