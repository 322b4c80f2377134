"""Feature layouts, declared rather than guessed from a bare shape.

A 2-D feature ``(N, C)`` may be ViT tokens on a patch grid (with class/distillation tokens in front) or a
text sequence with no grid at all; only the model knows. So a layout is built from the shape *and* what the
model (or the user) declares: a patch ``grid`` and a ``prefix`` count, from timm's ``patch_embed.grid_size`` and
``num_prefix_tokens`` (see :func:`model_token_hints`) or from ``Pair(adapter_kwargs=dict(student_grid=(h, w),
student_prefix=k))``. Without a declaration, ``(N, C)`` is a ``'sequence'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError

Shape = Sequence[int]
DECLARE = ("declare the patch grid: Pair(adapter_kwargs=dict(student_grid=(h, w), student_prefix=k)) "
           "(or teacher_grid / teacher_prefix)")


@dataclass(frozen=True)
class Layout:
    """One sample's feature layout (no batch dim).

    ``kind``: ``'vector'`` ``(C,)``, ``'map'`` ``(C, H, W)``, ``'tokens'`` ``(prefix + h*w, C)`` on a declared
    ``grid`` ``(h, w)``, ``'sequence'`` ``(N, C)`` with no grid (text), or ``'other'``.
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, int] | None = None

    @classmethod
    def of(cls, shape: Shape, prefix: int | None = None, grid: Sequence[int] | None = None) -> Layout:
        """The layout of ``shape`` given what is declared about its tokens (``prefix``, ``grid``)."""
        if len(shape) == 2:
            if grid is None and prefix is None:
                return cls("sequence")
            prefix, grid = split_tokens(shape[0], prefix, grid)
            return cls("tokens", prefix, grid)
        return cls({1: "vector", 3: "map"}.get(len(shape), "other"))


def split_tokens(n: int, prefix: int | None = None, grid: Sequence[int] | None = None) -> tuple[int, tuple]:
    """``(prefix, (h, w))`` for ``n`` declared tokens: ``prefix`` class/distillation tokens, then an ``h x w``
    patch grid. A declared ``grid`` fixes the prefix (``n - h*w``); a declared ``prefix`` alone means a square
    grid of the remaining tokens. Nothing declared, or a declaration that does not explain ``n``: ShapeError."""
    if grid is not None:
        h, w = (int(g) for g in grid)
        p = n - h * w if prefix is None else int(prefix)
        if p < 0 or p + h * w != n:
            raise ShapeError(f"{n} tokens are not {p} prefix tokens plus a {h}x{w} grid; fix the declared "
                             "student_/teacher_prefix and _grid adapter_kwargs")
        return p, (h, w)
    if prefix is None:
        raise ShapeError(f"{n} tokens have no declared patch grid; {DECLARE}")
    side = math.isqrt(max(n - prefix, 0))
    if side == 0 or side * side != n - prefix:
        raise ShapeError(f"{n} tokens minus prefix {prefix} do not form a square grid; {DECLARE}")
    return int(prefix), (side, side)


def model_token_hints(model: nn.Module, n_tokens: int, side: str) -> dict[str, Any]:
    """``{side_prefix, side_grid}`` declared by a timm-style ViT (``num_prefix_tokens``, ``patch_embed.grid_size``)
    when they explain ``n_tokens``; ``{}`` otherwise."""
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if prefix is None or grid is None or prefix + grid[0] * grid[1] != n_tokens:
        return {}
    return {f"{side}_prefix": int(prefix), f"{side}_grid": tuple(int(g) for g in grid)}


def resize_map(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, *size]``: average-pool when shrinking by an integer factor, else bilinear."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    h, w = x.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
