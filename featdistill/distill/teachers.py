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

    def dry_run(self, batch: Batch) -> TeacherOutputs:
        """The features of ``batch`` for the build's shape checks (a cache answers with zeros of its shapes)."""
        return self(batch, need_logits=False)

    def close(self) -> None:
        """Release what ``bind`` attached (hooks)."""


class LiveTeacher(Teacher):
    """Runs the frozen ``model`` (``eval()`` on every call, ``no_grad``) with hooks on the paired layers.

    ``early_exit``: when the logits are not needed (``need_logits=False``: feature-only KD, the dry run), stop the
    forward right after the deepest hooked layer has been captured (:mod:`featdistill.capture.early_exit`); the
    features are the same, the layers after it never run. The first such call runs in full to learn where to stop;
    a compiled teacher always runs in full.
    """

    def __init__(self, model: nn.Module, logits_from: Callable[[Any], torch.Tensor] | None = None,
                 early_exit: bool = True):
        self.model, self.logits_from, self.early_exit = model, logits_from, early_exit
        model.requires_grad_(False)
        model.eval()
        self.taps: TapSet | None = None

    def bind(self, pairs: Sequence[Pair]) -> None:
        super().bind(pairs)
        self.taps = TapSet(self.model, pair_taps(self.model, pairs, "teacher"), detach=True, side="teacher")

    @torch.no_grad()
    def __call__(self, batch: Batch, need_logits: bool = True) -> TeacherOutputs:
        self.model.eval()  # every step: a .train() on the teacher or on a wrapper must not flip it
        stop = self.early_exit and not need_logits
        out, features = self.taps.run(lambda: batch.run(self.model), stop_early=stop)
        features = per_pair(self.pairs, features)
        logits = (self.logits_from or (lambda o: split_logits(o)[0]))(out) if need_logits else None
        return TeacherOutputs(logits, features)

    @property
    def early_exit_after(self) -> str | None:
        """The layer after which a ``need_logits=False`` call stops now (the last hooked layer to fire; an
        attention capture's ``<attn>.qkv``), or None when it runs the full forward (see :attr:`early_exit_reason`)."""
        return self.taps.early_exit.after if self.early_exit_reason is None else None

    @property
    def early_exit_reason(self) -> str | None:
        """Why a ``need_logits=False`` call runs the full forward, or None when it stops early."""
        if not self.early_exit:
            return "early exit is turned off (LiveTeacher(early_exit=False))"
        if self.taps is None:
            return "no pairs are bound yet"
        why = self.taps.early_exit.unavailable()
        if why is None and self.taps.early_exit.after is None:
            why = "not learned yet: the first feature-only forward runs in full to find the last hooked layer"
        return why

    def close(self) -> None:
        if self.taps is not None:
            self.taps.close()
