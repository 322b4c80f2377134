"""Adapters that keep the layout: ``identity``, ``linear`` and ``mlp`` (last dim), ``conv1x1`` and ``resize`` (maps)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import ADAPTERS, Adapter, Identity, mismatch
from .layout import Shape, resize_map


class LastDim(Adapter):
    """Applies ``proj`` to the last dim: ``[..., C_s] -> [..., C_t]``."""

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Conv1x1(Adapter):
    """``[B, C_s, H_s, W_s] -> [B, C_t, H_t, W_t]``: 1x1 conv + BatchNorm (FitNet regressor), then resize."""

    def __init__(self, c_in: int, c_out: int, size: Sequence[int]):
        super().__init__()
        self.size = tuple(size)
        self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_map(self.proj(x), self.size)


class Resize(Adapter):
    """Parameter-free spatial alignment ``[B, C, H_s, W_s] -> [B, C, H_t, W_t]`` (channels untouched)."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_map(x, self.size)


@ADAPTERS.register("identity")
def identity(student: Shape, teacher: Shape, **hints) -> Adapter:
    if tuple(student) != tuple(teacher):
        raise mismatch("identity", student, teacher, "shapes differ")
    return Identity()


def _last_dim(kind: str, student: Shape, teacher: Shape) -> tuple[int, int]:
    if len(student) != len(teacher) or tuple(student[:-1]) != tuple(teacher[:-1]):
        raise mismatch(kind, student, teacher, "only the last dim may differ")
    return student[-1], teacher[-1]


@ADAPTERS.register("linear")
def linear(student: Shape, teacher: Shape, **hints) -> Adapter:
    c_in, c_out = _last_dim("linear", student, teacher)
    return LastDim(nn.Linear(c_in, c_out))


@ADAPTERS.register("mlp")
def mlp(student: Shape, teacher: Shape, hidden: int | None = None, **hints) -> Adapter:
    c_in, c_out = _last_dim("mlp", student, teacher)
    hidden = hidden or max(c_in, c_out)
    return LastDim(nn.Sequential(nn.Linear(c_in, hidden), nn.GELU(), nn.Linear(hidden, c_out)))


def _maps(kind: str, student: Shape, teacher: Shape) -> None:
    if len(student) != 3 or len(teacher) != 3:
        raise mismatch(kind, student, teacher, "both sides must be feature maps [C, H, W]")


@ADAPTERS.register("conv1x1")
def conv1x1(student: Shape, teacher: Shape, **hints) -> Adapter:
    _maps("conv1x1", student, teacher)
    return Conv1x1(student[0], teacher[0], teacher[1:])


@ADAPTERS.register("resize")
def resize(student: Shape, teacher: Shape, **hints) -> Adapter:
    _maps("resize", student, teacher)
    return Resize(teacher[1:])
