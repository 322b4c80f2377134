"""Feature methods NST (neuron selectivity transfer) and VID (variational information distillation): values
against loop-by-loop float64 versions of the papers' formulas, hand-computed cases, invariances, shapes,
gradients, float32 under autocast, and one Distiller step on tiny CNNs."""

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from featdistill import Distiller, LogitKD, Pair, ShapeError
from featdistill.losses import LOSSES, VID, build_loss, neuron_selectivity_transfer

nst = neuron_selectivity_transfer


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- independent references: float64 NumPy, explicit loops -----------------------------------------------------
def channel_vectors(x):
    """One sample's ``[C, H, W]`` map (or ``[N, C]`` tokens) as a list of L2-normalised per-channel vectors."""
    a = np.asarray(x.tolist(), dtype=np.float64)
    rows = a.reshape(a.shape[0], -1) if a.ndim == 3 else a.T
    return [r / max(np.linalg.norm(r), 1e-12) for r in rows]


def ref_nst(s, t, degree=2, c=0.0):
    def k(x, y):
        return (float(x @ y) + c) ** degree

    total = 0.0
    for b in range(len(s)):
        fs, ft = channel_vectors(s[b]), channel_vectors(t[b])
        mmd = (sum(k(x, y) for x in fs for y in fs) / len(fs) ** 2
               + sum(k(x, y) for x in ft for y in ft) / len(ft) ** 2
               - 2 * sum(k(x, y) for x in fs for y in ft) / (len(fs) * len(ft)))
        total += mmd
    return total / len(s)


def ref_nst_gram(s, t):
    """degree 2, c 0: the squared Frobenius distance of the channel-averaged position Gram matrices."""
    total = 0.0
    for b in range(len(s)):
        fs, ft = np.stack(channel_vectors(s[b])), np.stack(channel_vectors(t[b]))
        total += float(((fs.T @ fs / len(fs) - ft.T @ ft / len(ft)) ** 2).sum())
    return total / len(s)


def ref_vid(mu, t, alpha, eps=1e-5, channels_first=True):
    """Mean over every element of ``0.5 * (log v_c + (t - mu)^2 / v_c)``, ``v_c = log(1 + e^alpha_c) + eps``."""
    m, y = np.asarray(mu.tolist(), dtype=np.float64), np.asarray(t.tolist(), dtype=np.float64)
    var = [math.log1p(math.exp(a)) + eps for a in alpha.tolist()]
    total, count = 0.0, 0
    for idx in np.ndindex(*m.shape):
        v = var[idx[1] if channels_first else idx[-1]]
        total += 0.5 * (math.log(v) + (y[idx] - m[idx]) ** 2 / v)
        count += 1
    return total / count


# -- NST: values ---------------------------------------------------------------------------------------------------
def test_nst_hand_computed_one_channel_two_positions():
    # s = (3, 4) -> (0.6, 0.8), t = (1, 0): k_ss = k_tt = 1, k_st = 0.6^2 = 0.36 -> 1 + 1 - 2 * 0.36
    s, t = torch.tensor([[[[3.0, 4.0]]]]), torch.tensor([[[[1.0, 0.0]]]])
    assert nst(s, t).item() == pytest.approx(1.28, abs=1e-6)
    # widths 2 vs 1: s rows (1, 0), (0, 1) -> mean k_ss = (1 + 0 + 0 + 1) / 4 = 0.5; t row (1, 1) / sqrt 2 -> k_tt
    # = 1; k_st = 0.5 for both student rows -> 0.5 + 1 - 2 * 0.5
    s2, t2 = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]), torch.tensor([[[[1.0, 1.0]]]])
    assert nst(s2, t2).item() == pytest.approx(0.5, abs=1e-6)


def test_nst_matches_loops_for_different_widths_and_batch_of_two():
    s, t = randn(2, 3, 4, 4, seed=1), randn(2, 7, 4, 4, seed=2)
    ref = ref_nst(s, t)
    assert ref > 0
    assert math.isclose(nst(s, t).item(), ref, rel_tol=1e-4)
    assert math.isclose(nst(s, t).item(), ref_nst_gram(s, t), rel_tol=1e-4)
    assert math.isclose(LOSSES.get("nst")(s, t).item(), ref, rel_tol=1e-4)


