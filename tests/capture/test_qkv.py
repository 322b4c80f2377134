"""Attention maps recomputed from a fused qkv output: equal to timm's own softmax, model untouched."""

from __future__ import annotations

import math
import pickle

import pytest
import timm
import torch
from torch import nn

from featdistill import FeatureHooks, count_hooks
from featdistill.capture import QkvToAttention, QkvToValueRelation, attention_layer_names, attention_maps, qkv_transform
from featdistill.errors import FeatdistillError, ShapeError, UnknownNameError


def vit(heads: int = 3, embed_dim: int = 24, patch_size: int = 8, qk_norm: bool = False, seed: int = 0,
        **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=patch_size, depth=3,
                              embed_dim=embed_dim, num_heads=heads, num_classes=5, qk_norm=qk_norm, **kwargs)
    if qk_norm:  # make the norms non-trivial so that skipping them would show
        for b in model.blocks:
            for norm in (b.attn.q_norm, b.attn.k_norm):
                nn.init.normal_(norm.weight, 1.0, 0.5)
                nn.init.normal_(norm.bias, 0.0, 0.5)
    return model.eval()


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference_probs(model: nn.Module, idx: int) -> torch.Tensor:
    """timm's own softmax: unfused attention, read at attn_drop (identity in eval)."""
    fused = [b.attn.fused_attn for b in model.blocks]
    for b in model.blocks:
        b.attn.fused_attn = False
    try:
        with FeatureHooks(model, [f"blocks.{idx}.attn.attn_drop"]) as hooks, torch.no_grad():
            model(X)
            return hooks.pop()[f"blocks.{idx}.attn.attn_drop"]
    finally:
        for b, f in zip(model.blocks, fused):
            b.attn.fused_attn = f


@pytest.mark.parametrize("heads,qk_norm", [(2, False), (3, False), (4, False), (3, True), (4, True)])
def test_maps_match_timm_unfused_softmax(heads, qk_norm):
    model = vit(heads=heads, qk_norm=qk_norm)
    names = [f"blocks.{i}.attn" for i in range(3)]
    maps = attention_maps(model, names, X)  # fused attention stays on here
    for i, name in enumerate(names):
        ref = reference_probs(model, i)
        assert maps[name].shape == (2, heads, 17, 17) == ref.shape
        assert maps[name].dtype == torch.float32
        torch.testing.assert_close(maps[name], ref, atol=1e-5, rtol=0)
    if qk_norm:  # the norms matter: recomputing without them is visibly wrong
        attn = model.blocks[1].attn
        plain = QkvToAttention(attn)
        plain.q_norm = plain.k_norm = nn.Identity()
        with FeatureHooks(model, ["blocks.1.attn.qkv"], select=plain) as hooks, torch.no_grad():
            model(X)
            assert (hooks.pop()["blocks.1.attn.qkv"] - maps["blocks.1.attn"]).abs().max() > 1e-3


def test_model_output_untouched_and_hooks_removed():
    model = vit(heads=3)
    assert model.blocks[0].attn.fused_attn  # the fused path is what we must not disturb
    with torch.no_grad():
        before = model(X)
    select = {f"blocks.{i}.attn.qkv": QkvToAttention(model.blocks[i].attn) for i in range(3)}
    with FeatureHooks(model, list(select), select=select) as hooks, torch.no_grad():
        during = model(X)
        assert len(hooks.pop()) == 3
    maps = attention_maps(model, ["blocks.2.attn"], X)
    with torch.no_grad():
        after = model(X)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert count_hooks(model) == 0 and maps["blocks.2.attn"].shape == (2, 3, 17, 17)


def test_attention_maps_runs_in_eval_restores_modes_and_reports_unknown_names():
    model = vit(heads=2, proj_drop_rate=0.5)
    expected = attention_maps(model, ["blocks.2.attn"], X)["blocks.2.attn"]
    model.train()
    model.blocks[0].eval()  # a mixed state (e.g. a frozen block) must come back as it was
    modes = [m.training for m in model.modules()]
    torch.testing.assert_close(attention_maps(model, ["blocks.2.attn"], X)["blocks.2.attn"], expected)
    assert [m.training for m in model.modules()] == modes
    with pytest.raises(UnknownNameError, match="blocks.9.attn"):
        attention_maps(model, ["blocks.9.attn"], X)
    assert count_hooks(model) == 0
    assert attention_layer_names(model) == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]


def test_value_relation_matches_hand_computation_and_pickles():
    model = vit(heads=3)
    attn = model.blocks[1].attn
    with FeatureHooks(model, ["blocks.1.attn.qkv"]) as hooks, torch.no_grad():
        model(X)
        qkv = hooks.pop()["blocks.1.attn.qkv"]
    b, n, _ = qkv.shape
    v = qkv.reshape(b, n, 3, 3, 8).permute(2, 0, 3, 1, 4)[2]  # timm's layout: (3, heads, head_dim)
    expected = torch.softmax(v @ v.transpose(-2, -1) / math.sqrt(8), dim=-1)
    transform = qkv_transform(attn, "value_relation")
    assert isinstance(transform, QkvToValueRelation)
    torch.testing.assert_close(transform(qkv), expected)
    torch.testing.assert_close(attention_maps(model, ["blocks.1.attn"], X, kind="value_relation")["blocks.1.attn"],
                               expected)
    clone = pickle.loads(pickle.dumps(QkvToAttention(attn)))
    torch.testing.assert_close(clone(qkv), QkvToAttention(attn)(qkv))


def test_qkv_transform_errors_name_the_module():
    with pytest.raises(FeatdistillError, match=r"Linear .*lacks qkv \(nn.Linear\), num_heads"):
        qkv_transform(nn.Linear(4, 4))
    with pytest.raises(FeatdistillError, match="Block"):
        qkv_transform(vit().blocks[0])
    with pytest.raises(FeatdistillError, match="value_relation"):
        qkv_transform(vit().blocks[0].attn, kind="values")
    with pytest.raises(ShapeError, match=r"\[B, N, 72\]"):
        QkvToAttention(vit().blocks[0].attn)(torch.randn(2, 17, 24))
