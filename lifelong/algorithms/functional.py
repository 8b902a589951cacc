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
    so one batch norm gives every task its own statistics, and convolutions with per-task
    weights are grouped convolutions (``groups=G``);
  * the first convolution (few input channels, where oneDNN is slowest) and the batch norm
    after it are one matrix product of the image patches: the statistics of a linear map of
    the patches follow from the patches' small covariance matrix (:func:`_first_conv`), so the
    largest activations (64 x 28 x 28 per image) are never read for statistics, normalised or
    differentiated through batch norm;
  * ``MaxPool2d(2)`` runs before the ``ReLU`` it follows (they commute: both are monotone), so the
    ReLU and its derivatives touch a quarter of the values;
  * linear layers with per-task weights are batched matrix products;
  * the other batch norms are :class:`_BatchNorm`: native forward and backward, and a double
    backward (second-order MAML differentiates the support pass's backward) derived by hand:
    a few fused passes instead of native batch norm's several dozen full-size operations.

Measured on 2 CPU cores (``benchmarks/maml_speed.py``, one core, under load): the first
convolution + batch norm fusion took a second-order Omniglot meta-iteration from 4.2 s to
3.0 s, the batch-norm double backward a 5-shot one from 8.3 s to 3.9 s. One task per group
(``G = 1``) is the fastest for Conv-4 on the CPU: the task's activations stay in cache, while
32 tasks side by side do not. No ``vmap``: native batch norm's double backward under ``vmap``
was measured wrong; everything here is checked against the reference and against finite
differences in ``tests/test_maml.py``.

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
from torch.autograd.function import once_differentiable
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
    """One step of :class:`TaskForward`: ``kind`` and the module it came from; a first
    convolution carries the batch norm that follows it in ``norm`` (fused, see
    :func:`_first_conv`)."""

    kind: str  # conv | bn | relu | pool | flatten | linear
    name: str
    module: nn.Module
    norm: _Layer | None = None


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
        first, second = layers[0], layers[1] if len(layers) > 1 else None
        if first.kind == "conv" and second and second.kind == "bn" and second.module.affine:
            layers[:2] = [_Layer("conv", first.name, first.module, norm=second)]
        # MaxPool2d(2) after ReLU: swap them (relu(max(x)) == max(relu(x)), same gradients).
        for i in range(len(layers) - 1):
            if layers[i].kind == "relu" and layers[i + 1].kind == "pool":
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return cls(layers, spatial_mean=type(model) is Conv4 and model.strided)

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        """Outputs ``[G, n, out]`` of inputs ``x [G, n, ...]``."""
        return self.head(params, self.embed(params, x))

    def embed(self, params: Params, x: Tensor) -> Tensor:
        """Features ``[G, n, D]`` of inputs ``x [G, n, ...]`` (``model.embed`` of each task)."""
        groups, n = x.shape[:2]
        h = x  # [G, n, ...] until the first layer; then [n, G*C, H, W] or [G, n, F]
        for layer in self.layers:
            p = (params.get(f"{layer.name}.weight"), params.get(f"{layer.name}.bias"))
            m = layer.module
            if layer.kind == "conv" and h is x:
                bn = layer.norm
                norm = (
                    None
                    if bn is None
                    else (params[f"{bn.name}.weight"], params[f"{bn.name}.bias"], bn.module.eps)
                )
                h = _first_conv(h, *p, m.stride, m.padding, norm)
            elif layer.kind == "conv":
                w = p[0].reshape(-1, *p[0].shape[2:])
                b = None if p[1] is None else p[1].reshape(-1)
                h = F.conv2d(h, w, b, m.stride, m.padding, groups=groups)
            elif layer.kind == "bn" and h.dim() == 3:  # [G, n, F] -> [n, G*F] and back
                flat = h.transpose(0, 1).reshape(n, -1)
                h = _batch_norm(flat, *p, m.eps).view(n, groups, -1).transpose(0, 1)
            elif layer.kind == "bn":
                h = _batch_norm(h, *p, m.eps)
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
    norm: tuple[Tensor, Tensor, float] | None = None,
) -> Tensor:
    """Convolution of ``x [G, n, C, H, W]`` with per-task ``weight [G, O, C, k, k]`` as an
    ``unfold`` and one batched matrix product; returns ``[n, G*O, H', W']`` in channels_last.

    With ``norm = (gamma, beta, eps)`` the batch norm that follows is folded into the product:
    the output ``x = P w + b`` of patches ``P`` is linear, so its per-channel batch statistics
    are ``mean = mean(P) w + b`` and ``var = w^T Cov(P) w`` with the small covariance of the
    patches (``C*k*k`` square), and ``gamma (x - mean) / sqrt(var + eps) + beta`` is
    ``(P - mean(P)) (w * scale) + beta``: no pass over the activations for the statistics, the
    normalisation or their gradients. The convolution's bias cancels (gradient exactly zero,
    as batch norm makes it). The shift rides in the product as a column of ones."""
    groups, n, channels, height, width = x.shape
    out, k = weight.shape[1], weight.shape[-1]
    cols = F.unfold(x.reshape(groups * n, channels, height, width), k, 1, padding, stride)
    out_h = (height + 2 * padding[0] - k) // stride[0] + 1
    out_w = (width + 2 * padding[1] - k) // stride[1] + 1
    taps = cols.shape[1]  # C * k * k
    cols = cols.view(groups, n, taps, out_h * out_w).transpose(2, 3)
    w = weight.reshape(groups, out, taps)
    shift = bias
    if norm is not None:
        gamma, beta, eps = norm
        cols = cols - cols.mean((1, 2), keepdim=True)  # centred patches (data: no gradient)
        flat = cols.reshape(groups, -1, taps)
        cov = torch.bmm(flat.transpose(1, 2), flat) / flat.shape[1]
        var = (torch.bmm(w, cov) * w).sum(-1)
        w = w * (gamma.reshape(groups, out) * torch.rsqrt(var + eps)).unsqueeze(-1)
        shift = beta.reshape(groups, out) + (0 if bias is None else bias - bias)
    w = w.transpose(1, 2)
    if shift is not None:
        padded = cols.new_ones(groups, n, out_h * out_w, taps + 1)
        padded[..., :taps] = cols
        cols, w = padded, torch.cat([w, shift.unsqueeze(1)], dim=1)
    h = torch.bmm(cols.reshape(groups, n * out_h * out_w, -1), w)
    h = h.view(groups, n, out_h, out_w, out).permute(1, 2, 3, 0, 4)
    return h.reshape(n, out_h, out_w, groups * out).permute(0, 3, 1, 2)


