"""Embeddings of an encoder, shared by the metric learners (ProtoNet, FineTune, OML).

:func:`embed` maps inputs to flat float32 embeddings (in NHWC layout and under autocast when
asked); :func:`embed_batch` embeds all images of a batch of episodes in one forward;
:func:`eval_mode` puts a module in eval mode for a block.

Example:
    >>> z = embed(Conv4(1, 28, out_features=None), images, precision="bfloat16")   # [n, D]
    >>> with eval_mode(model): ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn

from lifelong.algorithms.distances import full_precision
from lifelong.algorithms.precision import Precision
from lifelong.data.episodes import EpisodeBatch


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block, then restore every submodule's own mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def embed(
    encoder: nn.Module, x: Tensor, channels_last: bool = True, precision: Precision = "float32"
) -> Tensor:
    """Embeddings ``[n, D]`` of inputs ``[n, ...]``: ``encoder.embed`` if the encoder has one
    (a backbone with an unused head), else ``encoder(x)``; flattened after the first dim and
    returned in at least float32.

    ``channels_last`` hands images ``[n, C, H, W]`` to the encoder in NHWC layout, the fast
    layout of oneDNN (CPU) and cuDNN convolutions; the values are unchanged. The strides are
    set explicitly (``empty_like`` + ``copy_``) because ``.contiguous(channels_last)`` leaves
    a 1-channel image (Omniglot) in a layout the convolution reads as NCHW. ``precision``
    other than ``"float32"`` runs the encoder under ``torch.autocast`` in that dtype
    (``"bfloat16"``: AMX / AVX-512-BF16 on CPUs, tensor cores on GPUs); otherwise an autocast
    region the caller opened stays in force.
    """
    if channels_last and x.dim() == 4:
        x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
    forward = getattr(encoder, "embed", None)
    with (
        torch.autocast(x.device.type, getattr(torch, precision))
        if precision != "float32"
        else nullcontext()
    ):
        z = forward(x) if callable(forward) else encoder(x)
    return full_precision(z.flatten(1))


def embed_batch(
    encoder: nn.Module,
    batch: EpisodeBatch,
    channels_last: bool = True,
    precision: Precision = "float32",
) -> tuple[Tensor, Tensor]:
    """Support ``[B, N*K, D]`` and query ``[B, N*Q, D]`` embeddings of a batch of episodes,
    from ONE encoder forward over all their images (see :func:`embed`)."""
    episodes, support = batch.support_y.shape
    images = torch.cat((batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)))
    z = embed(encoder, images, channels_last, precision)
    return (
        z[: episodes * support].unflatten(0, (episodes, support)),
        z[episodes * support :].unflatten(0, (episodes, -1)),
    )
