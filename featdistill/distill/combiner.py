"""LossCombiner: the weighted sum of the task, logit-KD and feature terms of one training step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..losses import LogitLoss, Loss
from ..losses.base import PASSED
from .calibration import AutoWeights
from .logits import kept_positions, rows


@dataclass(frozen=True)
class FeatureTerm:
    """One feature loss: ``weight * loss(aligned_student, aligned_teacher)`` reported as ``feat/<name>``."""

    name: str
    loss: Loss
    weight: float | str  # 'auto': taken from the combiner's AutoWeights
    label: str = ""  # how the formula shows it, e.g. "mse(LastDim(blocks.2), blocks.5)"


class LossCombiner:
    """Sums the terms of one step and reports each of them.

    ``task = alpha * CE(task_logits, y)``, ``kd = (1 - alpha) * logit_loss(kd_logits, teacher_logits)`` (Hinton's
    ``T^2 * KL(softmax(t/T) || softmax(s/T))`` by default; with no KD: ``task = CE``),
    ``feat/<pair> = w * loss(adapter(S), T)`` (a ``masked`` loss also gets the attention mask); ``loss`` is their
    sum. Logits are ``[B, K]``, or ``[B, T, V]`` whose kept tokens (attention mask, labels not -100) become the rows,
    so every logit term is a per-token mean.
    ``task_logits`` and ``kd_logits`` differ only for students with a separate distillation head (DeiT).
    ``repr()`` prints the formula with its weights.
    """

    def __init__(self, kd=None, terms: Sequence[FeatureTerm] = (), auto: AutoWeights | None = None,
                 label_smoothing: float = 0.0, logit_loss: LogitLoss | None = None):
        self.kd = kd  # a LogitKD (temperature, alpha, loss) or None
        self.logit_loss = logit_loss  # the module kd.loss names, built by the Distiller
        self.terms = list(terms)
        self.auto = auto  # per-term weights with 'auto' entries; None when every weight is fixed
        self.label_smoothing = label_smoothing

    def __call__(
        self,
        task_logits: torch.Tensor,
        kd_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor | None,
        features: Sequence[tuple[torch.Tensor, torch.Tensor]],
        needs: dict[str, Any] | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``features``: per term, ``(aligned student, aligned teacher)``; ``needs``: what losses may declare
        (``index``); ``mask``: ``[B, T]`` attention mask of sequence inputs, for the logit rows and the feature
        losses that declare ``masked`` (per-token features and attention maps then count real tokens only)."""
        out: dict[str, torch.Tensor] = {}
        kd = self.kd
        keep = kept_positions(task_logits, labels, mask)
        y = rows(labels, keep)
        if labels is not None:
            task_weight = kd.alpha if kd is not None else 1.0
            out["task"] = task_weight * F.cross_entropy(rows(task_logits, keep).float(), y,
                                                        label_smoothing=self.label_smoothing)
        if kd is not None:
            # with no labels the soft term is all there is, so it keeps weight 1
            soft_weight = (1 - kd.alpha) if labels is not None else 1.0
            out["kd"] = soft_weight * self._logit_term(kd_logits, teacher_logits, y, keep)
        needs = {**(needs or {}), "mask": mask}
        raw = [term.loss(s, t, **self._needs(term.loss, needs)) for term, (s, t) in zip(self.terms, features)]
        if self.auto is not None and raw:
            reference = out.get("kd", out.get("task"))
            if self.auto.training and reference is not None and self.auto.calibrating:
                self.auto.observe(reference, torch.stack([r.detach().float() for r in raw]))
            weights = list(self.auto.weights.unbind())
        else:
            weights = [term.weight for term in self.terms]
        for term, value, weight in zip(self.terms, raw, weights):
            out[f"feat/{term.name}"] = weight * value
        out["loss"] = sum(out.values()) if out else task_logits.sum() * 0.0
        return out

    @staticmethod
    def _needs(loss: Loss, needs: dict[str, Any]) -> dict[str, Any]:
        """What ``loss`` declares it takes: ``index`` (``needs_index``), the padding ``mask`` (``masked``)."""
        return {key: needs.get(key) for need, key in PASSED.items() if getattr(loss, need, False)}

    def _logit_term(self, student, teacher, y, keep) -> torch.Tensor:
        """The logit loss on the kept rows. A loss with ``masked_rows`` (the chunked LM losses) gets all ``[B*T, V]``
        rows as views plus ``keep``, so the kept rows are never copied out of the logits (two ``[N, V]`` copies)."""
        masked = getattr(self.logit_loss, "masked_rows", None)
        if masked is not None and keep is not None:
            return masked(student.flatten(0, 1), teacher.flatten(0, 1), keep)
        return self.logit_loss(rows(student, keep), rows(teacher, keep), y)

    def __repr__(self) -> str:
        kd = self.kd
        parts = []
        if kd is None:
            parts.append("CE(s, y)")
        else:
            parts.append(f"{kd.alpha:g}*CE(s, y)")
            parts.append(f"{1 - kd.alpha:g}*{self.logit_loss.describe()}")
        for i, t in enumerate(self.terms):
            weight = self.auto.describe(i) if self.auto is not None else f"{t.weight:g}"
            parts.append(f"{weight}*{t.label or t.name}")
        return "loss = " + " + ".join(parts)