def _batch_norm(h: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Batch norm with the batch's statistics over all dims but the (task-major) channels."""
    if weight is None or bias is None:  # not affine
        return F.batch_norm(h, None, None, weight, bias, training=True, momentum=0.0, eps=eps)
    return _BatchNorm.apply(h, weight.reshape(-1), bias.reshape(-1), eps)


class _BatchNorm(torch.autograd.Function):
    """Affine batch norm with batch statistics whose backward, when its own graph is needed
    (``create_graph``), is :class:`_BatchNormBackward`: native forward and backward, and a
    double backward derived by hand (a few per-channel sums and two fused passes) instead of
    native batch norm's several dozen full-size operations."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        grad = _layout_of(x, grad)
        if torch.is_grad_enabled():
            grads = _BatchNormBackward.apply(grad, x, weight, mean, invstd, ctx.eps)
        else:
            grads = _native_backward(grad, x, weight, mean, invstd, ctx.eps)
        return (*grads, None)


class _BatchNormBackward(torch.autograd.Function):
    """``(g, x, weight) -> (d_x, d_weight, d_bias)`` of batch norm, and its derivative.

    With ``x_hat = (x - mean) * r``, ``A = mean(g)``, ``B = mean(g * x_hat)`` per channel and
    ``P(v) = v - mean(v) - x_hat * mean(v * x_hat)``, the backward is ``d_x = w r P(g)``,
    ``d_weight = N B``, ``d_bias = N A``. For cotangents ``u`` (of ``d_x``), ``a``, ``b``:

        grad_g = w r P(u) + a x_hat + b
        grad_w = r (sum(u g) - A sum(u) - B sum(u x_hat))
        grad_x = -(r^2 / N) w (sum(u g) - A sum(u) - B sum(u x_hat)) x_hat
                 + (a N - w r sum(u x_hat)) (r / N) P(g) - w r^2 B P(u)

    (``dx_hat = r P(dx)``, ``dr = -r^2 mean(x_hat dx)``; checked by ``gradgradcheck``).
    """

    @staticmethod
    def forward(
        ctx: Any, grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.save_for_backward(grad, x, weight, mean, invstd)
        return _native_backward(grad, x, weight, mean, invstd, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, u: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor | None, ...]:
        g, x, weight, mean, r = ctx.saved_tensors
        u = _layout_of(x, u)
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = x.numel() // x.shape[1]
        x_hat = (x - mean.view(shape)) * r.view(shape)
        mean_g, mean_gx = _channel_sum(g) / n, _channel_sum(g * x_hat) / n
        sum_u, sum_ux, sum_ug = _channel_sum(u), _channel_sum(u * x_hat), _channel_sum(u * g)
        wr = weight * r
        grad_g = torch.addcmul((b - wr * sum_u / n).view(shape), u, wr.view(shape))
        grad_g.addcmul_(x_hat, (a - wr * sum_ux / n).view(shape))
        mixed = sum_ug - mean_g * sum_u - mean_gx * sum_ux
        c_x = -(r * r / n) * weight * mixed
        c_g = (a * n - wr * sum_ux) * r / n
        c_u = -wr * r * mean_gx
        offset = -c_g * mean_g - c_u * sum_u / n
        grad_x = torch.addcmul(offset.view(shape), g, c_g.view(shape))
        grad_x.addcmul_(u, c_u.view(shape))
        grad_x.addcmul_(x_hat, (c_x - c_g * mean_gx - c_u * sum_ux / n).view(shape))
        return grad_g, grad_x, r * mixed, None, None, None


def _native_backward(
    grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, invstd: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    mask = [True, True, True]
    return tuple(
        torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, eps, mask
        )
    )


def _layout_of(x: Tensor, t: Tensor) -> Tensor:
    """``t`` in the memory layout of ``x``: native batch norm's backward is about 20 times
    slower when its gradient and input layouts differ (channels_last vs NCHW)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _channel_sum(t: Tensor) -> Tensor:
    """Sum over all dims but dim 1; channels_last tensors as the matrix ``[N*H*W, C]`` they
    are in memory (PyTorch's reduction over dims (0, 2, 3) is slow in that layout)."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).sum(0)
    return t.sum([0, *range(2, t.dim())])


def _task_major(h: Tensor, groups: int) -> Tensor:
    """``[n, G*C, H, W]`` -> ``[G, n, C*H*W]``, flattened in each task's (C, H, W) order."""
    n = h.shape[0]
    return h.reshape(n, groups, -1, *h.shape[2:]).flatten(2).transpose(0, 1)


def _linear(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``h [G, n, F] @ weight[g].T + bias[g]`` for each task ``g``."""
    w = weight.transpose(1, 2)
    return torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)
