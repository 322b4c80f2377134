"""The adapter contract, its registry and the ``'auto'`` choice.

Every factory in ``ADAPTERS`` is called as ``factory(student_shape, teacher_shape, **hints)`` with shapes
*without* the batch dim (``(C, H, W)`` maps, ``(N, C)`` tokens or sequences, ``(C,)`` vectors) and returns an
:class:`Adapter`: ``adapter(s)`` maps the student feature, ``adapter.target(t)`` applies the parameter-free part
on the teacher side (e.g. dropping class tokens) so both sides end up equal. Hints declare token layouts:
``student_prefix`` / ``teacher_prefix`` and ``student_grid`` / ``teacher_grid`` (see :mod:`.layout`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ShapeError
from ..registry import Registry
from .layout import DECLARE, Layout, Shape

ADAPTERS = Registry("adapter")

TRY = (
    "Try: a layer whose output has a compatible layout (run --list-layers to see shapes), "
    "select= to pick a tensor from a tuple output, or a custom adapter (any callable "
    "(student_shape, teacher_shape) -> nn.Module)."
)


def mismatch(kind: str, student: Shape, teacher: Shape, why: str) -> ShapeError:
    return ShapeError(
        f"adapter {kind!r} cannot map student features {list(student)} to teacher features "
        f"{list(teacher)}: {why}. {TRY}"
    )


class Adapter(nn.Module):
    """Base: ``forward(student) -> aligned student``; ``target(teacher) -> aligned teacher``."""

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        return teacher


class Identity(Adapter):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Wrapped(Adapter):
    """A user module used as an adapter (teacher side unchanged)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def layouts(student: Shape, teacher: Shape, hints: dict[str, Any]) -> tuple[Layout, Layout]:
    """Both sides' layouts from their shapes and the declared hints."""
    return (Layout.of(student, hints.get("student_prefix"), hints.get("student_grid")),
            Layout.of(teacher, hints.get("teacher_prefix"), hints.get("teacher_grid")))


def auto_kind(student: Shape, teacher: Shape, channel_free: bool = False, **hints: Any) -> str:
    """The adapter ``'auto'`` picks for these shapes (no batch dim) and declared layouts.

    Same shape -> ``'identity'``. Maps -> ``'conv1x1'`` (``'resize'`` when the loss ignores channels, e.g.
    attention transfer). Two 2-D features with the same length -> ``'linear'``; of different lengths -> ``'tokens'``
    when both grids are declared. Vectors -> ``'linear'``. Tokens <-> maps -> ``'tokens_to_map'`` /
    ``'map_to_tokens'``.
    """
    s, t = layouts(student, teacher, hints)
    if tuple(student) == tuple(teacher):
        return "identity"
    if s.kind == t.kind == "map":
        return "resize" if channel_free else "conv1x1"
    if len(student) == len(teacher) == 2:
        if student[0] == teacher[0]:
            return "linear"
        if s.kind == t.kind == "tokens":
            return "tokens"
        raise mismatch("auto", student, teacher, f"the sequence lengths differ and no patch grid says how they "
                                                 f"correspond; {DECLARE}")
    if s.kind == t.kind == "vector":
        return "linear"
    if (s.kind, t.kind) == ("tokens", "map"):
        return "tokens_to_map"
    if (s.kind, t.kind) == ("map", "tokens"):
        return "map_to_tokens"
    why = f"no adapter maps a {s.kind} to a {t.kind}"
    if "sequence" in (s.kind, t.kind):
        why += f"; if the sequence is patch tokens, {DECLARE}"
    raise mismatch("auto", student, teacher, why)


def build_adapter(spec, student: Shape, teacher: Shape, channel_free: bool = False, relational: bool = False,
                  **hints: Any) -> Adapter:
    """Build from a registry name, ``'auto'``, a factory ``(student_shape, teacher_shape) -> Module``
    or a ready module. ``relational`` losses compare batch relations, so ``'auto'`` gives the identity."""
    if isinstance(spec, nn.Module):
        adapter = spec
    elif callable(spec):
        adapter = spec(tuple(student), tuple(teacher))
    elif spec == "auto" and relational:
        adapter = Identity()
    else:
        kind = auto_kind(student, teacher, channel_free, **hints) if spec == "auto" else spec
        adapter = ADAPTERS.get(kind)(tuple(student), tuple(teacher), **hints)
    if not isinstance(adapter, Adapter):
        adapter = Wrapped(adapter)
    return adapter


def adapter_name(adapter: nn.Module) -> str:
    """The adapter's class name (a user module's own, when wrapped)."""
    return type(adapter.module if isinstance(adapter, Wrapped) else adapter).__name__
