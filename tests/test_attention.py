"""Attention maps recomputed from fused qkv outputs, their losses and the 'attention' adapter (CPU, tiny ViTs)."""

from __future__ import annotations

import math
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from featdistill import ADAPTERS, LOSSES, Distiller, FeatureHooks, Pair, count_hooks
from featdistill.adapters import build_adapter
from featdistill.attention import (
    AttentionAdapter,
    QkvToAttention,
    QkvToValueRelation,
    attention_kl,
    attention_layer_names,
    attention_maps,
    attention_mse,
    qkv_transform,
)
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


def rows(b: int, h: int, n: int) -> torch.Tensor:
    return torch.softmax(torch.randn(b, h, n, n) * 2, dim=-1)


# -- recomputed maps --------------------------------------------------------------------------------------------
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


# -- losses -----------------------------------------------------------------------------------------------------
def test_attention_kl():
    s, t = rows(2, 3, 5), rows(2, 3, 5)
    assert LOSSES.get("attention_kl") is attention_kl is LOSSES.get("value_relation_kl")
    assert attention_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    assert attention_kl(s, t).item() > 0
    for _ in range(5):
        assert attention_kl(rows(2, 2, 4), rows(2, 2, 4)).item() >= 0
    hand = sum((t[b, h, q] * (t[b, h, q] / s[b, h, q]).log()).sum() for b in range(2) for h in range(3)
               for q in range(5)) / (2 * 3 * 5)
    torch.testing.assert_close(attention_kl(s, t), hand)
    torch.testing.assert_close(attention_kl(s, t), F.kl_div(s.log(), t, reduction="sum") / 30)
    t0 = t.clone()
    t0[..., 0] = 0  # zero teacher probabilities contribute nothing, even against a zero student
    assert torch.isfinite(attention_kl(torch.zeros_like(s), t0))
    with pytest.raises(ShapeError, match=r"\[2, 3, 5, 5\].*\[2, 6, 5, 5\].*adapter='attention'"):
        attention_kl(s, rows(2, 6, 5))


def test_attention_mse():
    s, t = rows(2, 3, 5), rows(2, 3, 5)
    torch.testing.assert_close(attention_mse(s, t), ((s - t) ** 2).sum() / s.numel())
    assert attention_mse(t + 0.5, t).item() == pytest.approx(0.25)
    assert LOSSES.get("attention_mse") is attention_mse


# -- adapter ----------------------------------------------------------------------------------------------------
def sums_to_one(x: torch.Tensor) -> bool:
    return torch.allclose(x.sum(-1), torch.ones(()), atol=1e-5) and bool((x >= 0).all())


def test_adapter_heads_and_upsampled_tokens():
    adapter = ADAPTERS.get("attention")((3, 17, 17), (6, 65, 65))
    assert isinstance(adapter, AttentionAdapter) and adapter.mix.shape == (6, 3)
    out, tgt = adapter(rows(2, 3, 17)), adapter.target(rows(2, 6, 65))
    assert out.shape == tgt.shape == (2, 6, 64, 64)
    assert sums_to_one(out) and sums_to_one(tgt)
    uniform = adapter(torch.full((1, 3, 17, 17), 1 / 17))  # uniform attention stays uniform on the new grid
    torch.testing.assert_close(uniform, torch.full((1, 6, 64, 64), 1 / 64))


def test_adapter_drops_prefix_and_pools_tokens():
    adapter = build_adapter("attention", (2, 66, 66), (2, 17, 17))
    assert adapter.mix is None and sum(p.numel() for p in adapter.parameters()) == 0
    s = rows(2, 2, 66)
    out = adapter(s)
    assert out.shape == adapter.target(rows(2, 2, 17)).shape == (2, 2, 16, 16) and sums_to_one(out)
    # by hand: patch block, 2x2 keys summed, 2x2 queries averaged, rows renormalised
    block = s[:, :, 2:, 2:].reshape(2, 2, 4, 2, 4, 2, 4, 2, 4, 2)
    hand = block.sum(dim=(7, 9)).mean(dim=(3, 5)).reshape(2, 2, 16, 16)
    torch.testing.assert_close(out, hand / hand.sum(-1, keepdim=True))


def test_adapter_same_grid_other_prefix_compares_patch_blocks():
    t = rows(1, 2, 17)
    s = torch.zeros(1, 2, 18, 18)
    s[:, :, 2:, 2:] = t[:, :, 1:, 1:]
    s[:, :, :, :2] = 0.3  # prefix columns and rows are dropped
    s[:, :, :2] = 0.7
    adapter = build_adapter("attention", (2, 18, 18), (2, 17, 17), student_prefix=2, teacher_prefix=1)
    torch.testing.assert_close(adapter(s), adapter.target(t))
    assert attention_kl(adapter(s), adapter.target(t)).item() == pytest.approx(0.0, abs=1e-6)


def test_adapter_identity_and_mixing_init():
    same = build_adapter("attention", (3, 17, 17), (3, 17, 17))
    x = rows(2, 3, 17)
    assert same(x) is x and sum(p.numel() for p in same.parameters()) == 0
    forced = build_adapter("attention", (3, 17, 17), (3, 17, 17), mix_heads=True)
    weights = forced.mix.softmax(dim=1)
    assert torch.allclose(weights.diagonal(), torch.full((3,), 0.9 + 0.1 / 3))
    shrink = build_adapter("attention", (4, 17, 17), (2, 17, 17)).mix.softmax(dim=1)
    assert shrink[0, :2].sum() > 0.9 and shrink[1, 2:].sum() > 0.9  # contiguous student heads averaged


def test_adapter_gradients_reach_mixing_weights():
    adapter = build_adapter("attention", (3, 17, 17), (6, 65, 65))
    s = rows(2, 3, 17).requires_grad_()
    loss = attention_kl(adapter(s), adapter.target(rows(2, 6, 65)))
    loss.backward()
    assert adapter.mix.grad is not None and adapter.mix.grad.abs().sum() > 0 and s.grad.abs().sum() > 0


@pytest.mark.parametrize("student,teacher", [((3, 17, 16), (6, 65, 65)), ((17, 17), (6, 65, 65)),
                                             ((3, 17, 17), (6, 8, 65, 65))])
def test_adapter_shape_errors(student, teacher):
    with pytest.raises(ShapeError, match=r"adapter 'attention'.*student features.*teacher features.*QkvToAttention"):
        build_adapter("attention", student, teacher)
    with pytest.raises(ShapeError, match=rf"{list(student)}.*{list(teacher)}".replace("[", r"\[")):
        build_adapter("attention", student, teacher)


def test_distiller_end_to_end():
    teacher, student = vit(heads=6, patch_size=4, seed=1), vit(heads=3, seed=2)  # 65 tokens vs 17
    pair = Pair("blocks.2.attn.qkv", "blocks.1.attn.qkv", loss="attention_kl", adapter="attention",
                select=QkvToAttention(student.blocks[2].attn), teacher_select=QkvToAttention(teacher.blocks[1].attn))
    with Distiller(teacher, student, [pair], sample_input=X) as d:
        d.train()
        out = d(X, torch.tensor([0, 1]))
        out["loss"].backward()
        assert torch.isfinite(out["feat/blocks.2.attn.qkv~blocks.1.attn.qkv"])
        assert d.adapters[0].mix.grad.abs().sum() > 0
        assert student.blocks[2].attn.qkv.weight.grad.abs().sum() > 0
