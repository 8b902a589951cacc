"""The base of the streaming class models: sufficient statistics and the learner around them.

A class model classifies features ``z = phi(f(x))`` of a frozen embedding ``f`` (``phi``: the
model's own feature map, the identity but for CL2N) from **sufficient statistics** that are
updated exactly, one example or one chunk at a time:

* per class ``k``: the count ``n_k``, the sum ``s_k = sum z`` and the sum of squares
  ``q_k = sum z * z`` (per dimension);
* over all examples: the Gram matrix ``G = sum z z^T``.

From them: class means ``mu_k = s_k / n_k``, per-class variances ``(q_k - s_k^2 / n_k) /
n_k`` (diagonal Gaussian models, GeMCL) and the pooled within-class scatter ``S_w = G - sum_k
s_k s_k^T / n_k`` (streaming LDA, Hayes & Kanan 2020). Sums are float64 and addition is the
only update, so a model after any stream equals the model fitted on the whole batch, whatever
the order (up to float64 rounding), and adding a class never changes another class's sums.

Example:
    >>> model = NearestMean(protonet.embed, num_classes=600)
    >>> model.observe(images, labels)              # any order, any chunk size
    >>> model.predict(test_images).argmax(-1)      # logits of unseen classes are -inf
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from lifelong.continual.base import ContinualLearner

if TYPE_CHECKING:
    from lifelong.algorithms.base import Algorithm
    from lifelong.data.classes import ClassDataset


class ClassStatistics:
    """Count, sum and sum of squares per class, and the Gram matrix (float64).

    Args:
        num_classes: the most classes held.
        dim: the feature dimension.
        gram: keep the Gram matrix (``O(d^2)``; needed by models with a shared covariance).
        device: where the sums live.
    """

    def __init__(
        self, num_classes: int, dim: int, gram: bool = True, device: torch.device | str = "cpu"
    ) -> None:
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        self.squares = torch.zeros_like(self.sums)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device) if gram else None

    @classmethod
    def of(
        cls,
        counts: Tensor,
        sums: Tensor,
        squares: Tensor,
        gram: Tensor | None,
    ) -> ClassStatistics:
        """Statistics from stored tensors (e.g. a class store's), checked for shape."""
        k, d = sums.shape
        if counts.shape != (k,) or squares.shape != (k, d):
            raise ValueError(
                f"statistics do not fit together: counts {tuple(counts.shape)}, sums "
                f"{tuple(sums.shape)}, squares {tuple(squares.shape)}"
            )
        if gram is not None and gram.shape != (d, d):
            raise ValueError(
                f"a Gram matrix of {d}-dim features is {d}x{d}, got {tuple(gram.shape)}"
            )
        stats = cls(0, d, gram=False)
        stats.counts, stats.sums = counts.long(), sums.double()
        stats.squares = squares.double()
        stats.gram = None if gram is None else gram.double()
        return stats

    @property
    def dim(self) -> int:
        return self.sums.shape[1]

    def add(self, z: Tensor, y: Tensor) -> None:
        """Fold features ``z [n, D]`` with labels ``y [n]`` in (exact sums)."""
        z = z.to(self.sums.device, torch.float64)
        y = y.to(self.sums.device)
        self.counts.index_add_(0, y, torch.ones_like(y))
        self.sums.index_add_(0, y, z)
        self.squares.index_add_(0, y, z * z)
        if self.gram is not None:
            self.gram.addmm_(z.T, z)

    @property
    def seen(self) -> Tensor:
        """``bool [K]``: classes with at least one example."""
        return self.counts > 0

    def means(self) -> Tensor:
        """Class means ``[K, D]`` (zeros for classes without examples)."""
        return self.sums / self.counts.clamp_min(1).unsqueeze(1)

    def deviations(self) -> Tensor:
        """Per class and dimension, the sum of squared deviations from the class mean
        ``q_k - s_k^2 / n_k`` ``[K, D]`` (clamped at 0 against rounding)."""
        n = self.counts.clamp_min(1).unsqueeze(1).double()
        return (self.squares - self.sums.square() / n).clamp_min(0)

    def scatter(self) -> Tensor:
        """The pooled within-class scatter ``S_w = G - sum_k s_k s_k^T / n_k`` ``[D, D]``."""
        if self.gram is None:
            raise ValueError("these statistics keep no Gram matrix (gram=False)")
        seen = self.seen
        s = self.sums[seen] / self.counts[seen].double().sqrt().unsqueeze(1)
        return self.gram - s.T @ s

    @property
    def total(self) -> int:
        return int(self.counts.sum())


class ClassModel(ContinualLearner):
    """A class model over a frozen embedding, fitted from :class:`ClassStatistics`.

    Subclasses say what they are (``name``, ``summary``, ``options``: their hyper-parameters
    with default values; ``grid``: the values of each worth trying on validation classes;
    ``uses_gram``: whether they need the Gram matrix;
    ``needs_training``: whether :meth:`from_run` needs the run's meta-training images) and
    implement :meth:`fit` and :meth:`scores`; a model with its own feature map overrides
    :meth:`features`.

    Args:
        embed: the frozen embedding ``[n, ...] -> [n, D]`` (called without gradient).
        num_classes: the most classes the model holds.
        chunk: images embedded at a time.
        **options: values of the hyper-parameters in ``options``.

    The logits of :meth:`predict` are the model's class scores (log-likelihoods up to a
    constant shared by all classes and all inputs), ``-inf`` for classes not seen;
    :meth:`energy` (minus the best score) is what the open-set threshold of a class store is
    set on.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    options: ClassVar[dict[str, float]] = {}
    grid: ClassVar[dict[str, tuple[float, ...]]] = {}
    uses_gram: ClassVar[bool] = False
    needs_training: ClassVar[bool] = False

    def __init__(
        self,
        embed: Callable[[Tensor], Tensor],
        num_classes: int,
        chunk: int = 1024,
        **options: float,
    ) -> None:
        super().__init__(num_classes)
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ValueError(
                f"classifier {self.name!r} has no option {', '.join(sorted(unknown))} "
                f"(its options: {known})"
            )
        self.settings = {**self.options, **{k: float(v) for k, v in options.items()}}
        self.check_settings()
        self.embed, self.chunk = embed, chunk
        self.stats: ClassStatistics | None = None
        self._fitted: Any = None

    @classmethod
    def from_run(
        cls,
        algorithm: Algorithm,
        num_classes: int,
        training: ClassDataset | None,
        options: dict[str, float],
    ) -> ClassModel:
        """A fresh model over a trained ``algorithm``'s embedding (``training``: the run's
        meta-training split, for models that need facts of it)."""
        return cls(algorithm.embedding(), num_classes, **options)

    def check_settings(self) -> None:
        """Raise a one-line ``ValueError`` for a hyper-parameter out of range."""

    def config(self) -> dict[str, Any]:
        """What rebuilds this model (without its statistics): name and settings, as JSON."""
        return {"name": self.name, **self.settings}

    # ------------------------------------------------------------------ statistics
    def features(self, z: Tensor) -> Tensor:
        """The model's features of embeddings ``z`` (float64): the identity here."""
        return z.double()

    @torch.no_grad()
    def featurize(self, x: Tensor) -> Tensor:
        """``features(f(x))`` of inputs ``x``, a chunk at a time, float64 ``[n, D]``."""
        return torch.cat([self.features(self.embed(part)) for part in x.split(self.chunk)])

    def observe(self, x: Tensor, y: Tensor) -> None:
        self.learn(self.featurize(x), y)

    def learn(self, z: Tensor, y: Tensor) -> None:
        """Fold features ``z`` (of :meth:`featurize`) with labels ``y`` into the statistics."""
        self.record(y)
        if self.stats is None:
            self.stats = ClassStatistics(self.num_classes, z.shape[1], self.uses_gram, z.device)
        self.stats.add(z, y)
        self._fitted = None

    def load(self, stats: ClassStatistics) -> None:
        """Take ``stats`` (e.g. a class store's) as the model's statistics."""
        if self.uses_gram and stats.gram is None:
            raise ValueError(f"classifier {self.name!r} needs the Gram matrix of the features")
        if stats.counts.shape[0] != self.num_classes:
            raise ValueError(
                f"statistics of {stats.counts.shape[0]} classes, model of {self.num_classes}"
            )
        self.stats, self._fitted = stats, None
        self.seen = stats.seen.cpu()

    # ------------------------------------------------------------------ prediction
    def fitted(self) -> Any:
        """The model's parameters from the current statistics (computed once per change)."""
        if self.stats is None or not bool(self.stats.seen.any()):
            raise ValueError(f"the {self.name} classifier has not seen any example yet")
        if self._fitted is None:
            self._fitted = self.fit(self.stats)
        return self._fitted

    @abstractmethod
    def fit(self, stats: ClassStatistics) -> Any:
        """The model's parameters from sufficient statistics (``stats.seen`` classes)."""

    @abstractmethod
    def scores(self, z: Tensor, fitted: Any) -> Tensor:
        """Class scores ``[n, K]`` of features ``z [n, D]`` (float64)."""

    @torch.no_grad()
    def logits_of(self, z: Tensor) -> Tensor:
        """Scores of features ``z`` with unseen classes at ``-inf`` (float32)."""
        fitted = self.fitted()
        return self.mask_unseen(self.scores(z.to(self.stats.sums.device), fitted).float())

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.logits_of(self.featurize(x))

    def energies(self, logits: Tensor) -> Tensor:
        """Per class, how far an input is from the class: minus the score of :meth:`predict`'s
        ``logits`` ``[n, K]``."""
        return -logits

    def energy(self, logits: Tensor) -> Tensor:
        """``[n]``: the energy to the nearest class, large for an input far from every class
        (the open-set statistic of a class store)."""
        return self.energies(logits).amin(-1)