def test_nst_kernel_arguments():
    s, t = randn(2, 3, 2, 3, seed=3), randn(2, 5, 2, 3, seed=4)
    for degree, c in [(1, 0.0), (2, 1.0), (3, 0.5)]:
        assert math.isclose(nst(s, t, degree=degree, c=c).item(), ref_nst(s, t, degree, c), rel_tol=1e-4,
                            abs_tol=1e-7)


def test_nst_tokens_are_channels_over_tokens():
    s, t = randn(2, 6, 4, seed=5), randn(2, 6, 9, seed=6)  # [B, N, C]
    assert math.isclose(nst(s, t).item(), ref_nst(s, t), rel_tol=1e-4)
    maps = nst(s.transpose(1, 2).reshape(2, 4, 2, 3), t.transpose(1, 2).reshape(2, 9, 2, 3))
    assert torch.allclose(nst(s, t), maps, rtol=1e-5)


# -- NST: the same channel distribution gives zero -------------------------------------------------------------
def test_nst_is_zero_for_the_same_channel_distribution():
    s = randn(2, 4, 3, 3, seed=7)
    assert nst(s, s).abs().item() < 1e-6
    assert nst(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # channels permuted, scaled by positive factors, or each repeated: the same normalised rows, a wider teacher
    scaled = s[:, [2, 0, 3, 1]] * torch.tensor([0.5, 2.0, 3.0, 7.0]).view(1, 4, 1, 1)
    assert nst(s, scaled).abs().item() < 1e-6
    assert nst(s, torch.cat([s, s], dim=1)).abs().item() < 1e-6
    assert nst(s, randn(2, 4, 3, 3, seed=8)).item() > 1e-3


def test_nst_is_nonnegative():
    for seed in range(5):
        assert nst(randn(2, 3, 2, 2, seed=seed), randn(2, 5, 2, 2, seed=seed + 10)).item() >= 0


# -- NST: shapes, gradients, precision -------------------------------------------------------------------------
def test_nst_rejects_mismatched_positions_and_vectors():
    with pytest.raises(ShapeError, match="same batch and positions"):
        nst(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))
    with pytest.raises(ShapeError, match="same batch and positions"):
        nst(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    with pytest.raises(ShapeError, match=r"maps \[B, C, H, W\] or tokens"):
        nst(torch.randn(2, 8), torch.randn(2, 16))
    with pytest.raises(ShapeError, match=r"maps \[B, C, H, W\] or tokens"):
        nst(torch.randn(2, 3, 4, 4), torch.randn(2, 12, 4))


def test_nst_gradients_reach_the_student_only_even_with_a_dead_channel():
    s, t = randn(2, 3, 4, 4, seed=9), randn(2, 5, 4, 4, seed=10)
    s[:, 1] = 0.0  # a ReLU channel that never fires: normalised to zeros, finite gradients
    s.requires_grad_()
    t.requires_grad_()
    out = nst(s, t)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_nst_float32_under_autocast_and_half_inputs():
    s, t = randn(2, 3, 4, 4, seed=11), randn(2, 5, 4, 4, seed=12)
    ref = nst(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nst(s, t)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-5)
    assert nst(s.bfloat16(), t.half()).dtype == torch.float32


def test_nst_is_registered_channel_free_without_parameters():
    built = build_loss("nst", (3, 4, 4), (5, 4, 4), {"degree": 2, "c": 0.0})
    assert built.channel_free and not built.relational and not built.needs_index and not built.has_parameters
    assert built.label == "neuron_selectivity_transfer"
    s, t = randn(2, 3, 4, 4), randn(2, 5, 4, 4, seed=1)
    assert torch.equal(built(s, t), nst(s, t))


# -- VID: parameter, init, values ------------------------------------------------------------------------------
@pytest.mark.parametrize("teacher_shape, channels", [((6, 4, 4), 6), ((5, 7), 7), ((9,), 9)])
def test_vid_sizes_its_variances_from_the_teacher_channels(teacher_shape, channels):
    loss = build_loss("vid", (3, 8, 8), teacher_shape)
    assert isinstance(loss, VID) and loss.has_parameters and not loss.channel_free and not loss.relational
    assert loss.alpha.shape == (channels,) and loss.label == "vid"
    assert [n for n, _ in loss.named_parameters()] == ["alpha"]


def test_vid_initial_variance_is_five():
    loss = VID(4)
    var = torch.log1p(torch.exp(loss.alpha.double())) + 1e-5  # softplus by hand
    assert torch.allclose(var, torch.full((4,), 5.0, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(loss.variance, torch.full((4,), 5.0), atol=1e-5)
    assert torch.allclose(VID(2, init_variance=1.0).variance, torch.ones(2), atol=1e-6)
    big = VID(2, init_variance=1000.0)  # no overflow in the inverse softplus
    assert torch.isfinite(big.alpha).all() and torch.allclose(big.variance, torch.full((2,), 1000.0))
    with pytest.raises(ValueError, match="init_variance"):
        VID(2, init_variance=1e-6)


def test_vid_with_the_exact_mean_is_half_the_mean_log_variance_and_trains_alpha():
    loss = VID(3)
    with torch.no_grad():
        loss.alpha.copy_(torch.tensor([-1.0, 0.5, 2.0]))
    t = randn(2, 3, 2, 2, seed=13)
    out = loss(t.clone(), t)
    var = torch.log1p(torch.exp(loss.alpha.detach())) + 1e-5
    assert out.item() == pytest.approx((0.5 * var.log()).mean().item(), rel=1e-6)
    assert VID(3)(t, t).item() == pytest.approx(0.5 * math.log(5.0), rel=1e-5)
    out.backward()
    # d/d alpha_c of mean_c 0.5 log(softplus(alpha_c) + eps) = sigmoid(alpha_c) / (2 C var_c)
    expected = torch.sigmoid(loss.alpha.detach()) / (2 * 3 * var)
    assert loss.alpha.grad is not None and torch.allclose(loss.alpha.grad, expected, rtol=1e-5)


def test_vid_matches_loops_on_maps_tokens_and_vectors():
    alpha = torch.tensor([-2.0, -0.3, 0.0, 1.0, 3.0])
    cases = [(randn(2, 5, 3, 2, seed=14), randn(2, 5, 3, 2, seed=15), True),  # maps: channels on dim 1
             (randn(2, 4, 5, seed=16), randn(2, 4, 5, seed=17), False),  # tokens [B, N, C]
             (randn(2, 5, seed=18), randn(2, 5, seed=19), False)]  # vectors [B, C]
    for mu, t, first in cases:
        loss = VID(5)
        with torch.no_grad():
            loss.alpha.copy_(alpha)
        assert math.isclose(loss(mu, t).item(), ref_vid(mu, t, alpha, channels_first=first), rel_tol=1e-5)


def test_vid_variance_gradient_vanishes_at_the_per_channel_residual_variance():
    mu, t = randn(2, 3, 4, 4, seed=20), randn(2, 3, 4, 4, seed=21)
    target_var = (t - mu).pow(2).mean(dim=(0, 2, 3)).double()  # the maximum-likelihood variance per channel
    loss = VID(3, eps=1e-5)
    with torch.no_grad():  # alpha = softplus^-1(var - eps)
        loss.alpha.copy_(torch.log(torch.expm1(target_var - 1e-5)).float())
    loss(mu, t).backward()
    assert loss.alpha.grad.abs().max().item() < 1e-5


def test_vid_gradients_reach_the_mean_and_alpha_not_the_teacher():
    loss = VID(4)
    mu, t = randn(2, 4, 3, 3, seed=22).requires_grad_(), randn(2, 4, 3, 3, seed=23).requires_grad_()
    loss(mu, t).backward()
    assert mu.grad.abs().sum() > 0 and loss.alpha.grad.abs().sum() > 0 and t.grad is None
    # the mean's gradient is (mu - t) / (var * numel)
    expected = (mu - t).detach() / (loss.variance.detach().view(1, 4, 1, 1) * mu.numel())
    assert torch.allclose(mu.grad, expected, rtol=1e-5)


def test_vid_shape_errors_and_float32():
    loss = VID(4)
    with pytest.raises(ShapeError, match="same shape"):
        loss(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 2))
    with pytest.raises(ShapeError, match="built for 4 teacher channels"):
        loss(torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3))
    with pytest.raises(ShapeError, match="channel dim"):
        build_loss("vid", (3,), ())
    mu, t = randn(2, 4, 3, 3, seed=24), randn(2, 4, 3, 3, seed=25)
    ref = loss(mu, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(mu, t)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-5)
    assert loss(mu.bfloat16(), t.half()).dtype == torch.float32


# -- end to end ------------------------------------------------------------------------------------------------
def tiny_cnn(width, embed, pool_first=False):
    """Named layers: 'stem' [B, width, 8, 8] (4x4 with pool_first), 'body' [B, 2*width, 4, 4], 'embed' [B, embed]."""
    layers = [("stem", nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()))]
    if pool_first:
        layers.append(("pool", nn.MaxPool2d(2)))
    layers += [("body", nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, stride=1 if pool_first else 2),
                                      nn.ReLU())),
               ("gap", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()),
               ("embed", nn.Sequential(nn.Linear(2 * width, embed), nn.ReLU())), ("head", nn.Linear(embed, 10))]
    return nn.Sequential(OrderedDict(layers))


