"""Adapters: learned or parameter-free projectors that map a student feature into its teacher's shape.
Importing this package registers every shipped adapter in ``ADAPTERS``.

- :mod:`.layout`: declared feature layouts (map, tokens on a grid, sequence, vector) and token grids.
- :mod:`.base`: the ``Adapter`` contract (``forward`` the student side, ``target`` the teacher side), the
  registry, ``'auto'`` (:func:`auto_kind`) and :func:`build_adapter`.
- :mod:`.maps`: ``identity``, ``linear``, ``mlp``, ``conv1x1``, ``resize``.
- :mod:`.tokens`: ``tokens``, ``tokens_to_map``, ``map_to_tokens``.
- :mod:`.attention`: ``attention`` (head mixing and token resampling of attention maps).
"""

from .attention import AttentionAdapter, mixing_init
from .base import ADAPTERS, Adapter, Identity, adapter_name, auto_kind, build_adapter
from .layout import Layout, model_token_hints, resize_map, split_tokens
from .maps import Conv1x1, LastDim, Resize
from .tokens import MapToTokens, TokensToMap, TokensToTokens

__all__ = [
    "ADAPTERS", "Adapter", "AttentionAdapter", "Conv1x1", "Identity", "LastDim", "Layout", "MapToTokens", "Resize",
    "TokensToMap", "TokensToTokens", "adapter_name", "auto_kind", "build_adapter", "mixing_init",
    "model_token_hints", "resize_map", "split_tokens",
]
