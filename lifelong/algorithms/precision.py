"""The precisions of the networks of ProtoNet, FineTune and the inner-loop learners (the MAML
family, Reptile): the dtype names of ``torch.autocast``. Free of torch, so that a config can
be checked before torch is imported."""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["float32", "bfloat16", "float16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
