"""The class models by name, and how to build one for a trained run.

This module imports no torch at module level (the command line reads the names for its help);
a class is imported when it is used. A new class model is one module with a subclass of
:class:`~lifelong.continual.classifiers.base.ClassModel` and one line here.

Example:
    >>> model = make_classifier("slda", trained.algorithm, num_classes=600)
    >>> same = build_classifier(model.config(), trained.algorithm.embedding(), 600)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from lifelong.algorithms.base import Algorithm
    from lifelong.continual.classifiers.base import ClassModel
    from lifelong.data.classes import ClassDataset

_CLASSIFIERS: dict[str, str] = {
    "mean": "lifelong.continual.classifiers.mean:NearestMean",
    "cl2n": "lifelong.continual.classifiers.cl2n:CL2N",
    "slda": "lifelong.continual.classifiers.slda:SLDA",
    "gaussian": "lifelong.continual.classifiers.gaussian:Gaussian",
    "gaussian-predictive": "lifelong.continual.classifiers.gaussian:GaussianPredictive",
}

DEFAULT_CLASSIFIER = "slda"
"""The class model used when none is named: the best measured on continual Omniglot (600
classes, 10 seeds): on the embedding of ``configs/continual-omniglot-best.yaml`` streaming
LDA 90.5 ± 0.4%, nearest mean 89.9 ± 0.3%
(``benchmarks/results/continual_classifiers_60w1s_pool3-8k-aug.json``); on the 576-d one
without augmentation SLDA 89.9 ± 0.4%, CL2N 89.1 ± 0.4%, Gaussian MAP 86.9 ± 0.3%
(``continual_classifiers_60w1s_pool3-8k*.json``)."""


def classifier_names() -> tuple[str, ...]:
    return tuple(_CLASSIFIERS)


def check_classifier(name: str) -> None:
    """A one-line ``ValueError`` unless ``name`` is a class model."""
    if name not in _CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; choose one of {', '.join(_CLASSIFIERS)}")


def classifier_class(name: str) -> type[ClassModel]:
    """The class of the class model ``name`` (imported on first use)."""
    check_classifier(name)
    module, attribute = _CLASSIFIERS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def parse_options(items: list[str] | None) -> dict[str, float]:
    """``["shrinkage=0.2", ...]`` (command-line ``--classifier-option``) as a dict."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            options[key.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"--classifier-option takes KEY=NUMBER (e.g. shrinkage=0.2), got {item!r}"
            ) from None
    return options


def make_classifier(
    name: str,
    algorithm: Algorithm,
    num_classes: int,
    training: ClassDataset | None = None,
    options: Mapping[str, float] | None = None,
) -> ClassModel:
    """A fresh class model ``name`` over ``algorithm``'s embedding (in eval mode) for
    ``num_classes`` classes. The nearest mean takes the run's distance and temperature; CL2N
    needs the run's meta-training split ``training`` for its feature mean.

    Raises:
        ValueError: an unknown classifier or option, CL2N without training data, a
            regression run.
    """
    cls = classifier_class(name)
    if algorithm.regression:
        raise ValueError(
            "prototype memory classifies by class means, but this is a regression run "
            f"({name} classifier): use --learner online-sgd, online-finetune or replay"
        )
    return cls.from_run(algorithm, num_classes, training, dict(options or {}))


def feature_map(config: Mapping[str, Any]) -> Callable[[Tensor], Tensor]:
    """The feature map ``phi`` of the class model of ``config``: embeddings ``[n, D]`` to the
    float64 features its statistics are sums of (the identity for most models)."""
    return build_classifier(config, _no_embedding, 1).features


def _no_embedding(x: Tensor) -> Tensor:
    raise ValueError("this class model was built for its feature map only")


def build_classifier(
    config: Mapping[str, Any], embed: Callable[[Tensor], Tensor], num_classes: int
) -> ClassModel:
    """The class model of ``config`` (a :meth:`ClassModel.config`, e.g. from a store)."""
    settings = dict(config)
    return classifier_class(str(settings.pop("name")))(embed, num_classes, **settings)
