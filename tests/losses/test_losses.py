"""Closed-form and equivalence tests for every loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from featdistill import LOSSES, UnknownNameError, kd_loss
from featdistill.losses import attention_transfer, attention_transfer_tokens, build_loss, cosine, mse, smooth_l1


def test_soft_targets_match_design_numbers():
    logits = torch.tensor([5.0, 1.0, 0.5])
    for t, expected in [(1, [0.971, 0.018, 0.011]), (2, [0.806, 0.109, 0.085]), (4, [0.591, 0.217, 0.192])]:
        assert torch.allclose(torch.softmax(logits / t, 0), torch.tensor(expected), atol=2e-3)


def test_kd_loss_formula_by_hand():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    temp, alpha = 3.0, 0.3
    p_t = torch.softmax(t / temp, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / temp, 1))).sum(1).mean()
    expected = alpha * F.cross_entropy(s, y) + (1 - alpha) * kl * temp**2
    assert torch.allclose(kd_loss(s, t, y, temperature=temp, alpha=alpha), expected, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, None, temperature=temp), kl * temp**2, atol=1e-6)


def test_identical_logits_give_zero_soft_term():
    z = torch.randn(4, 10)
    assert kd_loss(z, z.clone(), temperature=4.0).abs().item() < 1e-6
    y = torch.randint(0, 10, (4,))
    assert torch.allclose(kd_loss(z, z, y, alpha=0.25), 0.25 * F.cross_entropy(z, y), atol=1e-6)


def test_hard_mode_is_ce_to_teacher_argmax():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.allclose(kd_loss(s, t, mode="hard"), F.cross_entropy(s, t.argmax(1)))
    with pytest.raises(ValueError, match="one of 'hard', 'soft', got 'medium'"):
        kd_loss(s, t, mode="medium")


def test_t_squared_keeps_soft_gradient_scale_roughly_constant():
    # Without T^2 the soft gradient falls like 1/T^2 for large T (Hinton et al.); with it the scale stays put.
    torch.manual_seed(0)
    t = torch.randn(64, 10)
    norms = []
    for temp in (2.0, 4.0, 8.0):
        s = torch.randn(64, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
        kd_loss(s, t, temperature=temp).backward()
        norms.append(s.grad.norm().item())
    assert max(norms) / min(norms) < 1.5
    # without the T^2 factor the ratio between T=2 and T=8 would be about 16
    raw = [n / temp**2 for n, temp in zip(norms, (2.0, 4.0, 8.0))]
    assert raw[0] / raw[2] > 10


def test_identity_adapter_plus_mse_equals_functional_mse():
    from featdistill.adapters import build_adapter

    s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    adapter = build_adapter("identity", s.shape[1:], t.shape[1:])
    assert torch.equal(LOSSES.get("mse")(adapter(s), adapter.target(t)), F.mse_loss(s, t))


def test_smooth_l1_and_cosine_closed_forms():
    s = torch.tensor([[0.0, 0.5, 3.0]])
    t = torch.zeros(1, 3)
    assert math.isclose(smooth_l1(s, t).item(), (0 + 0.125 + 2.5) / 3, rel_tol=1e-6)
    a = torch.randn(2, 5, 6)
    assert cosine(a, a).abs().item() < 1e-6
    assert math.isclose(cosine(a, -a).item(), 2.0, rel_tol=1e-6)
    m = torch.randn(2, 4, 3, 3)
    orth = torch.zeros(2, 4, 3, 3)
    orth[:, 0], m[:, 0] = 1.0, 0.0
    assert math.isclose(cosine(m, orth).item(), 1.0, rel_tol=1e-5)  # per position over channels (dim 1)
    assert math.isclose(mse(s, t).item(), (0.25 + 9) / 3, rel_tol=1e-6)


def test_attention_transfer_reference_formula_and_width_independence():
    torch.manual_seed(0)
    s, t = torch.randn(3, 8, 5, 5), torch.randn(3, 32, 5, 5)

    def at(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    assert torch.allclose(attention_transfer(s, t), (at(s) - at(t)).pow(2).mean())
    assert attention_transfer(t, t).item() == 0.0
    scaled = attention_transfer(s * 10, t)  # the map is normalised: the feature scale does not matter
    assert torch.allclose(scaled, attention_transfer(s, t), atol=1e-6)


def test_attention_transfer_tokens():
    s, t = torch.randn(2, 17, 8), torch.randn(2, 17, 24)
    a_s = F.normalize(s.pow(2).mean(-1), dim=1)
    a_t = F.normalize(t.pow(2).mean(-1), dim=1)
    assert torch.allclose(attention_transfer_tokens(s, t), (a_s - a_t).pow(2).mean())
    assert torch.allclose(attention_transfer(s, t), attention_transfer_tokens(s, t))


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("shapes", [((3, 8, 5, 5), (3, 32, 5, 5)), ((2, 17, 8), (2, 17, 24))], ids=["maps", "tokens"])
def test_the_registered_attention_transfer_reads_the_teachers_map_from_teacher_part(shapes, p):
    """Pair(loss='at') splits the formula: teacher_part(t) is the teacher's normalised map (what the teacher-output
    cache stores), forward(s, map) the rest; together the written-out formula, gradients included."""
    torch.manual_seed(0)
    s, t = torch.randn(*shapes[0], requires_grad=True), torch.randn(*shapes[1])
    channels = 1 if s.dim() == 4 else -1
    a_s = F.normalize(s.pow(p).mean(channels).flatten(1), dim=1)
    a_t = F.normalize(t.pow(p).mean(channels).flatten(1), dim=1)
    expected = (a_s - a_t).pow(2).mean()
    loss = build_loss("at", shapes[0][1:], shapes[1][1:], {"p": p})
    assert loss.teacher_part(t).shape == a_t.shape
    got = loss(s, loss.teacher_part(t))
    torch.testing.assert_close(got, expected)
    (grad,) = torch.autograd.grad(got, s)
    (want,) = torch.autograd.grad(expected, s)
    torch.testing.assert_close(grad, want)


def test_unknown_loss_lists_known_names_and_closest():
    with pytest.raises(UnknownNameError) as err:
        LOSSES.get("cosin")
    msg = str(err.value)
    assert "'cosine'" in msg and "mse" in msg and "attention_transfer" in msg
