"""Logit losses: what the student's logits learn from the teacher's. ``LOGIT_LOSSES`` maps names to
:class:`LogitLoss` subclasses, chosen with ``LogitKD(loss=...)``.

A logit loss sees rows ``[N, K]``: one row per image (``N = B``), or per kept token of a sequence model (the
combiner flattens ``[B, T, V]`` and drops padded positions first, so every term is normalised per token).

Shipped: ``'soft'`` (Hinton), ``'hard'`` (DeiT), ``'dkd'`` (Decoupled KD), ``'dist'`` (DIST) and ``'ls'`` /
``'logit_standardized'`` (Hinton KD on z-scored logits). Each method's parameters come from
``LogitKD(loss_kwargs=...)``; its temperature is always ``LogitKD.temperature`` (default 4), so a method whose
paper uses another T says which ``--set kd.temperature=...`` reproduces it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatdistillError
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


def _kl_rows(student_log: torch.Tensor, teacher_log: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` of log-probability rows, summed over classes and averaged over rows."""
    return F.kl_div(student_log, teacher_log, reduction="batchmean", log_target=True)


@LOGIT_LOSSES.register("dkd")
class DecoupledKD(LogitLoss):
    """Decoupled KD (Zhao et al., CVPR 2022), as mdistiller's ``dkd_loss`` computes it.

    With ``p = softmax(z / T)`` over ``K`` classes and ``y`` the target of each row:
    ``TCKD = KL(b_t || b_s)`` with the binary ``b = [p_y, 1 - p_y]``, ``NCKD = KL(q_t || q_s)`` with
    ``q = softmax(z_{k != y} / T)`` over the ``K - 1`` non-target classes, both summed over classes, averaged over
    the ``N`` rows and times ``T^2``; ``loss = w * (alpha * TCKD + beta * NCKD)``. ``student``, ``teacher``:
    ``[N, K]`` (``K >= 2``), ``labels``: ``[N]`` class indices (required).

    Defaults are mdistiller's CIFAR-100 ones, ``alpha=1``, ``beta=8`` (its T is 4, LogitKD's default). Two choices
    give mdistiller's value more stably: ``b`` is formed in log space and the target column is removed from ``q``
    rather than pushed down by 1000 before the softmax (the same value up to ``exp(-1000)``).

    ``w = min(steps / warmup_steps, 1)``: mdistiller ramps ``w`` over its first 20 epochs (``epoch / 20``, from
    epoch 1, constant within an epoch). A loss sees no epochs, so ``steps`` counts its training-mode calls (a
    buffer, so a checkpoint resumes the ramp exactly; eval-mode calls use the current ``w`` and do not count);
    the first call gets ``1 / warmup_steps``. ``warmup_steps=0`` (the default) means no ramp: a fixed number of
    steps would be the whole run on a small dataset and negligible on ImageNet, and featdistill's trainer already
    warms up the learning rate and clips the gradient norm, which is what the ramp guards against (early, large
    NCKD gradients); a ramp would also shrink the reference that ``Pair(weight='auto')`` calibrates against in
    its first steps. For mdistiller's ramp pass ``warmup_steps = 20 * steps_per_epoch`` (15640 for CIFAR-100 at
    batch 64); calls are micro-batches, so multiply by the accumulation factor if gradients are accumulated.
    """

    formula = "(alpha*TCKD + beta*NCKD; T={T})*T^2"  # describe() fills in alpha, beta and the warm-up

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0, warmup_steps: int = 0):
        super().__init__(temperature)
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise FeatdistillError(f"dkd: {name} must be a number >= 0 (mdistiller: alpha=1, beta=8), "
                                       f"got {value!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise FeatdistillError(f"dkd: warmup_steps must be an integer >= 0 (0: no warm-up), got {warmup_steps!r}")
        self.alpha, self.beta, self.warmup_steps = float(alpha), float(beta), warmup_steps
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def describe(self) -> str:
        ramp = f"min(step/{self.warmup_steps}, 1)*" if self.warmup_steps else ""
        return f"{ramp}({self.alpha:g}*TCKD + {self.beta:g}*NCKD; T={self.temperature:g})*T^2"

    def weight(self) -> torch.Tensor | float:
        """The warm-up factor ``w`` for the current ``steps``."""
        if not self.warmup_steps:
            return 1.0
        return (self.steps.double() / self.warmup_steps).clamp(max=1.0).float()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels=None) -> torch.Tensor:
        if labels is None:
            raise FeatdistillError("DKD needs the targets: its TCKD/NCKD split is about the target class, so call "
                                   "the Distiller with labels (distiller(x, y)), or use kd.loss='soft' without them")
        n, k = student.shape
        if k < 2 or labels.shape != (n,):
            raise FeatdistillError(f"DKD needs logits [N, K >= 2] and labels [N] of class indices, got logits "
                                   f"{tuple(student.shape)} and labels {tuple(labels.shape)}")
        if self.training:
            self.steps += 1
        t = self.temperature
        target = F.one_hot(labels.long(), k).bool()
        s, te = student.float() / t, teacher.float() / t

        def binary(z):  # log [p_y, 1 - p_y]; the rest as a logsumexp, not log(1 - p_y)
            total = z.logsumexp(-1)
            return torch.stack([z[target] - total, z.masked_fill(target, float("-inf")).logsumexp(-1) - total], -1)

        tckd = _kl_rows(binary(s), binary(te))
        rest_s, rest_t = s[~target].view(n, k - 1), te[~target].view(n, k - 1)
        nckd = _kl_rows(rest_s.log_softmax(-1), rest_t.log_softmax(-1))
        return self.weight() * (self.alpha * tckd + self.beta * nckd) * (t**2)


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of matching rows of ``a`` and ``b`` ``[M, D]`` -> ``[M]`` (a constant row gives 0)."""
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


@LOGIT_LOSSES.register("dist")
class DIST(LogitLoss):
    """DIST (Huang et al., NeurIPS 2022): the authors' ``DIST`` loss (hunto/image_classification_sota), with a
    temperature.

    With ``P = softmax(z / T)`` ``[N, K]`` for student and teacher:
    ``inter = 1 - mean_i pearson(P_s[i, :], P_t[i, :])`` (each row's class ranking),
    ``intra = 1 - mean_k pearson(P_s[:, k], P_t[:, k])`` (each class across the batch),
    ``loss = (beta * inter + gamma * intra) * T^2``. ``student``, ``teacher``: ``[N, K]``; ``labels`` unused.
    The intra term needs ``N >= 2`` (one row has no spread: its correlation counts as 0).

    Defaults are the paper's: ``beta = gamma = 1`` and ``tau = 1``. The authors' code has no temperature (tau = 1,
    no ``T^2``); ``T`` and ``T^2`` follow the tau form of OpenMMLab's ``DISTLoss``, the same at ``T = 1``. The
    temperature is ``LogitKD.temperature`` (default 4), so ``--set kd.temperature=1`` gives the paper's tau. The
    authors add 1e-8 to the product of norms;
    here that product is clamped at 1e-8 instead, so identical predictions give exactly 0; the two differ only by
    ``1e-8 / (|a| |b|)`` relative, i.e. only for nearly constant probability rows or columns.
    """

    formula = "DIST(beta*inter + gamma*intra; T={T})*T^2"  # describe() fills in beta and gamma

    def __init__(self, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0):
        super().__init__(temperature)
        for name, value in (("beta", beta), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise FeatdistillError(f"dist: {name} must be a number >= 0 (the paper uses 1), got {value!r}")
        self.beta, self.gamma = float(beta), float(gamma)

    def describe(self) -> str:
        return f"DIST({self.beta:g}*inter + {self.gamma:g}*intra; T={self.temperature:g})*T^2"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels=None) -> torch.Tensor:
        t = self.temperature
        p_s, p_t = (student.float() / t).softmax(-1), (teacher.float() / t).softmax(-1)
        inter = 1 - _pearson(p_s, p_t).mean()
        intra = 1 - _pearson(p_s.t(), p_t.t()).mean()
        return (self.beta * inter + self.gamma * intra) * (t**2)


def zscore(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row minus its mean, over ``eps +`` its standard deviation (Bessel-corrected, ``1 / (K - 1)``), as the
    logit-standardization authors' ``normalize``."""
    return (logits - logits.mean(-1, keepdim=True)) / (eps + logits.std(-1, keepdim=True))


@LOGIT_LOSSES.register("ls", "logit_standardized")
class StandardizedKD(LogitLoss):
    """Logit standardization (Sun et al., CVPR 2024): Hinton's KD on z-scored logits.

    ``loss = KL(softmax(Z(t) / T) || softmax(Z(s) / T)) * T^2``, averaged over the ``N`` rows, with
    ``Z(z) = (z - mean(z)) / (1e-7 + std(z))`` per row (:func:`zscore`). ``student``, ``teacher``: ``[N, K]``
    (``K >= 2``); ``labels`` unused. Any ``a * z + b`` (``a > 0``) standardises to the same row, so the student
    matches the teacher's logit relations, not their range.

    This follows the authors' code (their ``kd_loss`` with ``logit_stand``): ``std`` is ``torch.std``'s unbiased
    estimator (``1 / (K - 1)``, a factor ``sqrt(K / (K - 1))`` away from the population one), ``1e-7`` is added to
    it, and ``T`` is their base temperature (``--base-temp``, default 2 on CIFAR-100), applied to the standardised
    logits, with the usual ``T^2``. So ``--set kd.temperature=2`` gives their default. They weight the term 9
    against CE 0.1; ``alpha = 1/91`` keeps that 1:90 ratio (the total is their loss over 9.1).
    """

    formula = "KL(zscore(t)||zscore(s); T={T})*T^2"

    def __init__(self, temperature: float = 2.0):
        super().__init__(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels=None) -> torch.Tensor:
        t = self.temperature
        log_s, log_t = (zscore(student.float()) / t).log_softmax(-1), (zscore(teacher.float()) / t).log_softmax(-1)
        return _kl_rows(log_s, log_t) * (t**2)


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
        hinton = [m for m in ("hard", "soft") if m in LOGIT_LOSSES]
        others = [m for m in LOGIT_LOSSES if m not in hinton]
        raise ValueError(f"kd_loss mode must be one of {', '.join(map(repr, hinton))}, got {mode!r}"
                         + (f"; the other logit losses work too: {', '.join(map(repr, others))}" if others else ""))
    soft = LOGIT_LOSSES.get(mode)(temperature)(student_logits, teacher_logits, labels)
    if labels is None:
        return soft
    return alpha * F.cross_entropy(student_logits.float(), labels) + (1 - alpha) * soft
