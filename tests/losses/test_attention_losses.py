"""Attention-map losses against hand formulas."""

import pytest
import torch
import torch.nn.functional as F

from featdistill import LOSSES
from featdistill.errors import ShapeError
from featdistill.losses import attention_kl, attention_mse


def rows(b: int, h: int, n: int) -> torch.Tensor:
    return torch.softmax(torch.randn(b, h, n, n) * 2, dim=-1)


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


def kl_formula(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """attention_kl as the autograd formula (what the loss computes for a teacher that needs a gradient)."""
    return (t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())).sum(-1).mean()


def test_attention_kl_fast_path_equals_the_formula_value_and_gradient():
    """A detached teacher takes an in-place path with one log and no mask: the formula's value and gradient,
    including students at or below eps (no gradient there, as clamp gives) and zero teacher entries."""
    s, t = rows(2, 3, 6), rows(2, 3, 6)
    s[0, 0, 0, :4] = torch.tensor([0.0, 1e-9, 1e-8, 2e-8])
    t[0, 0, 0, :2] = 0.0
    for student, teacher in ((s, t), (rows(2, 3, 6), rows(2, 3, 6)), (t, t)):
        fast_in, ref_in = student.clone().requires_grad_(), student.clone().requires_grad_()
        fast, ref = attention_kl(fast_in, teacher), kl_formula(ref_in, teacher)
        torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
        fast.backward()
        ref.backward()
        assert torch.equal(fast_in.grad, ref_in.grad)  # the same operations, in the same order
    assert type(attention_kl(s.clone().requires_grad_(), t).grad_fn).__name__.startswith("_RowKL")


def test_attention_kl_teacher_with_a_gradient_uses_the_formula():
    s, t = rows(2, 2, 5).requires_grad_(), rows(2, 2, 5).requires_grad_()
    attention_kl(s, t).backward()
    t_ref = t.detach().clone().requires_grad_()
    kl_formula(s.detach(), t_ref).backward()
    torch.testing.assert_close(t.grad, t_ref.grad)
