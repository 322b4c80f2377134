"""Padding masks for per-token losses: only real tokens count, so a padded batch gives the same per-token loss as
its sequences run one by one.

A loss that declares ``masked`` gets ``mask`` ``[B, T]`` (1 = a real token, the batch's ``attention_mask``) or
None. It applies to features laid out per token: sequences ``[B, T, C]`` (values averaged over real tokens) and
attention maps ``[B, H, T, T]`` (padded key columns dropped and each row renormalised over the real keys, then
values averaged over heads and real query rows). Any other shape (a pooled ``[B, C]``, image maps) has no token
axis to mask, and the mask is not used.
"""

from __future__ import annotations

import torch

from ..errors import ShapeError

EPS = 1e-8


def _check(mask: torch.Tensor, batch: int) -> None:
    if mask.dim() != 2 or mask.shape[0] != batch:
        raise ShapeError(f"a padding mask is [B, T] (the batch's attention_mask), got {list(mask.shape)} for a "
                         f"batch of {batch}; pass attention_mask as the tokenizer returns it")


def sequence_mask(feature: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` as a float ``[B, T]`` when ``feature`` is a sequence ``[B, T, C]`` of its tokens, else None."""
    if mask is None or feature.dim() != 3:
        return None
    _check(mask, feature.shape[0])
    return mask.to(feature.device, torch.float32) if feature.shape[1] == mask.shape[1] else None


def map_mask(maps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` as a float ``[B, T]`` when ``maps`` are token-to-token maps ``[B, H, T, T]`` of its tokens, else
    None."""
    if mask is None or maps.dim() != 4 or maps.shape[-1] != maps.shape[-2]:
        return None
    _check(mask, maps.shape[0])
    return mask.to(maps.device, torch.float32) if maps.shape[-1] == mask.shape[1] else None


def token_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``values`` ``[B, T]`` (or ``[B, H, T]``, one per head and token) averaged over the real tokens of ``mask``
    ``[B, T]`` (every token when None). A batch with no real token gives 0, not NaN."""
    if mask is None:
        return values.mean()
    weights = mask[:, None, :] if values.dim() == 3 else mask
    weights = weights.expand_as(values)
    # where, not a product: a non-finite value at a padded position must not reach the sum (or its gradient)
    total = torch.where(weights > 0, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / weights.sum().clamp_min(1.0)


def restrict_keys(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probability rows ``[B, H, T, T]`` restricted to the real keys of ``mask`` ``[B, T]`` and renormalised: for
    a softmax over all keys this equals the softmax over the real keys alone. A row with no real key becomes 0."""
    kept = torch.where(mask[:, None, None, :] > 0, maps, torch.zeros((), dtype=maps.dtype, device=maps.device))
    return kept / kept.sum(dim=-1, keepdim=True).clamp_min(EPS)
