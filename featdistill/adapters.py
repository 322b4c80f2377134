"""Projector adapters: map a student feature into its teacher's shape.

Every factory in ``ADAPTERS`` is called as ``factory(student_shape, teacher_shape, **hints)`` with
shapes *without* the batch dim (``(C, H, W)`` maps, ``(N, C)`` tokens, ``(C,)`` vectors) and returns
an :class:`Adapter`. ``adapter(s)`` maps the student feature; ``adapter.target(t)`` applies the
parameter-free part on the teacher side (e.g. dropping class tokens) so both sides end up equal.
Hints: ``student_prefix`` / ``teacher_prefix`` (class/distillation tokens before the patch tokens)
and ``student_grid`` / ``teacher_grid`` (patch grid ``(h, w)``), taken from timm models when known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .errors import ShapeError
from .registry import Registry

ADAPTERS = Registry("adapter")
Shape = Sequence[int]

TRY = (
    "Try: a layer whose output has a compatible layout (run --list-layers to see shapes), "
    "select= to pick a tensor from a tuple output, or a custom adapter (any callable "
    "(student_shape, teacher_shape) -> nn.Module)."
)


def layout(shape: Shape) -> str:
    """'vector' for (C,), 'tokens' for (N, C), 'map' for (C, H, W), else 'other'."""
    return {1: "vector", 2: "tokens", 3: "map"}.get(len(shape), "other")


def mismatch(kind: str, student: Shape, teacher: Shape, why: str) -> ShapeError:
    return ShapeError(
        f"adapter {kind!r} cannot map student features {list(student)} to teacher features "
        f"{list(teacher)}: {why}. {TRY}"
    )


def split_tokens(n: int, prefix: int | None = None, grid: Sequence[int] | None = None) -> tuple[int, tuple]:
    """``(prefix, (h, w))`` for a sequence of ``n`` tokens: ``prefix`` class/distillation tokens
    followed by an ``h x w`` patch grid. Without hints the smallest prefix (0..8) that leaves a
    square number of tokens wins."""
    if grid is not None:
        h, w = grid
        return (n - h * w if prefix is None else prefix), (h, w)
    candidates = [prefix] if prefix is not None else range(0, 9)
    for p in candidates:
        side = math.isqrt(max(n - p, 0))
        if side > 0 and side * side == n - p:
            return p, (side, side)
    raise ShapeError(
        f"cannot lay {n} tokens on a square patch grid. Pass adapter_kwargs=dict(student_grid=(h, w), "
        "student_prefix=k) (or teacher_...) to the Pair."
    )


def resize_map(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, *size]``: average-pool when shrinking by an integer factor, else bilinear."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    h, w = x.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Adapter(nn.Module):
    """Base: ``forward(student) -> aligned student``; ``target(teacher) -> aligned teacher``."""

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        return teacher


class Identity(Adapter):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


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
    teacher's prefix tokens, so only patch tokens are compared."""

    def __init__(self, c_in: int, c_out: int, grid: Sequence[int], teacher_prefix: int):
        super().__init__()
        self.grid, self.teacher_prefix = tuple(grid), teacher_prefix
        self.proj = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(resize_map(x, self.grid), "b c h w -> b (h w) c"))

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        return teacher[:, self.teacher_prefix :]


class TokensToTokens(Adapter):
    """``[B, p_s + h_s*w_s, C_s] -> [B, h_t*w_t, C_t]``: patch tokens resampled onto the teacher's
    grid, then a linear projection; ``target`` drops the teacher's prefix tokens."""

    def __init__(self, s_prefix: int, s_grid: Sequence[int], t_prefix: int, t_grid: Sequence[int],
                 c_in: int, c_out: int):
        super().__init__()
        self.s_prefix, self.s_grid, self.t_prefix, self.t_grid = s_prefix, tuple(s_grid), t_prefix, tuple(t_grid)
        self.proj = nn.Linear(c_in, c_out) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x[:, self.s_prefix :], "b (h w) c -> b c h w", h=self.s_grid[0], w=self.s_grid[1])
        x = rearrange(resize_map(x, self.t_grid), "b c h w -> b (h w) c")
        return self.proj(x)

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        return teacher[:, self.t_prefix :]


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


