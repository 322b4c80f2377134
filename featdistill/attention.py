"""Attention-map distillation for ViTs whose attention runs fused (``scaled_dot_product_attention``).

Fused kernels never materialise the attention probabilities, so nothing can hook them. Instead we
hook the fused ``qkv`` linear of a timm-style attention module (attributes ``qkv``, ``num_heads``,
optional ``head_dim``, ``scale``, ``q_norm``, ``k_norm``) and recompute the maps from its output
``[B, N, 3*C]``. The model itself is never patched, so its forward output is unchanged.

- :class:`QkvToAttention`: ``softmax(q_norm(q) k_norm(k)^T * scale)`` -> ``[B, H, N, N]``.
- :class:`QkvToValueRelation`: MiniLM value relation ``softmax(v v^T / sqrt(head_dim))`` -> ``[B, H, N, N]``.
- :func:`attention_maps` / :func:`attention_layer_names`: one-shot extraction and discovery.
- Losses ``attention_kl`` (alias ``value_relation_kl``) and ``attention_mse`` in ``LOSSES``.
- Adapter ``'attention'`` in ``ADAPTERS``: head mixing and token-grid resampling between maps.

Attention masks (``attn_mask`` / ``is_causal``) passed to the module at call time are not seen by
the ``qkv`` hook and are ignored: the maps are those of plain bidirectional self-attention.
With a Distiller, pair ``'blocks.3.attn.qkv'`` layers with ``select=QkvToAttention(model.blocks[3].attn)``,
``loss='attention_kl'`` and ``adapter='attention'``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from einops import rearrange
from torch import nn

from .adapters import ADAPTERS, Adapter, Identity, Shape, mismatch, resize_map, split_tokens
from .errors import FeatdistillError, ShapeError
from .hooks import FeatureHooks, resolve_module
from .losses import LOSSES

EPS = 1e-8

ATTENTION_KINDS = ("attention", "value_relation")  # Pair(capture=...) values handled here


def _heads(attn_module: nn.Module) -> tuple[int, int]:
    """``(num_heads, head_dim)`` of a timm-style attention module, or a FeatdistillError naming what is missing."""
    qkv, num_heads = getattr(attn_module, "qkv", None), getattr(attn_module, "num_heads", None)
    missing = [a for a, ok in (("qkv (nn.Linear)", isinstance(qkv, nn.Linear)),
                               ("num_heads (int)", isinstance(num_heads, int))) if not ok]
    if missing:
        raise FeatdistillError(
            f"{type(attn_module).__name__} is not a fused-qkv attention module: it lacks {', '.join(missing)}. "
            "Pass the attention module itself (e.g. model.blocks[3].attn, not the block or its qkv layer); "
            "find candidates with featdistill.attention.attention_layer_names(model). Modules with separate "
            "q/k/v projections need their own select= callable."
        )
    head_dim = getattr(attn_module, "head_dim", None) or qkv.out_features // (3 * num_heads)
    if qkv.out_features != 3 * num_heads * head_dim:
        raise FeatdistillError(
            f"{type(attn_module).__name__}.qkv has {qkv.out_features} outputs, expected 3 * num_heads({num_heads}) "
            f"* head_dim({head_dim}); pass a standard multi-head attention module."
        )
    return num_heads, head_dim


class _QkvTransform:
    """Shared part: split a fused qkv output ``[B, N, 3*H*D]`` into ``q, k, v`` each ``[B, H, N, D]``.

    A plain class (not a closure, not an ``nn.Module``) so it pickles and can be passed as ``select=``.
    """

    def __init__(self, attn_module: nn.Module):
        self.num_heads, self.head_dim = _heads(attn_module)
        self.module_type = type(attn_module).__name__

    def split(self, qkv_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if qkv_out.dim() != 3 or qkv_out.shape[-1] != 3 * self.num_heads * self.head_dim:
            raise ShapeError(
                f"{type(self).__name__} for {self.module_type} expects the qkv output [B, N, "
                f"{3 * self.num_heads * self.head_dim}], got {list(qkv_out.shape)}. Hook '<attn>.qkv'."
            )
        q, k, v = rearrange(qkv_out, "b n (three h d) -> three b h n d", three=3, h=self.num_heads).unbind(0)
        return q, k, v

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.module_type}, heads={self.num_heads}, head_dim={self.head_dim})"


class QkvToAttention(_QkvTransform):
    """``qkv_out [B, N, 3*C] -> softmax(q_norm(q) @ k_norm(k)^T * scale) [B, H, N, N]`` (float32).

    ``q_norm`` / ``k_norm`` (Identity unless the model uses qk_norm) are applied in the input dtype
    exactly as timm does, before the float32 product and softmax. Gradients flow through them.
    """

    def __init__(self, attn_module: nn.Module):
        super().__init__(attn_module)
        self.scale = float(getattr(attn_module, "scale", self.head_dim**-0.5))
        q_norm, k_norm = getattr(attn_module, "q_norm", None), getattr(attn_module, "k_norm", None)
        self.q_norm = nn.Identity() if q_norm is None else q_norm
        self.k_norm = nn.Identity() if k_norm is None else k_norm

    def __call__(self, qkv_out: torch.Tensor) -> torch.Tensor:
        q, k, _ = self.split(qkv_out)
        q, k = self.q_norm(q).float(), self.k_norm(k).float()
        return torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)


class QkvToValueRelation(_QkvTransform):
    """``qkv_out [B, N, 3*C] -> softmax(v @ v^T / sqrt(head_dim)) [B, H, N, N]`` (MiniLM value relation, float32)."""

    def __call__(self, qkv_out: torch.Tensor) -> torch.Tensor:
        v = self.split(qkv_out)[2].float()
        return torch.softmax(v @ v.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)


TRANSFORMS = {"attention": QkvToAttention, "value_relation": QkvToValueRelation}


def qkv_transform(attn_module: nn.Module, kind: str = "attention") -> _QkvTransform:
    """The ``select=`` callable for ``attn_module.qkv``: ``kind`` is ``'attention'`` or ``'value_relation'``."""
    if kind not in TRANSFORMS:
        raise FeatdistillError(f"qkv_transform kind must be one of {sorted(TRANSFORMS)}, got {kind!r}")
    return TRANSFORMS[kind](attn_module)


def attention_layer_names(model: nn.Module) -> list[str]:
    """Names of the submodules with a fused ``qkv`` nn.Linear and an int ``num_heads`` (e.g. ``'blocks.0.attn'``)."""
    def fits(m: nn.Module) -> bool:
        return isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)

    return [name for name, m in model.named_modules() if name and fits(m)]


def attention_maps(model: nn.Module, layer_names: Iterable[str], x: torch.Tensor,
                   kind: str = "attention") -> dict[str, torch.Tensor]:
    """``{name: [B, heads, N, N]}`` for attention modules ``layer_names`` from one no-grad forward of ``x``.

    Hooks ``f'{name}.qkv'`` only (removed afterwards) and runs in eval mode; the model's train/eval mode
    (every submodule's) is restored afterwards.
    ``kind='value_relation'`` gives MiniLM value relations instead of attention probabilities.
    """
    names = list(dict.fromkeys(layer_names))
    select = {f"{n}.qkv": qkv_transform(resolve_module(model, n), kind) for n in names}
    modes = [(m, m.training) for m in model.modules()]
    with FeatureHooks(model, list(select), select=select, detach=True) as hooks:
        try:
            model.eval()
            with torch.no_grad():
                model(x)
            captured = hooks.pop()
        finally:
            for m, training in modes:
                m.training = training
    return {n: captured[f"{n}.qkv"] for n in names}


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


class AttentionAdapter(Adapter):
    """Aligns probability maps ``[B, H_s, N_s, N_s] -> [B, H_t, M, M]`` (rows stay distributions).

    Tokens (when the sequences differ): only patch-to-patch attention is compared. Prefix (class /
    distillation) rows and columns are dropped on both sides; the student's ``[h_s*w_s, h_s*w_s]`` block is
    resampled onto the teacher grid along keys, then queries (area pooling for integer shrinks, else
    bilinear; both keep values >= 0), and every row is renormalised to sum 1. ``target()`` drops the
    teacher's prefix and renormalises its rows likewise, so ``M = h_t*w_t``. Otherwise ``M = N_s = N_t``.

    Heads (when ``H_s != H_t``, or ``mix_heads=True``): learned logits ``mix [H_t, H_s]``, softmaxed over
    ``H_s``, so teacher head ``j`` is matched by a convex combination of student heads (see :func:`mixing_init`).
    """

    def __init__(self, s_heads: int, t_heads: int, tokens: tuple | None = None, mix_heads: bool = True):
        super().__init__()
        self.s_heads, self.t_heads = s_heads, t_heads
        self.tokens = tokens  # (s_prefix, s_grid, t_prefix, t_grid) or None
        self.mix = nn.Parameter(mixing_init(s_heads, t_heads)) if mix_heads else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.tokens is not None:
            s_prefix, (sh, sw), _, t_grid = self.tokens
            x = rearrange(x[:, :, s_prefix:, s_prefix:], "b h q (kh kw) -> (b h) q kh kw", kh=sh, kw=sw)
            x = rearrange(resize_map(x, t_grid), "bh (qh qw) kh kw -> bh (kh kw) qh qw", qh=sh, qw=sw)
            x = rearrange(resize_map(x, t_grid), "(b h) k qh qw -> b h (qh qw) k", h=self.s_heads)
            x = _renormalise(x)
        if self.mix is not None:
            x = torch.einsum("ts,bsqk->btqk", self.mix.softmax(dim=1), x)
        return x

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
    the hints, else from :func:`~featdistill.adapters.split_tokens` (smallest prefix leaving a square grid).
    ``mix_heads=True`` forces learned head mixing even when ``H_s == H_t`` (initialised close to identity).
    """
    for side, shape in (("student", student), ("teacher", teacher)):
        if len(shape) != 3 or shape[1] != shape[2]:
            raise mismatch("attention", student, teacher,
                           f"the {side} is not a square attention map [heads, N, N]; hook '<attn>.qkv' with "
                           "select=featdistill.attention.QkvToAttention(attn_module) to get one")
    (hs, ns, _), (ht, nt, _) = student, teacher
    hinted = any(h is not None for h in (student_prefix, student_grid, teacher_prefix, teacher_grid))
    tokens = None
    if ns != nt or hinted:
        s_prefix, s_grid = split_tokens(ns, student_prefix, student_grid)
        t_prefix, t_grid = split_tokens(nt, teacher_prefix, teacher_grid)
        for side, n, prefix, grid in (("student", ns, s_prefix, s_grid), ("teacher", nt, t_prefix, t_grid)):
            if prefix < 0 or prefix + grid[0] * grid[1] != n:
                raise mismatch("attention", student, teacher,
                               f"{side} prefix {prefix} + grid {tuple(grid)} does not explain its {n} tokens; "
                               "fix the student_/teacher_prefix and _grid adapter_kwargs")
        if (ns, s_prefix, tuple(s_grid)) != (nt, t_prefix, tuple(t_grid)):
            tokens = (s_prefix, tuple(s_grid), t_prefix, tuple(t_grid))
    mix = hs != ht if mix_heads is None else bool(mix_heads)
    if tokens is None and not mix:
        if hs != ht:
            raise mismatch("attention", student, teacher, "head counts differ and mix_heads=False")
        return Identity()
    return AttentionAdapter(hs, ht, tokens, mix)