def test_distiller_step_with_nst_and_vid():
    torch.manual_seed(0)
    teacher, student = tiny_cnn(16, 32), tiny_cnn(4, 12, pool_first=True)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    pairs = [Pair("stem", "stem", loss="nst", name="nst_stem"),  # [4, 4, 4] vs [16, 8, 8]
             Pair("body", "body", loss="nst", name="nst_body"),  # [8, 4, 4] vs [32, 4, 4]
             Pair("body", "body", loss="vid", name="vid_body"),  # mean network conv1x1 -> [32, 4, 4]
             Pair("embed", "embed", loss="vid", name="vid_embed")]  # linear [12] -> [32]
    with Distiller(teacher, student, pairs, kd=LogitKD(temperature=4.0), sample_input=x[:2]) as d:
        names = [p.adapter_name for p in d.planned]
        assert names[0] == "Resize" and names[2] == "Conv1x1" and names[3] == "LastDim"
        assert d.planned[2].compared_shape == (32, 4, 4)
        vids = [m for m in d.modules() if isinstance(m, VID)]
        assert [len(v.alpha) for v in vids] == [32, 32]
        params = {id(p) for p in d.parameters()}
        assert all(id(v.alpha) in params for v in vids)
        alpha_keys = [k for k in d.state_dict() if k.endswith("alpha")]
        assert len(alpha_keys) == 2
        assert "nst" in d.plan() and "vid" in d.plan()
        before = [v.alpha.detach().clone() for v in vids]
        opt = torch.optim.SGD(d.parameters(), lr=0.1)
        out = d(x, y)
        for key in ("feat/nst_stem", "feat/nst_body", "feat/vid_body", "feat/vid_embed"):
            assert torch.isfinite(out[key])
        assert out["feat/nst_stem"].item() > 0 and out["feat/nst_body"].item() > 0
        out["loss"].backward()
        assert student.stem[0].weight.grad.abs().sum() > 0
        assert all(v.alpha.grad is not None and v.alpha.grad.abs().sum() > 0 for v in vids)
        assert all(p.grad is None for p in teacher.parameters())
        opt.step()
        assert all(not torch.equal(v.alpha, b) for v, b in zip(vids, before))
        state = d.state_dict()
        assert torch.equal(state[alpha_keys[0]], vids[0].alpha.detach())
