"""Logit losses: what the student's logits learn from the teacher's. ``LOGIT_LOSSES`` maps names to
:class:`LogitLoss` subclasses, chosen with ``LogitKD(loss=...)``.

A logit loss sees rows ``[N, K]``: one row per image (``N = B``), or per kept token of a sequence model (the
combiner flattens ``[B, T, V]`` and drops padded positions first, so every term is normalised per token).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

LOGIT_LOSSES = Registry("logit loss")


class LogitLoss(nn.Module):
    """``forward(student [N, K], teacher [N, K], labels [N] or None) -> scalar``: the distillation term only
    (the combiner adds the task cross-entropy and the ``alpha`` weights). Subclasses set ``formula`` for the
    printed loss, with ``{T}`` for the temperature."""

    formula: ClassVar[str] = "logit_loss(s, t)"

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def describe(self) -> str:
        return self.formula.format(T=f"{self.temperature:g}")


@LOGIT_LOSSES.register("soft")
class SoftKD(LogitLoss):
    """Hinton et al.: ``KL(softmax(t/T) || softmax(s/T)) * T^2``, ``batchmean`` over the N rows; the ``T^2``
    keeps the soft gradients' scale independent of T."""

    formula = "KL(t||s; T={T})*T^2"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels=None) -> torch.Tensor:
        t = self.temperature
        return F.kl_div(F.log_softmax(student.float() / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1),
                        reduction="batchmean", log_target=True) * (t**2)


@LOGIT_LOSSES.register("hard")
class HardKD(LogitLoss):
    """DeiT's hard distillation: cross-entropy to the teacher's argmax (no temperature)."""

    formula = "CE(s, argmax t)"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels=None) -> torch.Tensor:
        return F.cross_entropy(student.float(), teacher.float().argmax(dim=-1))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    mode: str = "soft",
) -> torch.Tensor:
    """Hinton KD: ``alpha * CE(s, y) + (1 - alpha) * KL(softmax(t/T) || softmax(s/T)) * T^2``.

    Logits are ``[B, K]``, labels ``[B]``. KL uses ``reduction='batchmean'``; the ``T^2`` keeps the soft
    gradients' scale independent of T. With ``labels=None`` only the soft term (times ``T^2``) is
    returned. ``mode`` names any logit loss in ``LOGIT_LOSSES`` (``'hard'``: DeiT's CE to the teacher's argmax).
    """
    if mode not in LOGIT_LOSSES:
        raise ValueError(f"kd_loss mode must be one of {', '.join(repr(m) for m in LOGIT_LOSSES)}, got {mode!r}")
    soft = LOGIT_LOSSES.get(mode)(temperature)(student_logits, teacher_logits, labels)
    if labels is None:
        return soft
    return alpha * F.cross_entropy(student_logits.float(), labels) + (1 - alpha) * soft
