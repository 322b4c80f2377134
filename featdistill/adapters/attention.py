"""The ``'attention'`` adapter: aligns attention probability maps ``[B, H, N, N]`` between models with different
head counts and token grids (rows stay distributions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import ADAPTERS, Adapter, Identity, mismatch
from .layout import Shape, resize_map
from .tokens import _grid

EPS = 1e-8


def _renormalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(dim=-1, keepdim=True).clamp_min(EPS)


def mixing_init(s_heads: int, t_heads: int, smooth: float = 0.1) -> torch.Tensor:
    """Logits ``[H_t, H_s]`` whose row softmax is ``(1 - smooth) * overlap + smooth / H_s``, where ``overlap[j, i]``
    is the (row-normalised) overlap of intervals ``[j, j+1) / H_t`` and ``[i, i+1) / H_s``: identity-like when
    ``H_s == H_t``, contiguous student-head averages when ``H_s > H_t``, copies when ``H_s < H_t``."""
    j = torch.arange(t_heads, dtype=torch.float64)[:, None]
    i = torch.arange(s_heads, dtype=torch.float64)[None, :]
    lo = torch.maximum(j / t_heads, i / s_heads)
    hi = torch.minimum((j + 1) / t_heads, (i + 1) / s_heads)
    overlap = (hi - lo).clamp_min(0)
    weights = (1 - smooth) * overlap / overlap.sum(dim=1, keepdim=True) + smooth / s_heads
    return weights.log().float()


def _times(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x [..., K] @ m [K, J]`` as one 2-D product (matmul would run a slow batched loop on a strided ``x``)."""
    return (x.reshape(-1, x.shape[-1]) @ m).view(*x.shape[:-1], m.shape[-1])


def resample_matrix(source: Sequence[int], target: Sequence[int]) -> torch.Tensor:
    """``R [h_t*w_t, h_s*w_s]`` (float32): ``R @ v`` resamples a flattened ``h_s x w_s`` grid ``v`` onto ``h_t x w_t``
    exactly as :func:`.layout.resize_map` does (it is linear), read off by resizing each basis grid."""
    n = source[0] * source[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *source)
    return resize_map(basis, target).reshape(n, -1).T.float().contiguous()


class AttentionAdapter(Adapter):
    """Aligns probability maps ``[B, H_s, N_s, N_s] -> [B, H_t, M, M]`` (rows stay distributions).

    Tokens (when the sequences differ): only patch-to-patch attention is compared. Prefix (class /
    distillation) rows and columns are dropped on both sides; the student's ``[h_s*w_s, h_s*w_s]`` block is
    resampled onto the teacher grid along keys and queries (area pooling for integer shrinks, else bilinear;
    both keep values >= 0; applied as one fixed matrix, :func:`resample_matrix`), and every row is renormalised
    to sum 1. ``target()`` drops the teacher's prefix and renormalises its rows likewise, so ``M = h_t*w_t``.
    Otherwise ``M = N_s = N_t``.

    Heads (when ``H_s != H_t``, or ``mix_heads=True``): learned logits ``mix [H_t, H_s]``, softmaxed over
    ``H_s``, so teacher head ``j`` is matched by a convex combination of student heads (see :func:`mixing_init`).
    """

    def __init__(self, s_heads: int, t_heads: int, tokens: tuple | None = None, mix_heads: bool = True):
        super().__init__()
        self.s_heads, self.t_heads = s_heads, t_heads
        self.tokens = tokens  # (s_prefix, s_grid, t_prefix, t_grid) or None
        self.mix = nn.Parameter(mixing_init(s_heads, t_heads)) if mix_heads else None
        # not persistent: derived from `tokens`, so state_dicts stay as they were
        self.register_buffer("resample", None if tokens is None else resample_matrix(tokens[1], tokens[3]),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H_s, N_s, N_s] -> [B, H_t, M, M]`` (float32, autocast off: rows must keep summing to 1)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.tokens is None:
                return self._mix(x)
            # Resampling is linear: out = R @ x @ R^T with R [M, S] (queries on the left, keys on the right).
            # All but the last product run on the small side, held transposed as (R x)^T [B, H, S, M]: the full
            # map's row sums are (R x) @ (R^T 1), and renormalising rows and mixing heads commute with "@ R^T".
            r, p = self.resample.float(), self.tokens[0]
            x = _times(x[:, :, p:, p:].transpose(-2, -1), r.T)  # [B, H_s, S, M]: queries resampled
            x = x / (x * r.sum(dim=0)[:, None]).sum(dim=-2, keepdim=True).clamp_min(EPS)  # full rows sum to 1
            return _times(self._mix(x).transpose(-2, -1), r.T)  # [B, H_t, M, M]: keys resampled, the only big one

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H_s, Q, K] -> [B, H_t, Q, K]``: teacher head ``j`` a convex combination of student heads."""
        if self.mix is None:
            return x
        return torch.einsum("ts,bsqk->btqk", self.mix.softmax(dim=1), x)

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        if self.tokens is None:
            return teacher
        p = self.tokens[2]
        return _renormalise(teacher.float()[:, :, p:, p:])

    def extra_repr(self) -> str:
        return f"heads {self.s_heads}->{self.t_heads}, tokens={self.tokens}, mix={self.mix is not None}"


@ADAPTERS.register("attention")
def attention(student: Shape, teacher: Shape, student_prefix: int | None = None,
              student_grid: Sequence[int] | None = None, teacher_prefix: int | None = None,
              teacher_grid: Sequence[int] | None = None, mix_heads: bool | None = None, **hints) -> Adapter:
    """Adapter for attention maps ``(H_s, N_s, N_s) -> (H_t, N_t, N_t)`` (see :class:`AttentionAdapter`).

    Equal shapes (and no token hints that differ) give a parameter-free ``Identity``. Token layouts come from
    the declared hints (timm ViTs declare theirs; see :mod:`.layout`); maps of different token counts need them.
    ``mix_heads=True`` forces learned head mixing even when ``H_s == H_t`` (initialised close to identity).
    """
    for side, shape in (("student", student), ("teacher", teacher)):
        if len(shape) != 3 or shape[1] != shape[2]:
            raise mismatch("attention", student, teacher,
                           f"the {side} is not a square attention map [heads, N, N]; hook '<attn>.qkv' with "
                           "select=featdistill.capture.QkvToAttention(attn_module) to get one")
    (hs, ns, _), (ht, nt, _) = student, teacher
    declared = [p is not None or g is not None for p, g in ((student_prefix, student_grid),
                                                             (teacher_prefix, teacher_grid))]
    tokens = None
    if ns != nt or all(declared):  # equal counts with one side undeclared: the same tokens, compared as they are
        s_prefix, s_grid = _grid("attention", student, teacher, "student", ns, student_prefix, student_grid)
        t_prefix, t_grid = _grid("attention", student, teacher, "teacher", nt, teacher_prefix, teacher_grid)
        if (ns, s_prefix, tuple(s_grid)) != (nt, t_prefix, tuple(t_grid)):
            tokens = (s_prefix, tuple(s_grid), t_prefix, tuple(t_grid))
    mix = hs != ht if mix_heads is None else bool(mix_heads)
    if tokens is None and not mix:
        if hs != ht:
            raise mismatch("attention", student, teacher, "head counts differ and mix_heads=False")
        return Identity()
    return AttentionAdapter(hs, ht, tokens, mix)
