"""Capture: read hidden states of unmodified models by module name.

- :mod:`.hooks`: ``FeatureHooks`` (forward hooks by name, tuple/dict selection, repeats, in-place safety),
  ``list_layers``, ``count_hooks``.
- :mod:`.qkv`: attention maps recomputed from a fused ``qkv`` output (``QkvToAttention``, ``attention_maps``), and
  ``attention_hook``, which also reads Hugging Face attention modules (:mod:`.hf_attention`: eager attention
  weights, MiniLM value relations from ``v_proj`` / ``c_attn``).
- :mod:`.taps`: ``Tap`` (one side of a pair, one builder per capture kind) and ``TapSet`` (a model's taps, read
  in one forward).
- :mod:`.pairing`: one tap per paired layer and back to one feature per pair (``pair_taps``, ``per_pair``);
  automatic layer pairs by relative depth.
"""

from .hf_attention import AttentionWeights, ValueRelation, is_hf_attention
from .hooks import FeatureHooks, count_hooks, list_layers, resolve_module, select_tensor
from .pairing import auto_pairs, block_names, pair_taps, per_pair, uniform_mapping
from .qkv import (
    QkvToAttention,
    QkvToValueRelation,
    attention_hook,
    attention_layer_names,
    attention_maps,
    qkv_transform,
)
from .taps import TAPS, Tap, TapSet, make_tap

__all__ = [
    "TAPS", "AttentionWeights", "FeatureHooks", "QkvToAttention", "ValueRelation", "attention_hook",
    "is_hf_attention", "QkvToValueRelation", "Tap", "TapSet", "attention_layer_names",
    "attention_maps", "auto_pairs", "block_names", "count_hooks", "list_layers", "make_tap", "pair_taps",
    "per_pair", "qkv_transform", "resolve_module", "select_tensor", "uniform_mapping",
]
