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
