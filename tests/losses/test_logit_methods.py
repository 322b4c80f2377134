"""DKD, DIST and logit standardization against hand computations written from each paper's formula."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featdistill import LOGIT_LOSSES, Distiller, FeatdistillError, LogitKD, kd_loss
from featdistill.losses import DIST, DecoupledKD, SoftKD, StandardizedKD
from featdistill.recipe import Model, Recipe, apply_overrides


def logits(n: int, k: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two probability vectors."""
    return (p * (p / q).log()).sum()


# -- hand computations (float64, one row / column at a time) ------------------------------------------------------
def dkd_by_hand(s, t, y, temp, alpha, beta):
    s, t = s.double(), t.double()
    n, k = s.shape
    tckd = nckd = 0.0
    for i in range(n):
        c = int(y[i])
        p_s, p_t = torch.softmax(s[i] / temp, 0), torch.softmax(t[i] / temp, 0)
        tckd += kl(torch.stack([p_t[c], 1 - p_t[c]]), torch.stack([p_s[c], 1 - p_s[c]]))  # target vs the rest
        others = [j for j in range(k) if j != c]
        nckd += kl(torch.softmax(t[i, others] / temp, 0), torch.softmax(s[i, others] / temp, 0))
    return (alpha * tckd / n + beta * nckd / n) * temp**2


def pearson(u, v):
    """cov(u, v) / (std(u) std(v)), population moments."""
    du, dv = u - u.mean(), v - v.mean()
    return (du * dv).mean() / ((du**2).mean().sqrt() * (dv**2).mean().sqrt())


def dist_by_hand(s, t, temp, beta=1.0, gamma=1.0):
    p_s, p_t = torch.softmax(s.double() / temp, 1), torch.softmax(t.double() / temp, 1)
    n, k = p_s.shape
    inter = 1 - sum(pearson(p_s[i], p_t[i]) for i in range(n)) / n
    intra = 1 - sum(pearson(p_s[:, j], p_t[:, j]) for j in range(k)) / k
    return (beta * inter + gamma * intra) * temp**2


def ls_by_hand(s, t, temp):
    def z(row):
        k = row.numel()
        mean = row.sum() / k
        std = (((row - mean) ** 2).sum() / (k - 1)).sqrt()  # the authors' torch.std: Bessel-corrected
        return (row - mean) / (std + 1e-7)

    s, t = s.double(), t.double()
    rows = [kl(torch.softmax(z(t[i]) / temp, 0), torch.softmax(z(s[i]) / temp, 0)) for i in range(len(s))]
    return sum(rows) / len(rows) * temp**2


# -- against the hand computations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 7])
def test_dkd_matches_the_per_row_binary_and_non_target_kls(n):
    s, t, y = logits(n, 6, 0), logits(n, 6, 1), torch.randint(0, 6, (n,), generator=torch.Generator().manual_seed(2))
    for temp, alpha, beta in [(4.0, 1.0, 8.0), (2.0, 0.5, 3.0)]:
        got = DecoupledKD(temp, alpha=alpha, beta=beta)(s, t, y)
        torch.testing.assert_close(got.double(), dkd_by_hand(s, t, y, temp, alpha, beta), rtol=1e-5, atol=1e-6)
    assert DecoupledKD().alpha == 1.0 and DecoupledKD().beta == 8.0 and DecoupledKD().warmup_steps == 0


def test_dkd_decomposes_hinton_kd_as_the_paper_states():
    # KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD for one row (Zhao et al., Eq. 5)
    s, t, y = logits(1, 8, 3), logits(1, 8, 4), torch.tensor([5])
    temp = 3.0
    weight = 1 - torch.softmax(t[0] / temp, 0)[5].item()
    torch.testing.assert_close(DecoupledKD(temp, alpha=1.0, beta=weight)(s, t, y), SoftKD(temp)(s, t), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("n", [2, 9])
def test_dist_matches_pearson_from_means_and_stds(n):
    s, t = logits(n, 5, 5), logits(n, 5, 6)
    for temp, beta, gamma in [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)]:
        got = DIST(temp, beta=beta, gamma=gamma)(s, t)
        torch.testing.assert_close(got.double(), dist_by_hand(s, t, temp, beta, gamma), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [2, 6])
def test_logit_standardization_matches_per_row_z_scores(n):
    s, t = logits(n, 10, 7, scale=0.5), logits(n, 10, 8, scale=5.0)
    for temp in (2.0, 4.0):
        got = LOGIT_LOSSES.get("ls")(temp)(s, t)
        torch.testing.assert_close(got.double(), ls_by_hand(s, t, temp), rtol=1e-5, atol=1e-6)
    assert LOGIT_LOSSES.get("logit_standardized") is StandardizedKD is LOGIT_LOSSES.get("ls")


# -- zeros, gradients -------------------------------------------------------------------------------------------------
def test_identical_logits_give_zero():
    z, y = logits(4, 7, 9), torch.tensor([0, 3, 6, 2])
    assert DecoupledKD()(z, z.clone(), y).abs().item() < 1e-6
    assert DIST(4.0)(z, z.clone()).abs().item() < 1e-6
    assert StandardizedKD(2.0)(z, z.clone()).abs().item() < 1e-6


