"""What a loss is to the Distiller: an ``nn.Module`` that declares what it needs.

``LOSSES`` maps names to feature losses: a :class:`Loss` subclass, or a plain function
``fn(student, teacher, **kwargs) -> scalar`` (argument order always ``(student, teacher)``). :func:`build_loss`
turns either into a :class:`Loss` module; a function declares its needs with :func:`declares`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..registry import Registry

LOSSES = Registry("loss")

NEEDS = ("channel_free", "relational", "needs_index", "multi_layer", "masked")
PASSED = {"needs_index": "index", "masked": "mask"}  # declarations that add a keyword argument to forward


class Loss(nn.Module):
    """A feature loss: ``forward(student, teacher, **needs) -> scalar tensor``.

    Class attributes declare what it needs, so the Distiller prepares it without knowing the method:

    - ``channel_free``: compares where energy sits across positions (attention transfer): widths may differ,
      so the ``'auto'`` adapter only aligns positions.
    - ``relational``: compares relations among the batch's samples (``[B, B]`` similarities): any widths and
      positions; the ``'auto'`` adapter is the identity and shapes are not required to match.
    - ``needs_index``: ``forward`` also receives ``index=`` ``[B]`` int64 dataset indices of the batch's
      samples (memory banks); the runner's loaders then yield ``(x, y, index)``.
    - ``multi_layer``: compares several layers at once (ReviewKD): its ``Pair`` names a tuple of layers per side
      (shallow -> deep), ``forward`` receives two lists of features ``[S_1..S_L], [T_1..T_L]`` (no adapter: the
      loss holds whatever maps the student's levels) and ``build`` two lists of shapes.
    - ``masked``: ``forward`` also receives ``mask=`` ``[B, T]`` (1 = a real token; None for inputs without an
      attention mask), so per-token features ``[B, T, C]`` and attention maps ``[B, H, T, T]`` are averaged over
      real tokens only (see :mod:`.masking`): a padded batch gives the same per-token loss as unpadded sequences.

    A loss with learnable parameters (projection heads, learned variances) registers them as any module does:
    the Distiller holds its losses as submodules, so they train, checkpoint and sync (DDP) with the student.
    Shapes (no batch dim) reach ``build``, which subclasses override to size their parameters.
    """

    channel_free: ClassVar[bool] = False
    relational: ClassVar[bool] = False
    needs_index: ClassVar[bool] = False
    multi_layer: ClassVar[bool] = False
    masked: ClassVar[bool] = False

    @classmethod
    def build(cls, student_shape: Sequence[int], teacher_shape: Sequence[int], **kwargs: Any) -> Loss:
        return cls(**kwargs)

    def teacher_part(self, teacher: torch.Tensor) -> torch.Tensor:
        """What the loss computes from the teacher's feature alone, parameter-free (attention transfer's normalised
        map ``[B, H*W]``); ``forward`` receives its output as ``teacher``. The Distiller applies it on every live
        step; a teacher-output cache stores its result, so a cached step never computes it. Default: the feature."""
        return teacher

    @property
    def has_parameters(self) -> bool:
        return any(True for _ in self.parameters())

    @property
    def label(self) -> str:
        """How the plan and the formula name this loss."""
        return type(self).__name__


class FunctionLoss(Loss):
    """A plain function ``fn(student, teacher, **kwargs) -> scalar`` as a :class:`Loss`; its needs are read from
    the attributes :func:`declares` sets (absent: none)."""

    def __init__(self, fn: Callable[..., torch.Tensor], **kwargs: Any):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs
        for need in NEEDS:  # instance attributes shadow the class defaults
            setattr(self, need, bool(getattr(fn, need, False)))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **needs: Any) -> torch.Tensor:
        passed = {key: needs[key] for need, key in PASSED.items() if getattr(self, need) and key in needs}
        return self.fn(student, teacher, **passed, **self.kwargs)

    @property
    def label(self) -> str:
        return getattr(self.fn, "__name__", "custom")

    def extra_repr(self) -> str:
        return f"{self.label}, {self.kwargs}" if self.kwargs else self.label


def declares(channel_free: bool = False, relational: bool = False, needs_index: bool = False,
             multi_layer: bool = False, masked: bool = False):
    """Decorator for a plain loss function: what it needs (see :class:`Loss`)."""

    def mark(fn: Callable) -> Callable:
        fn.channel_free, fn.relational, fn.needs_index = channel_free, relational, needs_index
        fn.multi_layer, fn.masked = multi_layer, masked
        return fn

    return mark


def _shapes(shape: Any) -> Any:
    """A shape as a tuple; a list of shapes (one per level of a multi-layer term) as a list of tuples."""
    return [tuple(s) for s in shape] if isinstance(shape, list) else tuple(shape)


def build_loss(spec: Any, student_shape: Sequence[int] | list, teacher_shape: Sequence[int] | list,
               kwargs: dict | None = None) -> Loss:
    """A :class:`Loss` module from a registered name, a ``Loss`` subclass or instance, or a plain callable.
    Shapes have no batch dim; a multi-layer term passes a list of shapes per side."""
    kwargs = dict(kwargs or {})
    entry = LOSSES.get(spec) if isinstance(spec, str) else spec
    if isinstance(entry, Loss):
        if kwargs:
            raise TypeError("loss_kwargs cannot be applied to a Loss instance; configure it before passing it")
        return entry
    if isinstance(entry, type) and issubclass(entry, Loss):
        return entry.build(_shapes(student_shape), _shapes(teacher_shape), **kwargs)
    return FunctionLoss(entry, **kwargs)
