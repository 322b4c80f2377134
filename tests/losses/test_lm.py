"""Token-level LM distillation losses against plain float64 formulas written here from each paper's definition:
values, closed-form gradients, masking, chunking, limits, padding and bf16."""

import pytest
import torch
import torch.nn.functional as F

from featdistill import FeatdistillError, LogitKD
from featdistill.distill.combiner import LossCombiner
from featdistill.losses import LOGIT_LOSSES, SoftKD, naive_token_kd_loss, token_kd_loss

KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl")
CLASSES = {"forward_kl": "ForwardKL", "reverse_kl": "ReverseKL", "jsd": "GeneralizedJSD", "gkd": "GeneralizedJSD",
           "skew_kl": "SkewKL", "skew_rkl": "SkewReverseKL"}


def logits(*shape, seed=0, scale=3.0, dtype=torch.float64):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def batch(b=3, t=5, v=7, seed=0):
    """Student and teacher logits ``[B, T, V]`` (float64) and a keep mask ``[B, T]`` with some of each row kept."""
    mask = torch.rand(b, t, generator=torch.Generator().manual_seed(seed + 7)) > 0.35
    mask[:, 0] = True
    return logits(b, t, v, seed=seed), logits(b, t, v, seed=seed + 1), mask


# -- plain formulas: probabilities, not log space; one kept position at a time -------------------------------------
def kl(a, b):
    return (a * (a.log() - b.log())).sum()


def divergence(kind, p, q, beta, skew):
    """``p`` student, ``q`` teacher probabilities ``[V]``."""
    if kind == "forward_kl":
        return kl(q, p)
    if kind == "reverse_kl":
        return kl(p, q)
    if kind == "jsd":  # GKD eq. 1 with P = teacher, Q = student, as TRL
        m = beta * q + (1 - beta) * p
        return beta * kl(q, m) + (1 - beta) * kl(p, m)
    if kind == "skew_kl":
        return kl(q, skew * q + (1 - skew) * p)
    return kl(p, skew * p + (1 - skew) * q)


def plain(kind, s, t, mask, temp=1.0, beta=0.5, skew=0.1):
    """``T^2 * mean over kept (b, i) of D(softmax(t[b, i] / T), softmax(s[b, i] / T))``."""
    kept = [(b, i) for b in range(s.shape[0]) for i in range(s.shape[1]) if mask[b, i]]
    total = sum(divergence(kind, torch.softmax(s[b, i] / temp, -1), torch.softmax(t[b, i] / temp, -1), beta, skew)
                for b, i in kept)
    return total * temp**2 / len(kept)


def grad_of(fn, s):
    s = s.detach().clone().requires_grad_(True)
    value = fn(s)
    (g,) = torch.autograd.grad(value, s)
    return value.detach(), g


