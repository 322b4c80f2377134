"""Automatic loss-scale calibration for feature terms (``Pair(weight='auto')``).

Feature losses differ in scale by orders of magnitude (published FitNet / AT / PKT weights span 100 to
30000). An 'auto' weight is measured instead of tuned: over the first ``steps`` training steps it is set so
that ``weight * feature_term = ratio * reference_term`` on average (the reference is the logit-KD term, or
the task term without KD), then frozen. The weights are buffers, so checkpoints, ``--resume`` and DDP
(which broadcasts rank 0's buffers) keep them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AutoWeights(nn.Module):
    """Weights ``[P]`` of P feature terms; entries given as ``None`` are calibrated, the rest fixed."""

    def __init__(self, weights: Sequence[float | None], ratios: Sequence[float], steps: int = 20):
        super().__init__()
        n = len(weights)
        self.steps = steps
        self.register_buffer("weights", torch.tensor([1.0 if w is None else float(w) for w in weights]))
        self.register_buffer("auto", torch.tensor([w is None for w in weights], dtype=torch.bool))
        self.register_buffer("ratios", torch.tensor([float(r) for r in ratios]))
        self.register_buffer("ref_sum", torch.zeros(()))
        self.register_buffer("feat_sum", torch.zeros(n))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self._frozen = False  # a Python flag, so finished calibration costs the step no device sync

    @property
    def calibrating(self) -> bool:
        if not self._frozen and int(self.seen) >= self.steps:
            self._frozen = True
        return not self._frozen

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._frozen = False  # a checkpoint taken mid-calibration resumes calibrating

    @torch.no_grad()
    def observe(self, reference: torch.Tensor, raw: torch.Tensor) -> None:
        """Fold one step's reference term (scalar) and unweighted feature terms ``[P]`` into the estimate."""
        if not self.calibrating:
            return
        self.ref_sum += reference.detach().float()
        self.feat_sum += raw.detach().float()
        self.seen += 1
        estimate = self.ratios * self.ref_sum / self.feat_sum.clamp_min(1e-12)
        self.weights.copy_(torch.where(self.auto, estimate, self.weights))

    def describe(self, i: int) -> str:
        if not bool(self.auto[i]):
            return f"{float(self.weights[i]):g}"
        if self.calibrating:
            return f"auto(ratio={float(self.ratios[i]):g}, calibrating {int(self.seen)}/{self.steps})"
        return f"{float(self.weights[i]):.4g}[auto]"
