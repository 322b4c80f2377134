"""LossCombiner: the weighted sum of the task, logit-KD and feature terms of one training step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .calibration import AutoWeights
from .losses import kd_loss


@dataclass(frozen=True)
class FeatureTerm:
    """One feature loss: ``weight * loss(aligned_student, aligned_teacher)`` reported as ``feat/<name>``."""

    name: str
    loss: Callable[..., torch.Tensor]
    weight: float | str  # 'auto': taken from the combiner's AutoWeights
    label: str = ""  # how the formula shows it, e.g. "mse(linear(blocks.2), blocks.5)"


class LossCombiner:
    """Sums the terms of one step and reports each of them.

    ``task = alpha * CE(task_logits, y)``, ``kd = (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``
    (with no KD: ``task = CE``), ``feat/<pair> = w * loss(adapter(S), T)``; ``loss`` is their sum.
    Logits are ``[B, K]``; ``task_logits`` and ``kd_logits`` differ only for students with a separate
    distillation head (DeiT). ``repr()`` prints the formula with its weights.
    """

    def __init__(self, kd=None, terms: list[FeatureTerm] | None = None, auto: AutoWeights | None = None,
                 label_smoothing: float = 0.0):
        self.kd = kd  # a LogitKD (temperature, alpha, mode) or None
        self.terms = list(terms or [])
        self.auto = auto  # per-term weights with 'auto' entries; None when every weight is fixed
        self.label_smoothing = label_smoothing

    def __call__(
        self,
        task_logits: torch.Tensor,
        kd_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor | None,
        features: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        kd = self.kd
        if labels is not None:
            task_weight = kd.alpha if kd is not None else 1.0
            out["task"] = task_weight * F.cross_entropy(task_logits.float(), labels,
                                                        label_smoothing=self.label_smoothing)
        if kd is not None:
            # with no labels the soft term is all there is, so it keeps weight 1
            soft_weight = (1 - kd.alpha) if labels is not None else 1.0
            out["kd"] = soft_weight * kd_loss(kd_logits, teacher_logits, None, kd.temperature, mode=kd.mode)
        raw = [term.loss(*features[term.name]) for term in self.terms]
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

    def __repr__(self) -> str:
        kd = self.kd
        parts = []
        if kd is None:
            parts.append("CE(s, y)")
        else:
            parts.append(f"{kd.alpha:g}*CE(s, y)")
            soft = f"KL(t||s; T={kd.temperature:g})*T^2" if kd.mode == "soft" else "CE(s, argmax t)"
            parts.append(f"{1 - kd.alpha:g}*{soft}")
        for i, t in enumerate(self.terms):
            weight = self.auto.describe(i) if self.auto is not None else f"{t.weight:g}"
            parts.append(f"{weight}*{t.label or t.name}")
        return "loss = " + " + ".join(parts)
