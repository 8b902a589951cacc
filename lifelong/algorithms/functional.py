"""Functional forward passes for inner loops: a model run with parameters given as tensors.

Inner loops (MAML, Reptile) need the model's output under *other* parameters than its own: the
adapted ``theta'_i`` of each task. Two implementations of one signature, ``forward(params, x)``:

- :class:`ModuleForward`: the reference for any model, one task at a time:
  ``torch.func.functional_call(model, params, x)`` with ``params[name]`` shaped like the model's
  own parameter and ``x`` ``[n, ...]``.
- :class:`TaskForward`: the fast path for :class:`~lifelong.models.conv4.Conv4` and
  :class:`~lifelong.models.mlp.MLP`, for ``G`` tasks at once, each with its own parameters:
  ``params[name]`` is ``[G, *shape]``, ``x`` is ``[G, n, ...]``, the output ``[G, n, out]``.
  Task ``g`` is computed exactly as ``functional_call(model, params[:][g], x[g])`` would
  (same operations, same batch-norm statistics per task), only arranged to be cheaper:

  * activations are ``[n, G*C, H, W]`` in ``channels_last``: the tasks' channels side by side,
    so one native ``batch_norm`` gives every task its own statistics, and convolutions with
    per-task weights are grouped convolutions (``groups=G``);
  * the first convolution (few input channels, where oneDNN is slowest) is an ``unfold`` and a
    batched matrix product;
  * ``MaxPool2d(2)`` runs before the ``ReLU`` it follows (they commute: both are monotone), so the
    ReLU and its derivatives touch a quarter of the values;
  * linear layers with per-task weights are batched matrix products;
  * a pass that will be differentiated twice (``twice=True``: the support pass of second-order
    MAML) keeps the contiguous (NCHW) layout and uses :class:`_BatchNorm`, whose double
    backward is a handful of operations; with 5 shots this halved a second-order
    meta-iteration (8.3 s -> 4.6 s on one core; no measurable change with 1 shot).

Measured on 2 CPU cores (``benchmarks/maml_speed.py``), one task per group (``G = 1``) is the
fastest for Conv-4: the task's activations stay in cache, while 32 tasks side by side do not
(the memory-bound batch-norm passes then run from RAM). No ``vmap``: native batch norm's double
backward under ``vmap`` was measured wrong; here it is exact (checked against the reference
and finite differences in ``tests/test_maml.py``).

Example:
    >>> model = Conv4(1, 28, out_features=5, track_running_stats=False)
    >>> forward = TaskForward.of(model)            # None for unsupported models
    >>> theta = {k: v.expand(4, *v.shape) for k, v in model.named_parameters()}
    >>> forward(theta, torch.rand(4, 10, 1, 28, 28)).shape
    torch.Size([4, 10, 5])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lifelong.models.conv4 import Conv4
from lifelong.models.mlp import MLP

Params = dict[str, Tensor]
"""Parameters by their name in ``model.named_parameters()``."""

Forward = Callable[[Params, Tensor], Tensor]


class ModuleForward:
    """The reference functional forward of any model: one task, ``x [n, ...]``.

    Example:
        >>> forward = ModuleForward(model)
        >>> forward(dict(model.named_parameters()), x)  # == model(x)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,))


@dataclass(frozen=True)
class _Layer:
    """One step of :class:`TaskForward`: ``kind`` and the module it came from."""

    kind: str  # conv | bn | relu | pool | flatten | linear
    name: str
    module: nn.Module


