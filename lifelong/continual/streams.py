"""Streams of classes (or functions) for lifelong learning, seeded.

A stream shows a learner new classes one step at a time. Each step brings the training examples
of its classes, in the order the learner must see them, and the held-out test examples of
those classes, which are never shown for training and on which every later evaluation scores
the learner. Labels are global and given in order of arrival: the first class of the stream is
label 0, and so on, so a learner's output ``k`` is the ``k``-th class it met.

* :class:`ClassStream`: class-incremental learning over any
  :class:`~lifelong.data.classes.ClassDataset`: classes in a seeded random order, one at a time
  or in groups; within a step its examples are shuffled (for one class a step, this is the
  sequential single pass of Javed & White 2019 and Beaulieu et al. 2020), each seen once or for
  ``passes`` passes (reshuffled each pass).
* :func:`task_sequence`: a sequence of N-way K-shot tasks with disjoint classes (a
  :class:`ClassStream` in groups of N with K training and Q test examples per class), for
  task-incremental evaluation.
* :class:`SineStream`: the incremental sine waves of Javed & White 2019 (section 4.1): ``y = A
  sin(x - phase)`` functions learned one after another, the input carrying the one-hot id of the
  function.

Example:
    >>> stream = ClassStream(splits["test"], classes=600, train_per_class=15, test_per_class=5,
    ...                      seed=0)
    >>> for step in stream:                       # 600 steps of one class
    ...     step = step.to("cpu")                   # images as floats in [0, 1]
    ...     learner.observe(step.train_x, step.train_y)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from lifelong.data.classes import ClassDataset
from lifelong.data.episodes import stream_generator, to_device
from lifelong.data.sinusoid import sinusoid


@dataclass
class Step:
    """One step of a stream.

    Attributes:
        index: the step's position in the stream.
        classes: the global labels of the classes this step introduces ``[m]``.
        train_x, train_y: the examples to learn from, in presentation order (all passes).
        test_x, test_y: held-out examples of the step's classes.

    Images stay ``uint8`` until :meth:`to` turns them into floats in ``[0, 1]``.
    """

    index: int
    classes: Tensor
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Step:
        """Move to ``device`` with :func:`~lifelong.data.episodes.to_device`: ``uint8`` images
        become ``dtype`` in ``[0, 1]``, other floats become ``dtype``, labels stay integer."""
        return Step(
            self.index,
            self.classes.to(device),
            to_device(self.train_x, device, dtype),
            to_device(self.train_y, device, dtype),
            to_device(self.test_x, device, dtype),
            to_device(self.test_y, device, dtype),
        )


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ClassStream:
    """Class-incremental stream over a :class:`~lifelong.data.classes.ClassDataset`.

    Args:
        dataset: the classes to draw from (e.g. the Omniglot evaluation set).
        classes: how many classes the stream has (drawn at random, without repetition);
            ``None``: all of them.
        classes_per_step: classes introduced at each step.
        train_per_class: training examples of each class.
        test_per_class: held-out test examples of each class, disjoint from its training ones.
        passes: how many times the learner sees each training example (1: online).
        seed: the class order, the train/test split of each class and the presentation order
            depend on the seed only.

    Raises:
        ValueError: more classes than the dataset has, more examples per class than a class
            has, or a number of classes that is not a multiple of ``classes_per_step``.

    Example:
        >>> stream = ClassStream(splits["test"], classes=600, seed=3)  # Omniglot, 15 + 5
        >>> len(stream), stream.boundaries[:3]
        (600, [1, 2, 3])
    """

    task_aware = False
    regression = False

    def __init__(
        self,
        dataset: ClassDataset,
        classes: int | None = None,
        classes_per_step: int = 1,
        train_per_class: int = 15,
        test_per_class: int = 5,
        passes: int = 1,
        seed: int = 0,
    ) -> None:
        classes = len(dataset) if classes is None else classes
        check_positive(
            classes=classes,
            classes_per_step=classes_per_step,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            passes=passes,
        )
        if classes > len(dataset):
            raise ValueError(
                f"a stream of {classes} classes needs {classes} classes, but "
                f"{dataset.name!r} has only {len(dataset)}"
            )
        per_class = train_per_class + test_per_class
        if per_class > dataset.min_count:
            smallest = dataset.classes[int(dataset.counts.argmin())].label
            raise ValueError(
                f"{train_per_class} training + {test_per_class} test examples = {per_class} per "
                f"class, but class {smallest!r} of {dataset.name!r} has only {dataset.min_count}"
            )
        if classes % classes_per_step:
            raise ValueError(
                f"{classes} classes do not split into steps of {classes_per_step} classes"
            )
        self.dataset = dataset
        self.num_classes, self.classes_per_step = classes, classes_per_step
        self.train_per_class, self.test_per_class = train_per_class, test_per_class
        self.passes, self.seed = passes, seed
        generator = stream_generator(seed)
        self.class_ids = torch.randperm(len(dataset), generator=generator)[:classes]
        """The dataset class behind each label: label ``k`` is dataset class
        ``class_ids[k]``."""
        counts = dataset.counts[self.class_ids]
        keys = torch.rand(classes, int(counts.max()), generator=generator)
        keys.masked_fill_(torch.arange(keys.shape[1]) >= counts.unsqueeze(1), -1.0)
        local = keys.topk(per_class, dim=1).indices  # a random choice of images per class
        index = dataset.offsets[self.class_ids].unsqueeze(1) + local
        self.train_index = index[:, :train_per_class]
        self.test_index = index[:, train_per_class:]

    def __len__(self) -> int:
        return self.num_classes // self.classes_per_step

    @property
    def boundaries(self) -> list[int]:
        """The number of classes seen after each step."""
        return [(i + 1) * self.classes_per_step for i in range(len(self))]

    def step(self, index: int) -> Step:
        """Step ``index`` (any order, always the same content)."""
        if not 0 <= index < len(self):
            raise IndexError(f"step {index} of a stream of {len(self)} steps")
        labels = torch.arange(index * self.classes_per_step, (index + 1) * self.classes_per_step)
        generator = stream_generator(self.seed, 1 + index)
        train = self.train_index[labels].reshape(-1)
        train_labels = labels.repeat_interleave(self.train_per_class)
        order = torch.cat(
            [torch.randperm(train.numel(), generator=generator) for _ in range(self.passes)]
        )
        images = self.dataset.images
        return Step(
            index,
            labels,
            images.index_select(0, train[order]),
            train_labels[order],
            images.index_select(0, self.test_index[labels].reshape(-1)),
            labels.repeat_interleave(self.test_per_class),
        )

    def __iter__(self) -> Iterator[Step]:
        for index in range(len(self)):
            yield self.step(index)


def task_sequence(
    dataset: ClassDataset,
    tasks: int,
    ways: int = 5,
    shots: int = 5,
    queries: int = 15,
    passes: int = 1,
    seed: int = 0,
) -> ClassStream:
    """A sequence of ``tasks`` N-way K-shot tasks with disjoint classes: step ``i`` is task
    ``i`` with its ``shots`` training and ``queries`` test examples per class. Evaluation is
    task-aware (``task_aware``): a test example is classified among its own task's classes,
    as in task-incremental learning (van de Ven & Tolias 2019, "Three scenarios for continual
    learning")."""
    check_positive(tasks=tasks, ways=ways)
    stream = ClassStream(dataset, tasks * ways, ways, shots, queries, passes, seed)
    stream.task_aware = True
    return stream


class SineStream:
    """Incremental sine waves (Javed & White 2019, section 4.1): ``functions`` sine functions
    ``A sin(x - phase)``, ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, learned one after another.
    An input is ``[x, one-hot(function)]`` (``1 + functions`` values, ``x ~ U[-5, 5]``), the
    target ``y`` is ``[1]``; each function is one step and one "class" of the accuracy
    matrix, whose metric is the mean squared error.

    Args:
        functions: how many functions (the one-hot width, fixed by the network's input size).
        train_per_function: training points of each function (seen in order, once per pass).
        test_per_function: held-out points of each function.
        passes: how many times each training point is seen.
        seed: everything depends on the seed only.
    """

    task_aware = False
    regression = True

    def __init__(
        self,
        functions: int = 10,
        train_per_function: int = 320,
        test_per_function: int = 100,
        passes: int = 1,
        seed: int = 0,
    ) -> None:
        check_positive(
            functions=functions,
            train_per_function=train_per_function,
            test_per_function=test_per_function,
            passes=passes,
        )
        self.num_classes, self.classes_per_step = functions, 1
        self.train_per_class, self.test_per_class = train_per_function, test_per_function
        self.passes, self.seed = passes, seed
        generator = stream_generator(seed)
        self.amplitude = torch.rand(functions, generator=generator) * 4.9 + 0.1
        self.phase = torch.rand(functions, generator=generator) * math.pi
        per_function = train_per_function + test_per_function
        self.x = torch.rand(functions, per_function, generator=generator) * 10.0 - 5.0

    def __len__(self) -> int:
        return self.num_classes

    @property
    def boundaries(self) -> list[int]:
        return list(range(1, self.num_classes + 1))

    def inputs(self, x: Tensor, function: int) -> Tensor:
        """``[n, 1 + functions]``: the points ``x [n]`` with the one-hot id of ``function``."""
        onehot = torch.zeros(x.shape[0], self.num_classes)
        onehot[:, function] = 1.0
        return torch.cat([x.unsqueeze(1), onehot], dim=1)

    def step(self, index: int) -> Step:
        if not 0 <= index < len(self):
            raise IndexError(f"step {index} of a stream of {len(self)} steps")
        generator = stream_generator(self.seed, 1 + index)
        x = self.x[index]
        y = sinusoid(x, self.amplitude[index], self.phase[index]).unsqueeze(1)
        n = self.train_per_class
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(self.passes)])
        return Step(
            index,
            torch.tensor([index]),
            self.inputs(x[:n][order], index),
            y[:n][order],
            self.inputs(x[n:], index),
            y[n:],
        )

    def __iter__(self) -> Iterator[Step]:
        for index in range(len(self)):
            yield self.step(index)
