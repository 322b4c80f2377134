"""Relational losses (sp, rkd, pkt, cc): values against loop-by-loop NumPy versions of the papers' formulas,
invariances, any widths, tiny batches, gradients, float32 under autocast, and a Distiller with no adapter."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from featdistill import Distiller, FeatdistillError, LogitKD, Pair, ShapeError
from featdistill.losses import (
    LOSSES,
    build_loss,
    correlation_congruence,
    probabilistic_kt,
    relational_kd,
    similarity_preserving,
)

NAMES = {"sp": "similarity_preserving", "rkd": "relational_kd", "pkt": "probabilistic_kt",
         "cc": "correlation_congruence"}


def feats(b=4, ds=8, dt=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, ds, generator=g), torch.randn(b, dt, generator=g)


def isometry(d_in=8, d_out=32, seed=1):
    """``[d_in, d_out]`` with orthonormal rows: ``x @ Q`` keeps every inner product, in a wider space."""
    q, _ = torch.linalg.qr(torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed)))
    return q.T


# -- independent references: float64 NumPy, explicit loops over samples ------------------------------------------
def rows(x):
    return [np.asarray(r, dtype=np.float64) for r in x.reshape(len(x), -1).tolist()]


def ref_sp(s, t):
    def gram(x):
        f = rows(x)
        g = [[float(f[i] @ f[j]) for j in range(len(f))] for i in range(len(f))]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    gs, gt, b = gram(s), gram(t), len(s)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def ref_rkd_distance(s, t):
    def dist(x):
        f, b = rows(x), len(x)
        d = [[0.0 if i == j else math.sqrt(float(((f[i] - f[j]) ** 2).sum())) for j in range(b)] for i in range(b)]
        mu = sum(map(sum, d)) / (b * (b - 1))  # mean over the b*(b-1) distinct pairs
        return [[v / mu for v in row] for row in d]

    ds, dt, b = dist(s), dist(t), len(s)
    return sum(huber(ds[i][j], dt[i][j]) for i in range(b) for j in range(b)) / b**2


def ref_rkd_angle(s, t):
    """Cosine of the angle at x_i between x_j and x_k for every triplet; the authors' code also averages the
    degenerate ones (j == i or k == i: a zero vector, cosine 0 on both sides)."""
    def cos(f, i, j, k):
        u, v = f[j] - f[i], f[k] - f[i]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))

    fs, ft, b = rows(s), rows(t), len(s)
    total = sum(huber(cos(fs, i, j, k), cos(ft, i, j, k)) for i in range(b) for j in range(b) for k in range(b))
    return total / b**3


def ref_pkt(s, t, eps=1e-7):
    def probs(x):
        f = [r / (np.linalg.norm(r) + eps) for r in rows(x)]
        k = [[(float(a @ c) + 1) / 2 for c in f] for a in f]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt, b = probs(s), probs(t), len(s)
    kl_rows = [sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for j in range(b)) for i in range(b)]
    return sum(kl_rows) / b / b  # rows' KL summed, averaged over rows, divided by B again (authors' mean)


def ref_cc(s, t, gamma=0.4, order=2, exact=False):
    def kernel(x):
        f = [r / np.linalg.norm(r) for r in rows(x)]
        if exact:  # the Gaussian RBF the expansion approximates
            return [[math.exp(-gamma * float(((a - c) ** 2).sum())) for c in f] for a in f]
        return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * float(a @ c) ** p
                     for p in range(order + 1)) for c in f] for a in f]

    ks, kt, b = kernel(s), kernel(t), len(s)
    return sum((ks[i][j] - kt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


# -- values ----------------------------------------------------------------------------------------------------
def test_sp_matches_loops_on_maps_of_different_widths():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 5, 2, 2, generator=g)
    assert math.isclose(similarity_preserving(s, t).item(), ref_sp(s, t), rel_tol=1e-4)


def test_rkd_terms_match_explicit_triplet_loops():
    s, t = feats(b=4)
    d, a = ref_rkd_distance(s, t), ref_rkd_angle(s, t)
    assert d > 0 and a > 0
    assert math.isclose(relational_kd(s, t, distance_weight=1.0, angle_weight=0.0).item(), d, rel_tol=1e-4)
    assert math.isclose(relational_kd(s, t, distance_weight=0.0, angle_weight=1.0).item(), a, rel_tol=1e-4)
    assert math.isclose(relational_kd(s, t).item(), 25 * d + 50 * a, rel_tol=1e-4)  # the default weights
    s3, t3 = feats(b=3, seed=5)
    assert math.isclose(relational_kd(s3, t3).item(), 25 * ref_rkd_distance(s3, t3) + 50 * ref_rkd_angle(s3, t3),
                        rel_tol=1e-4)


def test_pkt_matches_loops_and_its_stated_reduction():
    s, t = feats(b=4)
    assert math.isclose(probabilistic_kt(s, t).item(), ref_pkt(s, t), rel_tol=1e-4)


def test_cc_matches_loops_and_approaches_the_rbf_kernel():
    s, t = feats(b=4)
    assert math.isclose(correlation_congruence(s, t).item(), ref_cc(s, t), rel_tol=1e-4)
    assert math.isclose(correlation_congruence(s, t, gamma=1.0, order=3).item(), ref_cc(s, t, 1.0, 3),
                        rel_tol=1e-4)
    # a high order converges to the exact Gaussian RBF of the normalised embeddings
    assert math.isclose(correlation_congruence(s, t, order=12).item(), ref_cc(s, t, exact=True), rel_tol=1e-4)
    with pytest.raises(ValueError, match="order"):
        correlation_congruence(s, t, order=-1)


# -- identical relations give zero -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NAMES))
def test_same_relations_at_another_width_and_scale_give_zero(name):
    s = feats(b=5)[0]
    q = isometry()
    loss = LOSSES.get(name)
    assert loss(s, s).abs().item() < 1e-6
    assert loss(s, 3.0 * s @ q).abs().item() < 1e-5  # a global scale and an isometry into width 32
    if name == "rkd":  # distances and angles also ignore translation
        assert loss(s, 3.0 * s @ q + 7.0).abs().item() < 1e-4


def test_which_losses_ignore_per_sample_scales():
    s = feats(b=5)[0]
    t = s * torch.tensor([[0.5], [1.0], [2.0], [4.0], [8.0]])
    assert probabilistic_kt(s, t).abs().item() < 1e-6  # cosine kernels: per-sample scale invariant
    assert correlation_congruence(s, t).abs().item() < 1e-6
    assert similarity_preserving(s, t).item() > 1e-3  # the raw Gram matrix sees the norms
    assert relational_kd(s, t).item() > 1e-3


# -- shapes, tiny batches, gradients, precision ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(NAMES))
def test_widths_and_trailing_shapes_may_differ(name):
    loss = LOSSES.get(name)
    s, t = feats(b=4, ds=8, dt=32)
    out = loss(s, t)
    assert out.dim() == 0 and out.dtype == torch.float32 and torch.isfinite(out) and out.item() > 0
    maps = loss(torch.randn(4, 3, 5, 5), torch.randn(4, 16, 2, 2))
    tokens = loss(torch.randn(4, 7, 12), torch.randn(4, 9, 24))
    assert torch.isfinite(maps) and torch.isfinite(tokens)
    with pytest.raises(ShapeError, match="batch sizes differ"):
        loss(torch.randn(4, 8), torch.randn(3, 8))


@pytest.mark.parametrize("name", list(NAMES))
@pytest.mark.parametrize("batch", [1, 2])
def test_tiny_batches_are_finite_and_backpropagate(name, batch):
    s, t = feats(b=batch)
    s.requires_grad_()
    out = LOSSES.get(name)(s, t)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()
    if batch == 1:  # one sample has no relations
        assert out.item() == 0.0


@pytest.mark.parametrize("name", list(NAMES))
def test_gradients_reach_the_student_only(name):
    s, t = feats(b=4)
    s.requires_grad_()
    t.requires_grad_()
    LOSSES.get(name)(s, t).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name", list(NAMES))
def test_float32_math_under_autocast_and_half_inputs(name):
    loss = LOSSES.get(name)
    s, t = feats(b=4)
    ref = loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(s, t)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-5)
    assert loss(s.bfloat16(), t.half()).dtype == torch.float32


@pytest.mark.parametrize("name", list(NAMES))
def test_registered_as_relational_with_long_aliases_and_kwargs(name):
    assert LOSSES.get(name) is LOSSES.get(NAMES[name])
    built = build_loss(name, (8,), (32,))
    assert built.relational and not built.channel_free and not built.needs_index and not built.has_parameters
    s, t = feats()
    assert torch.equal(built(s, t), LOSSES.get(name)(s, t))
    rkd = build_loss("rkd", (8,), (32,), {"distance_weight": 1.0, "angle_weight": 0.0})
    assert math.isclose(rkd(s, t).item(), ref_rkd_distance(s, t), rel_tol=1e-4)


# -- end to end ------------------------------------------------------------------------------------------------
def tiny_cnn(width, embed):
    """conv -> pool -> '4': the pre-logit embedding [B, embed] -> logits."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, embed), nn.ReLU(), nn.Linear(embed, 10))


