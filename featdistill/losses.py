"""Pure loss functions. Argument order is always ``(student, teacher, ...)``; each returns a scalar.

``LOSSES`` maps names to the feature losses a :class:`~featdistill.Pair` can use.
Losses in ``CHANNEL_FREE`` compare spatial statistics only, so student and teacher may differ in width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Registry

LOSSES = Registry("loss")
CHANNEL_FREE = {"attention_transfer", "at", "attention_transfer_tokens"}


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
    returned. ``mode='hard'`` replaces the soft term by cross-entropy to the teacher's argmax (DeiT).
    """
    s, t = student_logits.float(), teacher_logits.float()
    if mode == "soft":
        soft = F.kl_div(
            F.log_softmax(s / temperature, dim=-1),
            F.log_softmax(t / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        ) * (temperature**2)
    elif mode == "hard":
        soft = F.cross_entropy(s, t.argmax(dim=-1))
    else:
        raise ValueError(f"kd_loss mode must be 'soft' or 'hard', got {mode!r}")
    if labels is None:
        return soft
    return alpha * F.cross_entropy(s, labels) + (1 - alpha) * soft


@LOSSES.register("mse")
def mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (FitNet hints). Any equal shapes."""
    return F.mse_loss(student.float(), teacher.float())


@LOSSES.register("smooth_l1")
def smooth_l1(student: torch.Tensor, teacher: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 (Huber with ``beta``) over all elements. Any equal shapes."""
    return F.smooth_l1_loss(student.float(), teacher.float(), beta=beta)


def _channel_dim(x: torch.Tensor) -> int:
    # maps [B, C, H, W] keep channels on dim 1; tokens [B, N, C] and vectors [B, C] on the last dim
    return 1 if x.dim() == 4 else -1


@LOSSES.register("cosine")
def cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cos(s, t)`` over the channel dim, averaged over batch and positions.
    Maps ``[B, C, H, W]``, tokens ``[B, N, C]`` or vectors ``[B, C]``."""
    dim = _channel_dim(student)
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=dim, eps=1e-8)).mean()


def attention_map(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis spatial attention: ``[B, C, H, W] -> [B, H*W]``, L2-normalised."""
    return F.normalize(x.float().pow(p).mean(dim=1).flatten(1), dim=1)


@LOSSES.register("attention_transfer", "at")
def attention_transfer(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Attention transfer for maps ``[B, C_s, H, W]`` vs ``[B, C_t, H, W]`` (widths may differ):
    ``(a(s) - a(t)).pow(2).mean()`` with ``a(x) = normalize(x.pow(p).mean(dim=1).flatten(1))``.
    Token inputs ``[B, N, C]`` are handled as in :func:`attention_transfer_tokens`."""
    if student_feat.dim() == 3:
        return attention_transfer_tokens(student_feat, teacher_feat, p)
    return (attention_map(student_feat, p) - attention_map(teacher_feat, p)).pow(2).mean()


@LOSSES.register("attention_transfer_tokens")
def attention_transfer_tokens(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Attention transfer for token sequences ``[B, N, C_s]`` vs ``[B, N, C_t]``: the per-token
    energy ``normalize(x.pow(p).mean(dim=-1))`` ``[B, N]`` replaces the spatial map."""
    a_s = F.normalize(student_feat.float().pow(p).mean(dim=-1), dim=1)
    a_t = F.normalize(teacher_feat.float().pow(p).mean(dim=-1), dim=1)
    return (a_s - a_t).pow(2).mean()
