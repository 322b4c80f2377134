"""Attention maps of Hugging Face attention modules (``GPT2Attention``, ``LlamaAttention``, ...), read without
patching the model.

- ``'attention'``: with ``attn_implementation='eager'`` the module returns ``(attn_output, attn_weights)`` whatever
  ``output_attentions`` says, ``attn_weights`` being the post-softmax probabilities ``[B, H, T, T]`` (one map per
  query head; grouped-query models repeat their key heads first). A hook on the module reads them, so they are
  exactly what the model used: rotary embeddings (applied to q and k inside the module), the causal mask and the
  padding mask are all in them (padded keys get probability 0). SDPA and flash kernels return ``None`` there:
  :class:`AttentionWeights` then raises an error naming the fix (build the model with eager attention).
- ``'value_relation'`` (MiniLM): ``softmax(v v^T / sqrt(head_dim))`` per head from the value projection, hooked
  on ``v_proj`` (Llama family) or GPT-2's fused ``c_attn`` (its last third), any attention implementation.
  Grouped-query models give one map per *key/value* head ``[B, H_kv, T, T]``: repeating them to ``H`` query
  heads, as the model repeats its values, would only add copies. Causal modules (``is_causal``) mask future
  tokens, as their attention does; padded tokens are left to the loss (its ``mask=`` renormalises over real keys).

In training mode a module with attention dropout returns the *dropped-out* weights (rows no longer sum to 1);
build the student with ``attn_pdrop=0`` (GPT-2) / ``attention_dropout=0`` (Llama's default) for attention KD.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ..errors import CaptureError, FeatdistillError, ShapeError

EAGER_FIX = ("attention probabilities are only formed by eager attention: build the model with "
             "attn_implementation='eager' (AutoModelForCausalLM.from_config(config, attn_implementation='eager'), "
             "or model.set_attn_implementation('eager'); featdistill's hf: models are eager unless their kwargs say "
             "otherwise)")


def is_hf_attention(module: nn.Module) -> bool:
    """A Hugging Face self-attention module: class ``*Attention`` with a ``config`` naming its attention
    implementation and separate (``q_proj``/``k_proj``/``v_proj``) or fused (GPT-2 ``c_attn``) projections."""
    config = getattr(module, "config", None)
    projections = hasattr(module, "v_proj") or hasattr(module, "c_attn")
    return (type(module).__name__.endswith("Attention") and hasattr(config, "_attn_implementation")
            and projections)


def _dropout(module: nn.Module) -> float:
    """The attention-probability dropout of ``module`` (GPT-2 ``attn_dropout`` module, Llama ``attention_dropout``)."""
    drop = getattr(module, "attn_dropout", None)
    if isinstance(drop, nn.Dropout):
        return float(drop.p)
    value = getattr(module, "attention_dropout", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


class AttentionWeights:
    """``select=`` for an HF attention module's output ``(attn_output, attn_weights, ...)``: the probabilities
    ``[B, H, T, T]``, as float32. A plain class (not a closure), so it pickles."""

    def __init__(self, module: nn.Module, name: str = ""):
        self.module, self.name, self.warned = module, name, False
        self.module_type = type(module).__name__

    def __call__(self, output: Any) -> torch.Tensor:
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if weights is None:
            impl = getattr(getattr(self.module, "config", None), "_attn_implementation", "?")
            raise CaptureError(f"{self.name or self.module_type} ({self.module_type}, attn_implementation={impl!r}) "
                               f"returned no attention weights; {EAGER_FIX}.")
        if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
            raise ShapeError(f"{self.module_type} returned attention weights {list(weights.shape)}, not "
                             "[B, heads, T, T] self-attention probabilities; pair a self-attention module.")
        if self.module.training and _dropout(self.module) > 0 and not self.warned:
            self.warned = True
            warnings.warn(f"{self.name or self.module_type} applies attention dropout p={_dropout(self.module):g} "
                          "in training, so its captured probabilities are the dropped-out ones; build the model "
                          "with attn_pdrop=0 (GPT-2) or attention_dropout=0 for attention distillation",
                          RuntimeWarning, stacklevel=2)
        return weights.float()

    def __repr__(self) -> str:
        return f"AttentionWeights({self.module_type})"


class ValueRelation:
    """``select=`` for the value projection's output ``[B, T, (parts) * H_kv * D]``: MiniLM's
    ``softmax(v v^T / sqrt(D))`` ``[B, H_kv, T, T]`` (float32), causal when the module is."""

    def __init__(self, module: nn.Module, heads: int, head_dim: int, part: int, parts: int):
        self.heads, self.head_dim, self.part, self.parts = heads, head_dim, part, parts
        self.causal = bool(getattr(module, "is_causal", False))
        self.module_type = type(module).__name__

    def __call__(self, projected: torch.Tensor) -> torch.Tensor:
        width = self.heads * self.head_dim
        if projected.dim() != 3 or projected.shape[-1] != self.parts * width:
            raise ShapeError(f"ValueRelation for {self.module_type} expects the value projection's output [B, T, "
                             f"{self.parts * width}], got {list(projected.shape)}")
        v = projected[..., self.part * width:(self.part + 1) * width].float()
        v = rearrange(v, "b t (h d) -> b h t d", h=self.heads)
        scores = v @ v.transpose(-2, -1) / math.sqrt(self.head_dim)
        if self.causal:  # the diagonal is always kept, so no row is empty
            t = scores.shape[-1]
            future = torch.ones(t, t, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def __repr__(self) -> str:
        return (f"ValueRelation({self.module_type}, kv_heads={self.heads}, head_dim={self.head_dim}, "
                f"causal={self.causal})")


def _value_projection(module: nn.Module, name: str) -> tuple[str, ValueRelation]:
    config = module.config
    heads = getattr(module, "num_heads", None) or config.num_attention_heads
    head_dim = getattr(module, "head_dim", None) or config.hidden_size // heads
    if hasattr(module, "v_proj"):  # separate projections; grouped-query: fewer value heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return f"{name}.v_proj", ValueRelation(module, kv_heads, head_dim, part=0, parts=1)
    if getattr(module, "is_cross_attention", False):
        raise FeatdistillError(f"{name} ({type(module).__name__}) is a cross-attention module; its values come from "
                               "the encoder. Pair a self-attention module (e.g. transformer.h.3.attn).")
    return f"{name}.c_attn", ValueRelation(module, heads, head_dim, part=2, parts=3)  # GPT-2: q | k | v


def hf_attention_hook(module: nn.Module, name: str, kind: str) -> tuple[str, Any]:
    """``(layer to hook, select=)`` reading ``kind`` (``'attention'`` or ``'value_relation'``) of the HF attention
    module ``module`` called ``name``."""
    if kind == "attention":
        return name, AttentionWeights(module, name)
    return _value_projection(module, name)