def test_standardization_ignores_the_students_scale_and_shift():
    t = logits(5, 10, 10)
    s = 0.3 * t + 7.0  # same ranking and relations, a fifth of the range
    assert StandardizedKD(2.0)(s, t).abs().item() < 1e-5
    assert StandardizedKD(2.0)(3.0 * t - 1.0, t).abs().item() < 1e-5
    assert SoftKD(2.0)(s, t).item() > 0.1  # plain KD insists on the teacher's range
    assert StandardizedKD(2.0)(-t, t).item() > 0.1  # a < 0 flips the ranking: not the same


@pytest.mark.parametrize("name", ["dkd", "dist", "ls"])
def test_gradients_reach_the_student_only(name):
    s = logits(3, 6, 11).requires_grad_()
    t = logits(3, 6, 12).requires_grad_()
    loss = LOGIT_LOSSES.get(name)(4.0)(s, t.detach(), torch.tensor([1, 0, 5]))
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


# -- DKD's warm-up and labels ----------------------------------------------------------------------------------------
def test_dkd_warm_up_grows_linearly_over_training_calls_and_stops_at_one():
    s, t, y = logits(4, 5, 13), logits(4, 5, 14), torch.tensor([0, 1, 2, 3])
    full = DecoupledKD()(s, t, y)
    loss = DecoupledKD(warmup_steps=4)
    assert loss.steps.dtype == torch.int64 and loss.steps.item() == 0
    got = [loss(s, t, y) for _ in range(6)]  # training mode: each call counts
    for k, value in enumerate(got, start=1):
        torch.testing.assert_close(value, min(k / 4, 1.0) * full)
    assert loss.steps.item() == 6
    loss.eval()  # evaluation uses the current weight and does not advance it
    for _ in range(3):
        torch.testing.assert_close(loss(s, t, y), full)
    assert loss.steps.item() == 6
    assert "min(step/4, 1)*(1*TCKD + 8*NCKD; T=4)*T^2" == loss.describe()


def test_dkd_warm_up_step_resumes_from_a_checkpoint():
    s, t, y = logits(3, 5, 15), logits(3, 5, 16), torch.tensor([4, 0, 2])
    full = DecoupledKD()(s, t, y)
    loss = DecoupledKD(warmup_steps=10)
    for _ in range(3):
        loss(s, t, y)
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    resumed = DecoupledKD(warmup_steps=10)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.steps.item() == 3
    torch.testing.assert_close(resumed(s, t, y), 0.4 * full)  # the 4th call, not the 1st
    with Distiller(nn.Linear(4, 5), nn.Linear(4, 5), kd=LogitKD(loss="dkd", loss_kwargs={"warmup_steps": 10})) as d:
        assert "logit_loss.steps" in d.state_dict()  # checkpointed with the student


def test_dkd_without_labels_says_it_needs_the_targets():
    s, t = logits(2, 5, 17), logits(2, 5, 18)
    loss = DecoupledKD(warmup_steps=5)
    with pytest.raises(FeatdistillError, match="DKD needs the targets"):
        loss(s, t, None)
    assert loss.steps.item() == 0  # a refused call does not count
    with pytest.raises(FeatdistillError, match="warmup_steps must be an integer >= 0"):
        DecoupledKD(warmup_steps=-1)


# -- through the config and the Distiller ----------------------------------------------------------------------------
def test_the_methods_are_chosen_by_name_with_their_parameters():
    for name in ("dkd", "dist", "ls", "logit_standardized"):
        assert LogitKD(loss=name).problems() == []
    recipe = Recipe(teacher=Model("resnet18"), student=Model("resnet18"))
    recipe = apply_overrides(recipe, ["kd.loss=dkd", "kd.loss_kwargs={'beta': 4.0}"])
    assert recipe.kd.loss == "dkd" and recipe.kd.problems() == []
    with Distiller(nn.Linear(4, 3), nn.Linear(4, 3), kd=recipe.kd) as d:
        assert isinstance(d.logit_loss, DecoupledKD) and d.logit_loss.beta == 4.0 and d.logit_loss.alpha == 1.0
        assert "0.5*(1*TCKD + 4*NCKD; T=4)*T^2" in d.plan()
    with pytest.raises(ValueError, match="got 'medium'; the other logit losses work too: 'dist', 'dkd'"):
        kd_loss(logits(2, 3, 0), logits(2, 3, 1), mode="medium")


def test_a_distiller_with_dist_reports_the_scaled_hand_value_and_prints_it():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5))
    student = nn.Sequential(nn.Linear(6, 5))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2))
    with Distiller(teacher, student, kd=LogitKD(temperature=2.0, alpha=0.25, loss="dist")) as d:
        out = d(x, y)
        plan = d.plan()
    with torch.no_grad():
        s, t = student(x), teacher(x)
    torch.testing.assert_close(out["kd"].double(), 0.75 * dist_by_hand(s, t, 2.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["task"], 0.25 * F.cross_entropy(s, y))
    assert "0.75*DIST(1*inter + 1*intra; T=2)*T^2" in plan
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert math.isfinite(out["loss"].item())