# -- values and gradients ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_value_and_gradient_equal_the_plain_formula(kind, temp):
    s, t, mask = batch()
    opts = dict(temperature=temp, beta=0.3, skew=0.2)
    ours, g_ours = grad_of(lambda x: token_kd_loss(x, t, mask, loss=kind, chunk_tokens=2, **opts), s)
    ref, g_ref = grad_of(lambda x: plain(kind, x, t, mask, temp, 0.3, 0.2), s)
    assert ours.dtype == torch.float64 and ours > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-12)
    assert g_ours[~mask].abs().max() == 0  # masked positions get no gradient


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_finite_differences(kind):
    # (gradcheck needs backward twice, which the loss refuses: it hands its one gradient over in place)
    s, t, mask = batch(2, 3, 5, seed=3)
    direction, eps = logits(2, 3, 5, seed=4, scale=1.0), 1e-6
    _, g = grad_of(lambda x: token_kd_loss(x, t, mask, loss=kind, temperature=1.5, chunk_tokens=2), s)
    up, down = (token_kd_loss(s + sign * eps * direction, t, mask, loss=kind, temperature=1.5) for sign in (1, -1))
    torch.testing.assert_close((up - down) / (2 * eps), (g * direction).sum(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_change_nothing(kind):
    s, t, mask = batch(seed=5)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = logits(int((~mask).sum()), 7, seed=9, scale=50.0)
    t2[~mask] = float("nan")  # never read
    a, ga = grad_of(lambda x: token_kd_loss(x, t, mask, loss=kind, chunk_tokens=3), s)
    b, gb = grad_of(lambda x: token_kd_loss(x, t2, mask, loss=kind, chunk_tokens=3), s2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_unchunked_for_any_chunk_size(kind):
    s, t, mask = batch(3, 7, 6, seed=11)
    labels = torch.where(mask, 1, -100)
    ref, g_ref = grad_of(lambda x: naive_token_kd_loss(x, t, labels=labels, loss=kind, temperature=2.0), s)
    for chunk in (1, 2, 5, 1000, None):  # 5 divides neither the 21 positions nor the kept count
        ours, g = grad_of(lambda x, c=chunk: token_kd_loss(x, t, labels=labels, loss=kind, temperature=2.0,
                                                           chunk_tokens=c), s)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-14)


def test_no_mask_counts_every_position_and_labels_combine_with_the_mask():
    s, t, mask = batch(seed=2)
    full = torch.ones_like(mask)
    torch.testing.assert_close(token_kd_loss(s, t), plain("forward_kl", s, t, full))
    labels = torch.arange(s.shape[1]).expand(s.shape[0], -1).clone()
    labels[:, 1] = -100
    both = mask & (labels != -100)
    torch.testing.assert_close(token_kd_loss(s, t, mask, labels, loss="reverse_kl"), plain("reverse_kl", s, t, both))


# -- limits and identities -----------------------------------------------------------------------------------------
def test_jsd_beta_limits_follow_trl():
    s, t, mask = batch(seed=4)
    forward, reverse = (token_kd_loss(s, t, mask, loss=k) for k in ("forward_kl", "reverse_kl"))
    assert token_kd_loss(s, t, mask, loss="jsd", beta=0.0) == forward
    assert token_kd_loss(s, t, mask, loss="jsd", beta=1.0) == reverse
    assert forward != reverse
    eps = 1e-6  # the divergence itself vanishes at the ends; scaled by beta it tends to the KLs
    torch.testing.assert_close(token_kd_loss(s, t, mask, loss="jsd", beta=eps) / eps, forward, rtol=1e-4, atol=0)
    torch.testing.assert_close(token_kd_loss(s, t, mask, loss="jsd", beta=1 - eps) / eps, reverse, rtol=1e-4, atol=0)


def test_skew_zero_is_the_plain_kl_and_skew_one_is_zero():
    s, t, mask = batch(seed=6)
    for skewed, base in (("skew_kl", "forward_kl"), ("skew_rkl", "reverse_kl")):
        a, ga = grad_of(lambda x, k=skewed: token_kd_loss(x, t, mask, loss=k, skew=0.0), s)
        b, gb = grad_of(lambda x, k=base: token_kd_loss(x, t, mask, loss=k), s)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-15)
        assert token_kd_loss(s, t, mask, loss=skewed, skew=1.0).abs() < 1e-12
        assert 0 < token_kd_loss(s, t, mask, loss=skewed, skew=0.1) < b  # skewing bounds the divergence


@pytest.mark.parametrize("kind", KINDS)
def test_identical_logits_give_zero_loss_and_gradient(kind):
    s, _, mask = batch(seed=8)
    value, g = grad_of(lambda x: token_kd_loss(x, s, mask, loss=kind, temperature=3.0), s)
    assert value.abs() < 1e-12 and g.abs().max() < 1e-12


def test_padded_vocabulary_columns_at_minus_infinity_count_zero():
    s, t, mask = batch(seed=10)
    pad = torch.full((*s.shape[:2], 2), float("-inf"), dtype=s.dtype)
    for kind in KINDS:
        ref = token_kd_loss(s, t, mask, loss=kind)
        s_pad = torch.cat([s, pad], -1).requires_grad_(True)
        ours = token_kd_loss(s_pad, torch.cat([t, pad], -1), mask, loss=kind)
        (g,) = torch.autograd.grad(ours, s_pad)
        torch.testing.assert_close(ours, ref)
        assert torch.isfinite(g).all() and g[..., -2:].abs().max() == 0


def test_a_padded_batch_equals_its_unpadded_sequences():
    lengths, v = (4, 6, 2), 9
    seqs_s = [logits(n, v, seed=20 + i) for i, n in enumerate(lengths)]
    seqs_t = [logits(n, v, seed=30 + i) for i, n in enumerate(lengths)]
    s = logits(3, 6, v, seed=40, scale=30.0)  # padding: anything
    t = logits(3, 6, v, seed=41, scale=30.0)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for i, n in enumerate(lengths):
        s[i, :n], t[i, :n], mask[i, :n] = seqs_s[i], seqs_t[i], True
    for kind in KINDS:
        padded = token_kd_loss(s, t, mask, loss=kind, chunk_tokens=4)
        flat = token_kd_loss(torch.cat(seqs_s), torch.cat(seqs_t), loss=kind)  # [12, V], nothing masked
        each = [token_kd_loss(a[None], b[None], loss=kind) for a, b in zip(seqs_s, seqs_t)]
        torch.testing.assert_close(padded, flat, rtol=1e-12, atol=0)
        # per-token, not per-sequence: the sequences weigh by their length
        torch.testing.assert_close(padded, sum(n * e for n, e in zip(lengths, each)) / sum(lengths))


# -- dtypes, autograd plumbing, errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_student_gets_a_bf16_gradient_close_to_fp32(kind):
    s, t, mask = batch(4, 8, 50, seed=12)
    s16 = s.to(torch.bfloat16).requires_grad_(True)
    value = token_kd_loss(s16, t.to(torch.bfloat16), mask, loss=kind, temperature=2.0, chunk_tokens=5)
    value.backward()
    assert value.dtype == torch.float32 and s16.grad.dtype == torch.bfloat16
    ref, g_ref = grad_of(lambda x: plain(kind, x, t.to(torch.bfloat16).double(), mask, 2.0), s16.detach().double())
    torch.testing.assert_close(value.double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s16.grad.double(), g_ref, rtol=2e-2, atol=1e-4)


def test_upstream_gradient_scales_and_teacher_gets_none_and_second_backward_refuses():
    s, t, mask = batch(seed=13)
    s1, s3 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    token_kd_loss(s1, t, mask, loss="jsd").backward()
    loss = 3 * token_kd_loss(s3, t, mask, loss="jsd")
    loss.backward(retain_graph=True)
    torch.testing.assert_close(s3.grad, 3 * s1.grad)
    assert t.grad is None
    with pytest.raises(RuntimeError, match="backward twice"):
        loss.backward()


def test_no_kept_position_gives_zero():
    s, t, _ = batch(seed=14)
    s.requires_grad_(True)
    value = token_kd_loss(s, t, torch.zeros(s.shape[:2], dtype=torch.bool))
    value.backward()
    assert value == 0 and s.grad.abs().max() == 0


@pytest.mark.parametrize("kwargs", [dict(loss="kl"), dict(beta=1.5, loss="jsd"), dict(skew=-0.1),
                                    dict(chunk_tokens=0), dict(temperature=0.0)])
def test_bad_settings_are_errors_that_say_what_fits(kwargs):
    s, t, mask = batch()
    with pytest.raises(FeatdistillError):
        token_kd_loss(s, t, mask, **kwargs)


# -- as LogitKD losses ---------------------------------------------------------------------------------------------
def test_registered_names_build_from_a_recipe_and_forward_kl_is_soft_on_rows():
    for name, cls in CLASSES.items():
        assert LOGIT_LOSSES.get(name).__name__ == cls
        assert LogitKD(loss=name).problems() == []
    s, t = logits(10, 13, seed=15, dtype=torch.float32), logits(10, 13, seed=16, dtype=torch.float32)
    forward = LOGIT_LOSSES.get("forward_kl")(4.0, chunk_tokens=3)
    torch.testing.assert_close(forward(s, t), SoftKD(4.0)(s, t))
    jsd = LOGIT_LOSSES.get("gkd")(1.0, beta=0.3)
    assert jsd.describe() == "JSD_0.3(t, s; T=1)*T^2 per token"
    torch.testing.assert_close(jsd(s, t), plain("jsd", s[None].double(), t[None].double(),
                                                torch.ones(1, 10, dtype=torch.bool), 1.0, 0.3).float())
    assert LOGIT_LOSSES.get("skew_rkl")(2.0, skew=0.25).describe() == "KL(s||0.25*s+0.75*t; T=2)*T^2 per token"
    with pytest.raises(FeatdistillError, match="skew"):
        LOGIT_LOSSES.get("skew_kl")(1.0, skew=2)


def test_combiner_passes_all_rows_and_the_mask_and_gets_the_rows_value():
    s, t, mask = batch(2, 6, 11, seed=17)
    s, t = s.float(), t.float()
    labels = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    labels[0, -2:] = -100
    kd = LogitKD(temperature=2.0, alpha=0.25, loss="skew_kl")
    loss = LOGIT_LOSSES.get("skew_kl")(2.0, chunk_tokens=4)
    x = s.clone().requires_grad_(True)
    out = LossCombiner(kd, logit_loss=loss)(x, x, t, labels, [], mask=mask)
    keep = mask & (labels != -100)
    torch.testing.assert_close(out["kd"], 0.75 * loss(s[keep], t[keep]))
    torch.testing.assert_close(out["task"], 0.25 * F.cross_entropy(s[keep], labels[keep]))
    out["loss"].backward()
    ref = s.clone().requires_grad_(True)
    (0.25 * F.cross_entropy(ref[keep], labels[keep])
     + 0.75 * plain("skew_kl", ref.double(), t.double(), keep, 2.0).float()).backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-4, atol=1e-6)