class TaskForward:
    """Forward pass of a Conv-4 or MLP for ``G`` tasks with per-task parameters (module doc).

    Build with :meth:`of`, which returns ``None`` for models it does not cover. :meth:`embed`
    and :meth:`head` split the pass so that ANIL can compute the body once per task.
    """

    def __init__(self, layers: list[_Layer], spatial_mean: bool) -> None:
        self.layers = layers
        self.spatial_mean = spatial_mean

    @classmethod
    def of(cls, model: nn.Module) -> TaskForward | None:
        """The fast forward of ``model``, or ``None`` if it is not a Conv-4 / MLP with a linear
        head made of the layers this class implements (exact types: a subclass may change
        ``forward``)."""
        if type(model) not in (Conv4, MLP) or not isinstance(model.head, nn.Linear):
            return None
        layers = []
        for name, module in model.features.named_modules(prefix="features"):
            if isinstance(module, nn.Sequential):
                continue
            kind = _kind(module)
            if kind is None:
                return None
            layers.append(_Layer(kind, name, module))
        # MaxPool2d(2) after ReLU: swap them (relu(max(x)) == max(relu(x)), same gradients).
        for i in range(len(layers) - 1):
            if layers[i].kind == "relu" and layers[i + 1].kind == "pool":
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return cls(layers, spatial_mean=type(model) is Conv4 and model.strided)

    def __call__(self, params: Params, x: Tensor, twice: bool = False) -> Tensor:
        """Outputs ``[G, n, out]``; ``twice``: the pass will be differentiated twice (the
        support pass of second-order MAML), see :meth:`embed`."""
        return self.head(params, self.embed(params, x, twice))

    def embed(self, params: Params, x: Tensor, twice: bool = False) -> Tensor:
        """Features ``[G, n, D]`` of inputs ``x [G, n, ...]`` (``model.embed`` of each task).

        ``twice`` trades the layout for a cheaper double backward: activations in the
        contiguous (NCHW) layout, where batch norm's reductions are fast, and batch norm through
        :class:`_BatchNorm`, whose backward is a few differentiable operations."""
        groups, n = x.shape[:2]
        h = x  # [G, n, ...] until the first layer; then [n, G*C, H, W] or [G, n, F]
        for layer in self.layers:
            p = (params.get(f"{layer.name}.weight"), params.get(f"{layer.name}.bias"))
            m = layer.module
            if layer.kind == "conv" and h is x:
                h = _first_conv(h, *p, m.stride, m.padding)
                h = h.contiguous() if twice else h
            elif layer.kind == "conv":
                w = p[0].reshape(-1, *p[0].shape[2:])
                b = None if p[1] is None else p[1].reshape(-1)
                h = F.conv2d(h, w, b, m.stride, m.padding, groups=groups)
            elif layer.kind == "bn" and h.dim() == 3:  # [G, n, F] -> [n, G*F] and back
                flat = h.transpose(0, 1).reshape(n, -1)
                h = _batch_norm(flat, *p, m.eps, twice).view(n, groups, -1).transpose(0, 1)
            elif layer.kind == "bn":
                h = _batch_norm(h, *p, m.eps, twice)
            elif layer.kind == "relu":
                h = F.relu(h)
            elif layer.kind == "pool":
                h = F.max_pool2d(h, 2)
            elif layer.kind == "flatten":
                h = h.reshape(groups, n, -1) if h is x else _task_major(h, groups)
            else:  # linear
                h = _linear(h, *p)
        if h.dim() == 4 and self.spatial_mean:  # strided Conv-4: mean over space
            return h.mean((2, 3)).view(n, groups, -1).transpose(0, 1)
        return _task_major(h, groups) if h.dim() == 4 else h

    def head(self, params: Params, h: Tensor) -> Tensor:
        """Outputs ``[G, n, out]`` of the linear head on features ``[G, n, D]``."""
        return _linear(h, params["head.weight"], params["head.bias"])


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        plain = module.groups == 1 and module.dilation == (1, 1)
        plain = plain and isinstance(module.padding, tuple) and module.padding_mode == "zeros"
        return "conv" if plain else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return None if module.track_running_stats else "bn"
    if isinstance(module, nn.MaxPool2d):
        plain = module.kernel_size in (2, (2, 2)) and module.stride in (2, (2, 2))
        plain = plain and module.padding in (0, (0, 0)) and module.dilation in (1, (1, 1))
        return "pool" if plain and not module.ceil_mode and not module.return_indices else None
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Flatten):
        return "flatten" if (module.start_dim, module.end_dim) == (1, -1) else None
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _first_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
) -> Tensor:
    """Convolution of ``x [G, n, C, H, W]`` with per-task ``weight [G, O, C, k, k]`` as an
    ``unfold`` and a batched matrix product; returns ``[n, G*O, H', W']`` in channels_last."""
    groups, n, channels, height, width = x.shape
    out, k = weight.shape[1], weight.shape[-1]
    cols = F.unfold(x.reshape(groups * n, channels, height, width), k, 1, padding, stride)
    out_h = (height + 2 * padding[0] - k) // stride[0] + 1
    out_w = (width + 2 * padding[1] - k) // stride[1] + 1
    taps = cols.shape[1]  # C * k * k
    cols = cols.view(groups, n, taps, out_h * out_w).transpose(2, 3).reshape(groups, -1, taps)
    w = weight.reshape(groups, out, -1).transpose(1, 2)
    h = torch.bmm(cols, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), cols, w)
    h = h.view(groups, n, out_h, out_w, out).permute(1, 2, 3, 0, 4)
    return h.reshape(n, out_h, out_w, groups * out).permute(0, 3, 1, 2)


def _batch_norm(
    h: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, twice: bool
) -> Tensor:
    """Batch norm with the batch's statistics over all dims but the (task-major) channels."""
    weight = None if weight is None else weight.reshape(-1)
    bias = None if bias is None else bias.reshape(-1)
    if twice and weight is not None and bias is not None:
        return _BatchNorm.apply(h, weight, bias, eps)
    return F.batch_norm(h, None, None, weight, bias, training=True, momentum=0.0, eps=eps)


class _BatchNorm(torch.autograd.Function):
    """Affine batch norm with batch statistics: native forward, and a backward that, when its
    own graph is needed (``create_graph``), is the textbook formula in a few differentiable
    operations (statistics recomputed from ``x``)::

        x_hat = (x - mean) * invstd
        d_bias = sum(g),  d_weight = sum(g * x_hat)
        d_x = weight * invstd * (g - (d_bias + x_hat * d_weight) / N)

    Its derivative replaces native batch norm's double backward (a few dozen full-size
    operations); without ``create_graph`` the native backward runs."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        if not torch.is_grad_enabled():
            mask = [True, True, True]
            grads = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, None, None, mean, invstd, True, ctx.eps, mask
            )
            return (*grads, None)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - x.mean(dims, keepdim=True)
        invstd = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + ctx.eps)
        x_hat = centred * invstd
        d_bias = grad.sum(dims)
        d_weight = (grad * x_hat).sum(dims)
        mixed = (d_bias.view(shape) + x_hat * d_weight.view(shape)) / (x.numel() // x.shape[1])
        return (weight.view(shape) * invstd) * (grad - mixed), d_weight, d_bias, None


def _task_major(h: Tensor, groups: int) -> Tensor:
    """``[n, G*C, H, W]`` -> ``[G, n, C*H*W]``, flattened in each task's (C, H, W) order."""
    n = h.shape[0]
    return h.reshape(n, groups, -1, *h.shape[2:]).flatten(2).transpose(0, 1)


def _linear(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``h [G, n, F] @ weight[g].T + bias[g]`` for each task ``g``."""
    w = weight.transpose(1, 2)
    return torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)
