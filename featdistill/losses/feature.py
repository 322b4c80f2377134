"""Feature losses between an adapted student feature and its teacher feature of the same shape: FitNet hints
(``mse``), ``smooth_l1`` and ``cosine``. Shapes: maps ``[B, C, H, W]``, tokens ``[B, N, C]`` or vectors ``[B, C]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LOSSES


@LOSSES.register("mse")
def mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (FitNet hints). Any equal shapes."""
    return F.mse_loss(student.float(), teacher.float())


@LOSSES.register("smooth_l1")
def smooth_l1(student: torch.Tensor, teacher: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 (Huber with ``beta``) over all elements. Any equal shapes."""
    return F.smooth_l1_loss(student.float(), teacher.float(), beta=beta)


def channel_dim(x: torch.Tensor) -> int:
    """Maps ``[B, C, H, W]`` keep channels on dim 1; tokens ``[B, N, C]`` and vectors ``[B, C]`` on the last."""
    return 1 if x.dim() == 4 else -1


@LOSSES.register("cosine")
def cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cos(s, t)`` over the channel dim, averaged over batch and positions."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=channel_dim(student), eps=1e-8)).mean()