@pytest.mark.parametrize("name", list(NAMES))
def test_distiller_pairs_embeddings_of_different_widths_without_an_adapter(name):
    torch.manual_seed(0)
    teacher, student = tiny_cnn(16, 32), tiny_cnn(8, 12)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    pairs = [Pair("4", "4", loss=name), Pair("1", "1", loss=name, name="maps")]  # [12] vs [32]; maps 8 vs 16 ch
    with Distiller(teacher, student, pairs, kd=LogitKD(temperature=4.0), sample_input=x[:2]) as d:
        assert [p.adapter_name for p in d.planned] == ["Identity", "Identity"]
        assert sum(p.numel() for p in d.adapters.parameters()) == 0
        assert d.planned[0].student_shape == (12,) and d.planned[0].teacher_shape == (32,)
        assert "Identity (0 params)" in d.plan()
        out = d(x, y)
        assert torch.isfinite(out["loss"]) and out["feat/4~4"].item() > 0 and out["feat/maps"].item() > 0
        # the relational term alone reaches the student's embedding and conv layers
        grads = torch.autograd.grad(out["feat/4~4"], [student[4].weight, student[0].weight], retain_graph=True)
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        out["loss"].backward()
        assert student[4].weight.grad is not None and student[4].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in teacher.parameters())


def test_distiller_reports_bad_loss_kwargs_at_build():
    teacher, student = tiny_cnn(16, 32), tiny_cnn(8, 12)
    with pytest.raises(FeatdistillError, match="loss_kwargs"):
        Distiller(teacher, student, [Pair("4", "4", loss="rkd", loss_kwargs={"angle": 2.0})],
                  sample_input=torch.randn(2, 3, 8, 8))
