"""Attention losses: where a layer's activation energy sits (Zagoruyko & Komodakis' attention transfer), and
attention probability maps ``[B, heads, N, N]`` (TinyBERT / MiniLM, captured with ``Pair(capture='attention')``).

The map losses are ``masked``: with a padding ``mask`` ``[B, T]`` (text batches) padded key columns are dropped and
each row renormalised over the real keys (a no-op for the model's own probabilities, whose padded keys are 0
already; for value relations it is the softmax over real tokens), and only real query rows are averaged, so a
row with no real key never yields NaN and a padded batch gives the same per-row loss as unpadded sequences."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from .base import LOSSES, Loss, declares
from .masking import map_mask, restrict_keys, token_mean

EPS = 1e-8


def attention_map(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis spatial attention: ``[B, C, H, W] -> [B, H*W]``, L2-normalised."""
    return F.normalize(x.float().pow(p).mean(dim=1).flatten(1), dim=1)


def energy_map(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Where ``x``'s activation energy sits, L2-normalised: maps ``[B, C, H, W] -> [B, H*W]`` (:func:`attention_map`),
    tokens ``[B, N, C] -> [B, N]``."""
    if x.dim() == 3:
        return F.normalize(x.float().pow(p).mean(dim=-1), dim=1)
    return attention_map(x, p)


def attention_transfer(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Attention transfer for maps ``[B, C_s, H, W]`` vs ``[B, C_t, H, W]`` (widths may differ):
    ``(a(s) - a(t)).pow(2).mean()`` with ``a(x) = normalize(x.pow(p).mean(dim=1).flatten(1))``.
    Token inputs ``[B, N, C]`` are handled as in :func:`attention_transfer_tokens`."""
    return (energy_map(student_feat, p) - energy_map(teacher_feat, p)).pow(2).mean()


@LOSSES.register("attention_transfer", "at")
class AttentionTransfer(Loss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): the squared distance between where the student's and
    the teacher's activation energy sits, ``mean((a(s) - a(t))^2)`` with ``a(x) = normalize(mean_c x^p)``, for maps
    ``[B, C, H, W]`` (``a: [B, H*W]``) or tokens ``[B, N, C]`` (``a: [B, N]``); widths may differ.

    The teacher's map ``a(t)`` is its :meth:`teacher_part`: a teacher-output cache stores ``[B, H*W]`` instead of
    the ``[B, C_t, H, W]`` feature. Equal to :func:`attention_transfer` on raw features."""

    channel_free = True

    def __init__(self, p: int = 2):
        super().__init__()
        self.p = p

    def teacher_part(self, teacher: torch.Tensor) -> torch.Tensor:
        return energy_map(teacher, self.p)

    def forward(self, student: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        return (energy_map(student, self.p) - teacher_map.float()).pow(2).mean()

    @property
    def label(self) -> str:
        return "attention_transfer"

    def extra_repr(self) -> str:
        return f"p={self.p}" if self.p != 2 else ""


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


def _masked_maps(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, renormalise: bool):
    """``(student, teacher, [B, T] float mask or None)``: float32 maps, restricted to real keys when masked."""
    s, t = student.float(), teacher.float()
    tokens = map_mask(s, mask)
    if tokens is not None and renormalise:
        s, t = restrict_keys(s, tokens), restrict_keys(t, tokens)
    return s, t, tokens


class _RowKL(torch.autograd.Function):
    """``mean over rows of sum over keys of t * (log clamp(t, eps) - log clamp(s, eps))`` for maps ``[..., N, N]``,
    with the gradient for ``s`` only (``t`` is a constant: a detached teacher).

    The autograd formula in :func:`attention_kl`, with its gradient exactly and its value to float rounding (the
    log of a ratio instead of a difference of logs: no cancellation where ``s`` is close to ``t``), computed in
    place on two map-sized buffers instead of about a dozen, with one log instead of two and no boolean mask:
    the maps are a step's largest tensors, and on CPU each log, each extra pass over memory and each comparison
    into a bool tensor costs more than the rest of the arithmetic."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
        kl = t.clamp_min(eps).div_(s.clamp_min(eps)).log_().mul_(t)
        ctx.save_for_backward(s, t)
        ctx.eps = eps
        return kl.sum(dim=-1).mean()  # rows [..., N] summed, then averaged

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        s, t = ctx.saved_tensors
        # d/ds of -t * log(clamp(s, eps)) is -t / s where s > eps, and 0 where clamp passes no gradient (s <= eps,
        # as autograd's clamp has it): dividing by s, or by +inf, gives both
        rows = s.numel() // s.shape[-1]
        return (t * -(grad / rows)).div_(F.threshold(s, ctx.eps, math.inf)), None, None


@LOSSES.register("attention_kl", "value_relation_kl")
@declares(masked=True)
def attention_kl(student: torch.Tensor, teacher: torch.Tensor, eps: float = EPS,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(teacher || student)`` per query row of probability maps ``[B, H, N, N]``: summed over keys
    (last dim), averaged over batch, heads and rows (real rows and keys of ``mask`` ``[B, N]``, see the module
    docstring). Logs are taken of ``clamp(p, min=eps)``."""
    _check_maps(student, teacher, "attention_kl")
    s, t, tokens = _masked_maps(student, teacher, mask, renormalise=True)
    if tokens is None and not (t.requires_grad and torch.is_grad_enabled()):  # the usual case: a frozen teacher
        return _RowKL.apply(s, t, eps)
    kl = t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())
    return token_mean(kl.sum(dim=-1), tokens)  # [B, H, N] rows


@LOSSES.register("attention_mse")
@declares(masked=True)
def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between maps ``[B, H, N, N]`` (TinyBERT), averaged over all elements; with a padding
    ``mask`` ``[B, N]``: over the real keys of each real query row, then over heads and real rows (maps are
    compared as given, not renormalised: TinyBERT's maps may be scores)."""
    _check_maps(student, teacher, "attention_mse")
    s, t, tokens = _masked_maps(student, teacher, mask, renormalise=False)
    if tokens is None:
        return (s - t).pow(2).mean()
    sq = torch.where(tokens[:, None, None, :] > 0, (s - t).pow(2), torch.zeros((), device=s.device))
    return token_mean(sq.sum(dim=-1) / tokens.sum(dim=-1).clamp_min(1.0)[:, None, None], tokens)
