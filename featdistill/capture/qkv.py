"""Attention-map distillation for ViTs whose attention runs fused (``scaled_dot_product_attention``); Hugging
Face attention modules are read as :mod:`.hf_attention` describes (:func:`attention_hook` picks the way).

Fused kernels never materialise the attention probabilities, so nothing can hook them. Instead we
hook the fused ``qkv`` linear of a timm-style attention module (attributes ``qkv``, ``num_heads``,
optional ``head_dim``, ``scale``, ``q_norm``, ``k_norm``) and recompute the maps from its output
``[B, N, 3*C]``. The model itself is never patched, so its forward output is unchanged.

- :class:`QkvToAttention`: ``softmax(q_norm(q) k_norm(k)^T * scale)`` -> ``[B, H, N, N]``.
- :class:`QkvToValueRelation`: MiniLM value relation ``softmax(v v^T / sqrt(head_dim))`` -> ``[B, H, N, N]``.
- :func:`attention_maps` / :func:`attention_layer_names`: one-shot extraction and discovery.

Their losses (``attention_kl``, ``attention_mse``) live in :mod:`featdistill.losses.attention`, the adapter that
aligns heads and token grids in :mod:`featdistill.adapters.attention`.

Attention masks (``attn_mask`` / ``is_causal``) passed to the module at call time are not seen by
the ``qkv`` hook and are ignored: the maps are those of plain bidirectional self-attention.
With a Distiller, ``Pair('blocks.3.attn', 'blocks.5.attn', capture='attention', loss='attention_kl')`` does
this for you (see :mod:`featdistill.capture.taps`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from einops import rearrange
from torch import nn

from ..errors import FeatdistillError, ShapeError
from .hf_attention import hf_attention_hook, is_hf_attention
from .hooks import FeatureHooks, resolve_module


def _heads(attn_module: nn.Module) -> tuple[int, int]:
    """``(num_heads, head_dim)`` of a timm-style attention module, or a FeatdistillError naming what is missing."""
    qkv, num_heads = getattr(attn_module, "qkv", None), getattr(attn_module, "num_heads", None)
    missing = [a for a, ok in (("qkv (nn.Linear)", isinstance(qkv, nn.Linear)),
                               ("num_heads (int)", isinstance(num_heads, int))) if not ok]
    if missing:
        raise FeatdistillError(
            f"{type(attn_module).__name__} is not a fused-qkv attention module: it lacks {', '.join(missing)}. "
            "Pass the attention module itself (timm 'blocks.3.attn', Hugging Face 'transformer.h.3.attn' or "
            "'model.layers.3.self_attn'; not the block or its qkv layer); find candidates with "
            "featdistill.attention_layer_names(model). Other modules with separate q/k/v projections need their "
            "own select= callable."
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


def _fused(m: nn.Module) -> bool:
    return isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)


def attention_hook(model: nn.Module, name: str, kind: str = "attention") -> tuple[str, object]:
    """``(layer to hook, select=)`` reading ``kind`` maps ``[B, heads, N, N]`` of the attention module ``name``: its
    ``qkv`` output for a timm-style fused module, its own output (or value projection) for a Hugging Face one
    (see :mod:`.hf_attention`)."""
    module = resolve_module(model, name)
    if kind not in TRANSFORMS:
        raise FeatdistillError(f"attention kind must be one of {sorted(TRANSFORMS)}, got {kind!r}")
    if not _fused(module) and is_hf_attention(module):
        return hf_attention_hook(module, name, kind)
    return f"{name}.qkv", qkv_transform(module, kind)


def attention_layer_names(model: nn.Module) -> list[str]:
    """Names of the attention modules a Pair can read maps from: fused ``qkv`` nn.Linear with an int
    ``num_heads`` (timm ``'blocks.0.attn'``) or Hugging Face self-attention (``'model.layers.0.self_attn'``)."""
    def fits(m: nn.Module) -> bool:
        return _fused(m) or (is_hf_attention(m) and not getattr(m, "is_cross_attention", False))

    return [name for name, m in model.named_modules() if name and fits(m)]


def attention_maps(model: nn.Module, layer_names: Iterable[str], x: torch.Tensor | Mapping,
                   kind: str = "attention") -> dict[str, torch.Tensor]:
    """``{name: [B, heads, N, N]}`` for attention modules ``layer_names`` from one no-grad forward of ``x``.

    Hooks ``f'{name}.qkv'`` (Hugging Face modules: the module or its value projection) only, removed afterwards,
    and runs in eval mode; the model's train/eval mode (every submodule's) is restored afterwards. ``x`` may be a
    mapping of model inputs (``input_ids``, ``attention_mask``), passed as ``model(**x)``.
    ``kind='value_relation'`` gives MiniLM value relations instead of attention probabilities.
    """
    names = list(dict.fromkeys(layer_names))
    hooked = {n: attention_hook(model, n, kind) for n in names}
    select = dict(hooked.values())
    modes = [(m, m.training) for m in model.modules()]
    with FeatureHooks(model, list(select), select=select, detach=True) as hooks:
        try:
            model.eval()
            with torch.no_grad():
                model(**x) if isinstance(x, Mapping) else model(x)
            captured = hooks.pop()
        finally:
            for m, training in modes:
                m.training = training
    return {n: captured[hooked[n][0]] for n in names}
