"""The teacher's side of a step, behind one seam: :class:`Teacher`.

A Teacher gives, for a :class:`~featdistill.data.batch.Batch`, the teacher's logits and the captured teacher
feature of every pair. :class:`LiveTeacher` runs a frozen model with hooks; a teacher-output cache, an ensemble or
a recorded stand-in plugs in as another subclass, and the Distiller never knows which one it has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..capture import TapSet, pair_taps, per_pair
from ..config import Pair
from ..data.batch import Batch
from .logits import split_logits


class TeacherOutputs(NamedTuple):
    """``logits``: ``[B, K]`` (or ``[B, T, V]``), None when not asked for; ``features``: one tensor per pair, in
    pair order, as captured (before the adapter's ``target()``); for a multi-layer pair, the list of its layers'
    tensors, shallow -> deep."""

    logits: torch.Tensor | None
    features: list[torch.Tensor | list[torch.Tensor]]


class Teacher:
    """Base of the teacher seam. ``bind(pairs)`` is called once, before the first batch, with the pairs whose
    teacher features it must provide; ``__call__(batch, need_logits)`` gives them (detached, no gradients).
    ``model`` is the teacher module when there is one (for ``.to()``, parameter counts and token layouts)."""

    model: nn.Module | None = None

    def bind(self, pairs: Sequence[Pair]) -> None:
        self.pairs = list(pairs)

    def __call__(self, batch: Batch, need_logits: bool = True) -> TeacherOutputs:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``bind`` attached (hooks)."""


class LiveTeacher(Teacher):
    """Runs the frozen ``model`` (``eval()`` on every call, ``no_grad``) with hooks on the paired layers."""

    def __init__(self, model: nn.Module, logits_from: Callable[[Any], torch.Tensor] | None = None):
        self.model, self.logits_from = model, logits_from
        model.requires_grad_(False)
        model.eval()
        self.taps: TapSet | None = None

    def bind(self, pairs: Sequence[Pair]) -> None:
        super().bind(pairs)
        self.taps = TapSet(self.model, pair_taps(self.model, pairs, "teacher"), detach=True, side="teacher")

    @torch.no_grad()
    def __call__(self, batch: Batch, need_logits: bool = True) -> TeacherOutputs:
        self.model.eval()  # every step: a .train() on the teacher or on a wrapper must not flip it
        out, features = self.taps.run(lambda: batch.run(self.model))
        features = per_pair(self.pairs, features)
        logits = (self.logits_from or (lambda o: split_logits(o)[0]))(out) if need_logits else None
        return TeacherOutputs(logits, features)

    def close(self) -> None:
        if self.taps is not None:
            self.taps.close()