@ADAPTERS.register("conv1x1")
def conv1x1(student: Shape, teacher: Shape, **hints) -> Adapter:
    if layout(student) != "map" or layout(teacher) != "map":
        raise mismatch("conv1x1", student, teacher, "both sides must be feature maps [C, H, W]")
    return Conv1x1(student[0], teacher[0], teacher[1:])


@ADAPTERS.register("resize")
def resize(student: Shape, teacher: Shape, **hints) -> Adapter:
    if layout(student) != "map" or layout(teacher) != "map":
        raise mismatch("resize", student, teacher, "both sides must be feature maps [C, H, W]")
    return Resize(teacher[1:])


@ADAPTERS.register("tokens_to_map")
def tokens_to_map(student: Shape, teacher: Shape, student_prefix=None, student_grid=None, **hints) -> Adapter:
    if layout(student) != "tokens" or layout(teacher) != "map":
        raise mismatch("tokens_to_map", student, teacher, "needs student tokens [N, C] and a teacher map [C, H, W]")
    prefix, grid = split_tokens(student[0], student_prefix, student_grid)
    return TokensToMap(prefix, grid, student[1], teacher[0], teacher[1:])


@ADAPTERS.register("map_to_tokens")
def map_to_tokens(student: Shape, teacher: Shape, teacher_prefix=None, teacher_grid=None, **hints) -> Adapter:
    if layout(student) != "map" or layout(teacher) != "tokens":
        raise mismatch("map_to_tokens", student, teacher, "needs a student map [C, H, W] and teacher tokens [N, C]")
    prefix, grid = split_tokens(teacher[0], teacher_prefix, teacher_grid)
    return MapToTokens(student[0], teacher[1], grid, prefix)


@ADAPTERS.register("tokens")
def tokens(student: Shape, teacher: Shape, student_prefix=None, student_grid=None, teacher_prefix=None,
           teacher_grid=None, **hints) -> Adapter:
    if layout(student) != "tokens" or layout(teacher) != "tokens":
        raise mismatch("tokens", student, teacher, "both sides must be token sequences [N, C]")
    s_prefix, s_grid = split_tokens(student[0], student_prefix, student_grid)
    t_prefix, t_grid = split_tokens(teacher[0], teacher_prefix, teacher_grid)
    return TokensToTokens(s_prefix, s_grid, t_prefix, t_grid, student[1], teacher[1])


def auto_kind(student: Shape, teacher: Shape, channel_free: bool = False) -> str:
    """The adapter 'auto' picks for these shapes (no batch dim).

    Same shape -> 'identity'. Same layout: maps -> 'conv1x1' ('resize' when the loss ignores
    channels, e.g. attention transfer), tokens -> 'linear' if only widths differ else 'tokens',
    vectors -> 'linear'. Across layouts -> 'tokens_to_map' / 'map_to_tokens'.
    """
    s, t = layout(student), layout(teacher)
    if tuple(student) == tuple(teacher):
        return "identity"
    if s == t == "map":
        return "resize" if channel_free else "conv1x1"
    if s == t == "tokens":
        return "linear" if student[0] == teacher[0] else "tokens"
    if s == t == "vector":
        return "linear"
    if (s, t) == ("tokens", "map"):
        return "tokens_to_map"
    if (s, t) == ("map", "tokens"):
        return "map_to_tokens"
    raise mismatch("auto", student, teacher, f"no adapter maps a {s} to a {t}")


def build_adapter(spec, student: Shape, teacher: Shape, channel_free: bool = False, **hints) -> Adapter:
    """Build from a registry name, ``'auto'``, a factory ``(student_shape, teacher_shape) -> Module``
    or a ready module; checks that the result maps ``student`` exactly onto ``teacher``."""
    if isinstance(spec, nn.Module):
        adapter = spec
    elif callable(spec):
        adapter = spec(tuple(student), tuple(teacher))
    else:
        kind = auto_kind(student, teacher, channel_free) if spec == "auto" else spec
        adapter = ADAPTERS.get(kind)(tuple(student), tuple(teacher), **hints)
    if not isinstance(adapter, Adapter):
        adapter = _Wrapped(adapter)
    return adapter


class _Wrapped(Adapter):
    """A user module used as an adapter (teacher side unchanged)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def describe(adapter: nn.Module) -> str:
    """Short name plus parameter count, for the plan printout."""
    n = sum(p.numel() for p in adapter.parameters())
    inner = adapter.module if isinstance(adapter, _Wrapped) else adapter
    return f"{type(inner).__name__} ({n:,} params)"
