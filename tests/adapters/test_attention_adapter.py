"""The 'attention' adapter: head mixing and token resampling of attention maps, alone and in a Distiller."""

import pytest
import timm
import torch
from torch import nn

from featdistill import ADAPTERS, Distiller, Pair
from featdistill.adapters import AttentionAdapter, build_adapter
from featdistill.adapters.layout import resize_map
from featdistill.capture import QkvToAttention
from featdistill.errors import ShapeError
from featdistill.losses import attention_kl


def vit(heads: int = 3, embed_dim: int = 24, patch_size: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=patch_size, depth=3,
                             embed_dim=embed_dim, num_heads=heads, num_classes=5).eval()


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


GRIDS = dict(student_grid=(4, 4), teacher_grid=(8, 8))  # 1 class token + 4x4 / 8x8 patches


def rows(b: int, h: int, n: int) -> torch.Tensor:
    return torch.softmax(torch.randn(b, h, n, n) * 2, dim=-1)


def sums_to_one(x: torch.Tensor) -> bool:
    return torch.allclose(x.sum(-1), torch.ones(()), atol=1e-5) and bool((x >= 0).all())


def test_adapter_heads_and_upsampled_tokens():
    adapter = ADAPTERS.get("attention")((3, 17, 17), (6, 65, 65), **GRIDS)
    assert isinstance(adapter, AttentionAdapter) and adapter.mix.shape == (6, 3)
    out, tgt = adapter(rows(2, 3, 17)), adapter.target(rows(2, 6, 65))
    assert out.shape == tgt.shape == (2, 6, 64, 64)
    assert sums_to_one(out) and sums_to_one(tgt)
    uniform = adapter(torch.full((1, 3, 17, 17), 1 / 17))  # uniform attention stays uniform on the new grid
    torch.testing.assert_close(uniform, torch.full((1, 6, 64, 64), 1 / 64))


def test_adapter_drops_prefix_and_pools_tokens():
    adapter = build_adapter("attention", (2, 66, 66), (2, 17, 17), student_prefix=2, teacher_prefix=1)
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
    adapter = build_adapter("attention", (3, 17, 17), (6, 65, 65), **GRIDS)
    s = rows(2, 3, 17).requires_grad_()
    loss = attention_kl(adapter(s), adapter.target(rows(2, 6, 65)))
    loss.backward()
    assert adapter.mix.grad is not None and adapter.mix.grad.abs().sum() > 0 and s.grad.abs().sum() > 0


def test_maps_of_different_token_counts_need_declared_grids():
    with pytest.raises(ShapeError, match="no declared patch grid.*student_grid"):
        build_adapter("attention", (3, 17, 17), (6, 65, 65))


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


def resampled_by_hand(adapter: AttentionAdapter, x: torch.Tensor) -> torch.Tensor:
    """The adapter's forward as first written: resize keys, then queries, as images; renormalise; mix heads."""
    s_prefix, (sh, sw), _, t_grid = adapter.tokens
    b, h = x.shape[:2]
    x = x[:, :, s_prefix:, s_prefix:].reshape(b * h, sh * sw, sh, sw)
    x = resize_map(x, t_grid).flatten(2).transpose(1, 2).reshape(b * h, -1, sh, sw)  # [bh, keys, q_h, q_w]
    x = resize_map(x, t_grid).flatten(2).transpose(1, 2).reshape(b, h, -1, x.shape[1])  # [b, h, queries, keys]
    x = x / x.sum(-1, keepdim=True).clamp_min(1e-8)
    return x if adapter.mix is None else torch.einsum("ts,bsqk->btqk", adapter.mix.softmax(dim=1), x)


@pytest.mark.parametrize("s_grid,t_grid,heads", [((4, 4), (8, 8), (3, 6)), ((8, 8), (4, 4), (2, 2)),
                                                 ((6, 6), (4, 4), (4, 2)), ((4, 6), (3, 8), (2, 3)),
                                                 ((4, 4), (4, 4), (2, 3))])
def test_resampling_as_one_matrix_equals_resizing_the_maps(s_grid, t_grid, heads):
    """The adapter resamples with precomputed matrices: same maps and gradients as resizing each map as an image
    (bilinear up, area pooling for integer shrinks, bilinear down otherwise), to float rounding."""
    n_s, n_t = 1 + s_grid[0] * s_grid[1], t_grid[0] * t_grid[1]
    adapter = build_adapter("attention", (heads[0], n_s, n_s), (heads[1], n_t, n_t), student_prefix=1,
                            student_grid=s_grid, teacher_prefix=0, teacher_grid=t_grid, mix_heads=True)
    assert isinstance(adapter, AttentionAdapter) and set(adapter.state_dict()) == {"mix"}  # the matrix is derived
    x = rows(2, heads[0], n_s).requires_grad_()
    grad = torch.randn(2, heads[1], n_t, n_t)
    out = adapter(x)
    (dx, dmix) = torch.autograd.grad(out, [x, adapter.mix], grad)
    ref = resampled_by_hand(adapter, x)
    (ref_dx, ref_dmix) = torch.autograd.grad(ref, [x, adapter.mix], grad)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dmix, ref_dmix, atol=1e-5, rtol=1e-5)
    assert sums_to_one(out)
