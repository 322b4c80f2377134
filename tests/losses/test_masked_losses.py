"""Masked per-token losses: a padded batch gives the same per-token loss as its sequences alone (right and left
padding), identical inputs give 0, an all-ones mask changes nothing, and rows with no real key stay finite."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses import LOSSES, build_loss

LENGTHS, T, C, H = (6, 3), 6, 5, 2
GEN = torch.Generator().manual_seed(0)


def pad(seqs: list[torch.Tensor], side: str, dim: int = 0) -> torch.Tensor:
    """Stack ``[L_i, ...]`` (on ``dim``) padded with random junk to ``T``, on the right or the left."""
    out = []
    for s in seqs:
        shape = list(s.shape)
        shape[dim] = T - s.shape[dim]
        junk = torch.randn(*shape, generator=GEN) * 10
        out.append(torch.cat([s, junk] if side == "right" else [junk, s], dim=dim))
    return torch.stack(out)


def mask_for(side: str) -> torch.Tensor:
    m = torch.zeros(len(LENGTHS), T, dtype=torch.int64)
    for i, n in enumerate(LENGTHS):
        m[i, :n] = 1 if side == "right" else 0
        if side == "left":
            m[i, T - n:] = 1
    return m


def token_weighted(values: list[float]) -> float:
    return sum(n * v for n, v in zip(LENGTHS, values)) / sum(LENGTHS)


def loss(name: str, s, t, mask=None):
    module = build_loss(name, s.shape[1:], t.shape[1:])
    assert module.masked
    return module(s, t, mask=mask)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", ["mse", "cosine", "smooth_l1"])
def test_sequence_losses_count_real_tokens_only(name, side):
    s = [torch.randn(n, C, generator=GEN) for n in LENGTHS]
    t = [torch.randn(n, C, generator=GEN) for n in LENGTHS]
    padded = loss(name, pad(s, side), pad(t, side), mask_for(side))
    alone = token_weighted([loss(name, a[None], b[None]).item() for a, b in zip(s, t)])
    assert padded.item() == pytest.approx(alone, rel=1e-5)
    real_s, real_t = torch.cat(s), torch.cat(t)  # independent formulas over the real tokens
    expected = {"mse": lambda: F.mse_loss(real_s, real_t),
                "smooth_l1": lambda: F.smooth_l1_loss(real_s, real_t),
                "cosine": lambda: nn.CosineEmbeddingLoss()(real_s, real_t, torch.ones(len(real_s)))}[name]()
    assert padded.item() == pytest.approx(expected.item(), rel=1e-5)
    same = pad(s, side)
    assert loss(name, same, same.clone(), mask_for(side)).item() == pytest.approx(0.0, abs=1e-6)


def test_all_ones_mask_and_unrelated_shapes_change_nothing():
    s, t = torch.randn(2, T, C, generator=GEN), torch.randn(2, T, C, generator=GEN)
    ones = torch.ones(2, T)
    for name in ("mse", "cosine", "smooth_l1"):
        assert loss(name, s, t, ones).item() == pytest.approx(loss(name, s, t).item(), rel=1e-6)
    pooled_s, pooled_t = torch.randn(2, C, generator=GEN), torch.randn(2, C, generator=GEN)  # no token axis
    assert loss("mse", pooled_s, pooled_t, mask_for("right")).item() == F.mse_loss(pooled_s, pooled_t).item()


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    """``[..., L, L]`` scores -> causal probabilities (keys j <= i)."""
    n = scores.shape[-1]
    return torch.softmax(scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")), dim=-1)


def padded_maps(maps: list[torch.Tensor], side: str, junk_rows: bool) -> torch.Tensor:
    """``[H, L_i, L_i]`` maps placed in ``[B, H, T, T]``; padded keys 0 (as the model gives them); padded query rows
    hold junk probability rows, or rows that are all 0 (a query with no real key)."""
    out = torch.zeros(len(maps), H, T, T)
    for i, m in enumerate(maps):
        n = m.shape[-1]
        at = slice(0, n) if side == "right" else slice(T - n, T)
        if junk_rows:
            out[i] = torch.softmax(torch.randn(H, T, T, generator=GEN), dim=-1)
        out[i, :, at, :] = 0
        out[i, :, at, at] = m
    return out


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", ["attention_kl", "attention_mse"])
def test_attention_losses_count_real_query_rows_only(name, side):
    s = [causal_softmax(torch.randn(H, n, n, generator=GEN)) for n in LENGTHS]
    t = [causal_softmax(torch.randn(H, n, n, generator=GEN)) for n in LENGTHS]
    ps = padded_maps(s, side, junk_rows=True).requires_grad_()
    pt = padded_maps(t, side, junk_rows=False)  # padded rows all 0: no real key at all
    padded = loss(name, ps, pt, mask_for(side))
    alone = token_weighted([loss(name, a[None], b[None]).item() for a, b in zip(s, t)])
    assert padded.item() == pytest.approx(alone, rel=1e-5)
    if name == "attention_kl":  # independent formula: sum_k t log(t / s) per real row, mean over rows and heads
        rows = [(b * (b.clamp_min(1e-8).log() - a.clamp_min(1e-8).log())).sum(-1).mean().item() for a, b in zip(s, t)]
        assert padded.item() == pytest.approx(token_weighted(rows), rel=1e-5)
    padded.backward()
    assert torch.isfinite(ps.grad).all()
    assert ps.grad[mask_for(side)[:, None, :, None].expand_as(ps) == 0].abs().max() == 0  # padded rows: no push
    same = padded_maps(t, side, junk_rows=True)
    assert loss(name, same, same.clone(), mask_for(side)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("side", ["right", "left"])
def test_value_relations_over_padded_keys_equal_relations_over_real_tokens(side):
    """A relation softmax over all T keys (padding included, as the tap computes it) restricted by the mask
    equals the relation of the sequence alone."""
    def relation(v: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> causal MiniLM relation
        return causal_softmax(v @ v.transpose(-2, -1) / math.sqrt(v.shape[-1]))

    vs = [torch.randn(H, n, 4, generator=GEN) for n in LENGTHS]
    vt = [torch.randn(H, n, 4, generator=GEN) for n in LENGTHS]
    ps, pt = relation(pad(vs, side, dim=1)), relation(pad(vt, side, dim=1))
    padded = LOSSES.get("value_relation_kl")(ps, pt, mask=mask_for(side))
    alone = token_weighted([LOSSES.get("value_relation_kl")(relation(a[None]), relation(b[None])).item()
                            for a, b in zip(vs, vt)])
    assert padded.item() == pytest.approx(alone, rel=1e-5)
