"""Feature losses between an adapted student feature and its teacher feature: FitNet hints (``mse``),
``smooth_l1`` and ``cosine`` (equal shapes), ``nst`` (neuron selectivity transfer: MMD between channel
distributions, widths may differ) and ``vid`` (variational information distillation: Gaussian likelihood with
learned per-channel variances). Shapes: maps ``[B, C, H, W]``, tokens ``[B, N, C]`` or vectors ``[B, C]``.
``mse``, ``smooth_l1`` and ``cosine`` are ``masked``: for sequences ``[B, T, C]`` with a padding ``mask`` ``[B, T]``
they average over real tokens only (:mod:`.masking`); ``cosine`` is then DistilBERT's cosine embedding loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .base import LOSSES, Loss, declares
from .masking import sequence_mask, token_mean
from .relational import _float32


def _elementwise(loss: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """An elementwise loss averaged over all elements; sequences ``[B, T, C]``: over channels, then real tokens."""
    tokens = sequence_mask(loss, mask)
    return loss.mean() if tokens is None else token_mean(loss.mean(dim=-1), tokens)


@LOSSES.register("mse")
@declares(masked=True)
def mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over all elements (FitNet hints). Any equal shapes; sequences ``[B, T, C]`` with a
    padding ``mask`` ``[B, T]``: the mean over channels and real tokens."""
    if mask is None:
        return F.mse_loss(student.float(), teacher.float())
    return _elementwise(F.mse_loss(student.float(), teacher.float(), reduction="none"), mask)


@LOSSES.register("smooth_l1")
@declares(masked=True)
def smooth_l1(student: torch.Tensor, teacher: torch.Tensor, beta: float = 1.0,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth L1 (Huber with ``beta``) over all elements. Any equal shapes; masked as :func:`mse`."""
    if mask is None:
        return F.smooth_l1_loss(student.float(), teacher.float(), beta=beta)
    return _elementwise(F.smooth_l1_loss(student.float(), teacher.float(), beta=beta, reduction="none"), mask)


def channel_dim(x: torch.Tensor) -> int:
    """Maps ``[B, C, H, W]`` keep channels on dim 1; tokens ``[B, N, C]`` and vectors ``[B, C]`` on the last."""
    return 1 if x.dim() == 4 else -1


@LOSSES.register("cosine")
@declares(masked=True)
def cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - cos(s, t)`` over the channel dim, averaged over batch and positions; sequences ``[B, T, C]`` with a
    padding ``mask`` ``[B, T]``: over real tokens only (DistilBERT's cosine embedding loss on hidden states)."""
    per_position = 1 - F.cosine_similarity(student.float(), teacher.float(), dim=channel_dim(student), eps=1e-8)
    return token_mean(per_position, sequence_mask(student, mask))


# -- distribution matching: NST ----------------------------------------------------------------------------------
def _channel_rows(x: torch.Tensor) -> torch.Tensor:
    """Maps ``[B, C, H, W]`` -> ``[B, C, H*W]``; tokens ``[B, N, C]`` -> ``[B, C, N]``: one row per channel."""
    return x.flatten(2) if x.dim() == 4 else x.transpose(1, 2)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor, degree: int, c: float) -> torch.Tensor:
    """``[B, M, P], [B, K, P] -> [B, M, K]``: ``k(a_i, b_j) = (a_i . b_j + c)^degree`` for each sample."""
    return (a @ b.transpose(1, 2) + c).pow(degree)


