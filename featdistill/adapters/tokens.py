"""Adapters between declared token grids and feature maps: ``tokens``, ``tokens_to_map``, ``map_to_tokens``.
Token layouts (prefix count, patch grid) come from the hints (see :mod:`.layout`); class/distillation tokens are
dropped and patch tokens laid back on their grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from ..errors import ShapeError
from .base import ADAPTERS, Adapter, mismatch
from .layout import Shape, resize_map, split_tokens


def project_then_resize(x: torch.Tensor, proj: nn.Module, size: Sequence[int]) -> torch.Tensor:
    """``proj(resize(x))`` for ``x [B, C_s, H, W]`` and a per-position ``proj`` on the last dim (``C_s -> C_t``):
    ``[B, C_t, *size]``. Resizing (bilinear or average pooling) mixes positions with weights that sum to 1 and the
    projection is affine per position, so the two commute; projecting on the smaller grid is the same map at a
    fraction of the cost (a 4x4 student upsampled to an 8x8 teacher: 4x fewer rows through the linear layer)."""
    if size[0] * size[1] >= x.shape[-2] * x.shape[-1]:
        x = proj(x.movedim(1, -1)).movedim(-1, 1)
        return resize_map(x, size)
    return proj(resize_map(x, size).movedim(1, -1)).movedim(-1, 1)


class TokensToMap(Adapter):
    """``[B, p + h*w, C_s] -> [B, C_t, H_t, W_t]``: drop prefix tokens, lay tokens on their grid, 1x1 conv."""

    def __init__(self, prefix: int, grid: Sequence[int], c_in: int, c_out: int, size: Sequence[int]):
        super().__init__()
        self.prefix, self.grid, self.size = prefix, tuple(grid), tuple(size)
        self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x[:, self.prefix :], "b (h w) c -> b c h w", h=self.grid[0], w=self.grid[1])
        return resize_map(self.proj(x), self.size)


class MapToTokens(Adapter):
    """``[B, C_s, H, W] -> [B, h*w, C_t]`` on the teacher's patch grid; ``target`` drops the
    teacher's prefix tokens, so only patch tokens are compared. The projection runs on whichever grid has fewer
    positions (see :func:`project_then_resize`)."""

    def __init__(self, c_in: int, c_out: int, grid: Sequence[int], teacher_prefix: int):
        super().__init__()
        self.grid, self.teacher_prefix = tuple(grid), teacher_prefix
        self.proj = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(project_then_resize(x, self.proj, self.grid), "b c h w -> b (h w) c")

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        return teacher[:, self.teacher_prefix :]


class TokensToTokens(Adapter):
    """``[B, p_s + h_s*w_s, C_s] -> [B, h_t*w_t, C_t]``: patch tokens resampled onto the teacher's
    grid and projected by a linear layer (on whichever grid has fewer positions, see
    :func:`project_then_resize`); ``target`` drops the teacher's prefix tokens.

    ``compare_on='student'`` compares on the student's grid instead: ``forward`` only projects the student's patch
    tokens (``[B, h_s*w_s, C_t]``) and ``target`` resamples the teacher's onto that grid (average pooling for an
    integer factor). Cheaper when the teacher's grid is the finer one, and a different comparison (the teacher's
    tokens are averaged over each student patch), so measure it as a lever."""

    def __init__(self, s_prefix: int, s_grid: Sequence[int], t_prefix: int, t_grid: Sequence[int],
                 c_in: int, c_out: int, compare_on: str = "teacher"):
        super().__init__()
        self.s_prefix, self.s_grid, self.t_prefix, self.t_grid = s_prefix, tuple(s_grid), t_prefix, tuple(t_grid)
        self.compare_on = compare_on
        self.proj = nn.Linear(c_in, c_out) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x[:, self.s_prefix :], "b (h w) c -> b c h w", h=self.s_grid[0], w=self.s_grid[1])
        size = self.t_grid if self.compare_on == "teacher" else self.s_grid
        return rearrange(project_then_resize(x, self.proj, size), "b c h w -> b (h w) c")

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher[:, self.t_prefix :]
        if self.compare_on == "teacher":
            return teacher
        grid = rearrange(teacher, "b (h w) c -> b c h w", h=self.t_grid[0], w=self.t_grid[1])
        return rearrange(resize_map(grid, self.s_grid), "b c h w -> b (h w) c")

    def extra_repr(self) -> str:
        return "compare_on='student'" if self.compare_on == "student" else ""


def _grid(kind: str, student: Shape, teacher: Shape, side: str, n: int, prefix, grid) -> tuple[int, tuple]:
    try:
        return split_tokens(n, prefix, grid)
    except ShapeError as exc:
        raise mismatch(kind, student, teacher, f"the {side}'s {exc}") from None


@ADAPTERS.register("tokens_to_map")
def tokens_to_map(student: Shape, teacher: Shape, student_prefix=None, student_grid=None, **hints) -> Adapter:
    if len(student) != 2 or len(teacher) != 3:
        raise mismatch("tokens_to_map", student, teacher, "needs student tokens [N, C] and a teacher map [C, H, W]")
    prefix, grid = _grid("tokens_to_map", student, teacher, "student", student[0], student_prefix, student_grid)
    return TokensToMap(prefix, grid, student[1], teacher[0], teacher[1:])


@ADAPTERS.register("map_to_tokens")
def map_to_tokens(student: Shape, teacher: Shape, teacher_prefix=None, teacher_grid=None, **hints) -> Adapter:
    if len(student) != 3 or len(teacher) != 2:
        raise mismatch("map_to_tokens", student, teacher, "needs a student map [C, H, W] and teacher tokens [N, C]")
    prefix, grid = _grid("map_to_tokens", student, teacher, "teacher", teacher[0], teacher_prefix, teacher_grid)
    return MapToTokens(student[0], teacher[1], grid, prefix)


@ADAPTERS.register("tokens")
def tokens(student: Shape, teacher: Shape, student_prefix=None, student_grid=None, teacher_prefix=None,
           teacher_grid=None, compare_on: str = "teacher", **hints) -> Adapter:
    if len(student) != 2 or len(teacher) != 2:
        raise mismatch("tokens", student, teacher, "both sides must be token sequences [N, C]")
    if compare_on not in ("teacher", "student"):
        raise mismatch("tokens", student, teacher, f"compare_on={compare_on!r} is not a grid: use "
                                                   "adapter_kwargs={'compare_on': 'teacher'} (default) or 'student'")
    s_prefix, s_grid = _grid("tokens", student, teacher, "student", student[0], student_prefix, student_grid)
    t_prefix, t_grid = _grid("tokens", student, teacher, "teacher", teacher[0], teacher_prefix, teacher_grid)
    return TokensToTokens(s_prefix, s_grid, t_prefix, t_grid, student[1], teacher[1], compare_on)
