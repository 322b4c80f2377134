"""Attention losses: where a layer's activation energy sits (Zagoruyko & Komodakis' attention transfer), and
attention probability maps ``[B, heads, N, N]`` (TinyBERT / MiniLM, captured with ``Pair(capture='attention')``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from .base import LOSSES, declares

EPS = 1e-8


def attention_map(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis spatial attention: ``[B, C, H, W] -> [B, H*W]``, L2-normalised."""
    return F.normalize(x.float().pow(p).mean(dim=1).flatten(1), dim=1)


@LOSSES.register("attention_transfer", "at")
@declares(channel_free=True)
def attention_transfer(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Attention transfer for maps ``[B, C_s, H, W]`` vs ``[B, C_t, H, W]`` (widths may differ):
    ``(a(s) - a(t)).pow(2).mean()`` with ``a(x) = normalize(x.pow(p).mean(dim=1).flatten(1))``.
    Token inputs ``[B, N, C]`` are handled as in :func:`attention_transfer_tokens`."""
    if student_feat.dim() == 3:
        return attention_transfer_tokens(student_feat, teacher_feat, p)
    return (attention_map(student_feat, p) - attention_map(teacher_feat, p)).pow(2).mean()


@LOSSES.register("attention_transfer_tokens")
@declares(channel_free=True)
def attention_transfer_tokens(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Attention transfer for token sequences ``[B, N, C_s]`` vs ``[B, N, C_t]``: the per-token
    energy ``normalize(x.pow(p).mean(dim=-1))`` ``[B, N]`` replaces the spatial map."""
    a_s = F.normalize(student_feat.float().pow(p).mean(dim=-1), dim=1)
    a_t = F.normalize(teacher_feat.float().pow(p).mean(dim=-1), dim=1)
    return (a_s - a_t).pow(2).mean()


def _check_maps(student: torch.Tensor, teacher: torch.Tensor, loss: str) -> None:
    if student.shape != teacher.shape or student.dim() < 2:
        raise ShapeError(
            f"{loss} compares attention maps of equal shape [B, H, N, N]; got student {list(student.shape)} and "
            f"teacher {list(teacher.shape)}. Use adapter='attention' to align heads and tokens."
        )


@LOSSES.register("attention_kl", "value_relation_kl")
def attention_kl(student: torch.Tensor, teacher: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``KL(teacher || student)`` per query row of probability maps ``[B, H, N, N]``: summed over keys
    (last dim), averaged over batch, heads and rows. Logs are taken of ``clamp(p, min=eps)``."""
    _check_maps(student, teacher, "attention_kl")
    s, t = student.float(), teacher.float()
    kl = t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())
    return kl.sum(dim=-1).mean()


@LOSSES.register("attention_mse")
def attention_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between maps ``[B, H, N, N]``, averaged over all elements."""
    _check_maps(student, teacher, "attention_mse")
    return (student.float() - teacher.float()).pow(2).mean()