@LOSSES.register("nst")
@declares(channel_free=True)
@_float32
def neuron_selectivity_transfer(student: torch.Tensor, teacher: torch.Tensor, degree: int = 2,
                                c: float = 0.0) -> torch.Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer"): squared MMD between the student's and the teacher's channels, each channel a sample
    of where it fires across positions. Maps ``[B, C_s, H, W]`` vs ``[B, C_t, H, W]`` or tokens ``[B, N, C_s]``
    vs ``[B, N, C_t]``: positions must agree, widths may differ (``channel_free``: the ``'auto'`` adapter only
    resizes the student's map to the teacher's ``H, W``).

    Per sample, each channel's activations over the ``P`` positions (``'b c h w -> b c (h w)'``, tokens
    ``'b n c -> b c n'``) are L2-normalised: rows ``s_i`` ``[C_s, P]`` and ``t_j`` ``[C_t, P]``. With the
    polynomial kernel ``k(x, y) = (x . y + c)^degree`` (paper default ``degree=2``, ``c=0``)::

        loss = mean_b [ mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') - 2 mean_{i,j} k(s_i, t_j) ]

    the mean over the batch of each sample's MMD^2 (all pairs, diagonal included). For ``degree=2, c=0`` this
    equals ``||S^T S / C_s - T^T T / C_t||_F^2`` with ``S`` ``[C_s, P]``: the distance between the two
    channel-averaged ``[P, P]`` position Gram matrices, so it is >= 0 and 0 when both sides agree.

    Follows the paper's Eq. (poly kernel, per-channel normalisation) with RepDistiller's ``NSTLoss`` reduction
    (each kernel matrix ``[B, C, C']`` averaged over all its entries), which is the same. Differences: the teacher
    term is kept (a constant: the teacher is detached), as in RepDistiller, so identical inputs give 0;
    RepDistiller average-pools whichever map is larger, here the Pair's adapter brings the student to the
    teacher's size. (torchdistill ships no NST loss.) RepDistiller trains it with weight ``-b 50``.
    Memory: three ``[B, C, C']`` kernel matrices. The math runs in float32 with autocast off.
    """
    if student.dim() not in (3, 4) or teacher.dim() != student.dim():
        raise ShapeError(f"nst compares channels across positions of maps [B, C, H, W] or tokens [B, N, C]; got "
                         f"student {list(student.shape)} and teacher {list(teacher.shape)}. Pair layers that "
                         "keep positions (not pooled vectors).")
    s, t = _channel_rows(student.float()), _channel_rows(teacher.detach().float())
    if s.shape[0] != t.shape[0] or s.shape[2] != t.shape[2]:
        raise ShapeError(f"nst needs the same batch and positions on both sides; got student {list(student.shape)} "
                         f"and teacher {list(teacher.shape)}. Use adapter='auto' (it resizes maps) or a layer "
                         "with the teacher's spatial size.")
    s, t = F.normalize(s, dim=2), F.normalize(t, dim=2)
    k_ss = _poly_kernel(s, s, degree, c).mean(dim=(1, 2))
    k_tt = _poly_kernel(t, t, degree, c).mean(dim=(1, 2))
    k_st = _poly_kernel(s, t, degree, c).mean(dim=(1, 2))
    return (k_ss + k_tt - 2 * k_st).mean()


# -- variational information distillation: VID ------------------------------------------------------------------
def _inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = log(1 + e^x) = y`` (``y > 0``): ``log(e^y - 1)``, computed without overflow."""
    return y + math.log(-math.expm1(-y))


@_float32
def _gaussian_nll(mean: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return 0.5 * (variance.log() + (target - mean).pow(2) / variance)


@LOSSES.register("vid")
class VID(Loss):
    """Variational information distillation (Ahn et al., CVPR 2019): the student, through the Pair's adapter,
    predicts the mean ``mu`` of a Gaussian over the teacher's feature, with a learned variance per teacher
    channel; the loss is the negative log-likelihood of the teacher's feature, which lower-bounds (up to
    constants) the mutual information between the two layers.

    Shapes: ``mu`` (the adapted student) and ``t`` (teacher) equal, maps ``[B, C, H, W]`` (channels on dim 1),
    tokens ``[B, N, C]`` or vectors ``[B, C]`` (channels last)::

        sigma2_c = softplus(alpha_c) + eps
        loss     = mean_{b, c, positions} 0.5 * ( log sigma2_c + (t - mu)^2 / sigma2_c )

    the Gaussian NLL without its ``0.5 log 2 pi`` constant, averaged over every element, as RepDistiller's
    ``VIDLoss`` (after the authors' code) and torchdistill's ``VIDLoss`` reduce it. ``alpha`` ``[C]`` is this
    module's parameter, sized by :meth:`build` from the teacher: ``teacher_shape[0]`` for maps ``(C, H, W)``,
    ``teacher_shape[-1]`` for tokens ``(N, C)`` and vectors ``(C,)``. It starts at ``log(exp(init_variance - eps)
    - 1)`` so every variance starts at ``init_variance`` (paper / RepDistiller: 5.0, ``eps`` 1e-5). It trains,
    checkpoints and syncs with the student, as the Distiller holds its losses as submodules.

    The mean network is the Pair's adapter: with ``adapter='auto'`` a map pair gets ``conv1x1`` (1x1 conv +
    BatchNorm, then resized to the teacher's ``H, W``) and a vector or token pair ``linear``; ``'mlp'`` is a
    deeper choice for the last dim. RepDistiller's regressor is deeper for maps (conv1x1-ReLU-conv1x1-ReLU-conv1x1,
    no BatchNorm) and average-pools the larger map; pass such a module as a custom adapter factory
    (``adapter=lambda s, t: nn.Sequential(...)``) to reproduce it. RepDistiller trains VID with weight ``-b 1``.
    The math runs in float32 with autocast off; the teacher is detached.
    """

    def __init__(self, channels: int, init_variance: float = 5.0, eps: float = 1e-5):
        super().__init__()
        if channels < 1:
            raise ShapeError(f"vid needs at least one teacher channel, got {channels}")
        if not init_variance > eps > 0:
            raise ValueError(f"vid: need init_variance > eps > 0, got init_variance={init_variance}, eps={eps}")
        self.eps = float(eps)
        self.alpha = nn.Parameter(torch.full((channels,), _inverse_softplus(init_variance - eps)))

    @classmethod
    def build(cls, student_shape: Sequence[int], teacher_shape: Sequence[int], **kwargs: Any) -> VID:
        if len(teacher_shape) == 0:
            raise ShapeError("vid needs teacher features with a channel dim: maps [C, H, W], tokens [N, C] or "
                             "vectors [C]; got a scalar per sample.")
        channels = teacher_shape[0] if len(teacher_shape) == 3 else teacher_shape[-1]
        return cls(int(channels), **kwargs)

    @property
    def variance(self) -> torch.Tensor:
        """``[C]`` the per-channel variances ``softplus(alpha) + eps``."""
        return F.softplus(self.alpha.float()) + self.eps

    def forward(self, mean: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if mean.shape != teacher.shape or mean.dim() < 2:
            raise ShapeError(f"vid compares the predicted mean with the teacher feature of the same shape; got "
                             f"{list(mean.shape)} and {list(teacher.shape)}. Use adapter='auto' or fix the adapter.")
        dim = channel_dim(teacher)
        if teacher.shape[dim] != len(self.alpha):
            raise ShapeError(f"vid was built for {len(self.alpha)} teacher channels but got {list(teacher.shape)} "
                             f"(channels on dim {dim % teacher.dim()}).")
        shape = [1] * teacher.dim()
        shape[dim] = -1
        return _gaussian_nll(mean.float(), teacher.detach().float(), self.variance.view(shape)).mean()

    @property
    def label(self) -> str:
        return "vid"

    def extra_repr(self) -> str:
        return f"channels={len(self.alpha)}, eps={self.eps:g}"
