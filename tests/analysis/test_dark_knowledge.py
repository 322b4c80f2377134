"""Dark knowledge: the worked example, entropy and off-class mass by hand, the class matrix, related pairs and the
suggested-T rule."""

import math

import pytest
import torch

from featdistill.analysis import analyse, class_matrix, soft_stats, suggest_temperature, top_pairs, worked_example


def test_worked_example_numbers():
    text = worked_example()
    assert "T=1: [0.971, 0.018, 0.011]" in text
    assert "T=2: [0.806, 0.109, 0.085]" in text


def test_entropy_and_off_class_mass_by_hand():
    # two samples, 3 classes; logits log(p) so that softmax at T=1 gives p exactly
    p1, p2 = [0.5, 0.25, 0.25], [0.1, 0.8, 0.1]
    logits = torch.tensor([p1, p2]).log()
    labels = torch.tensor([0, 2])  # the second sample's true class gets only 0.1
    s = soft_stats(logits, labels, 1.0)

    def bits(p):
        return -sum(v * math.log2(v) for v in p)

    assert s["entropy_bits"] == pytest.approx((bits(p1) + bits(p2)) / 2)  # 1.5 and 0.922 bits
    assert s["off_class"] == pytest.approx(((1 - 0.5) + (1 - 0.1)) / 2)
    assert s["true_class"] == pytest.approx(0.3)
    # T=2 halves the log-probabilities: p ~ sqrt(p), renormalised
    q1 = torch.tensor(p1).sqrt() / torch.tensor(p1).sqrt().sum()
    assert soft_stats(logits[:1], labels[:1], 2.0)["off_class"] == pytest.approx(float(1 - q1[0]))
    # equal logits are uniform at any T: log2(3) bits
    assert soft_stats(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 4.0)["entropy_bits"] == \
        pytest.approx(math.log2(3))


def test_class_matrix_rows_are_mean_soft_targets():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(200, 5, generator=gen) * 3, torch.randint(0, 4, (200,), generator=gen)  # no class 4
    m = class_matrix(logits, labels, 2.0)
    assert m.shape == (5, 5)
    assert torch.allclose(m[:4].sum(1), torch.ones(4, dtype=torch.float64))
    assert torch.isnan(m[4]).all()  # a class without samples
    p = torch.softmax(logits.double() / 2, dim=1)
    assert torch.allclose(m[1], p[labels == 1].mean(0))


def test_top_pairs_are_symmetrised_and_ordered():
    m = torch.tensor([[0.7, 0.2, 0.1, 0.0],
                      [0.1, 0.8, 0.05, 0.05],
                      [0.3, 0.0, 0.6, 0.1],
                      [0.0, 0.1, 0.3, 0.6]], dtype=torch.float64)
    pairs = top_pairs(m, n=3)
    # (0,1): (0.2+0.1)/2 = 0.15, (0,2): (0.1+0.3)/2 = 0.2, (2,3): (0.1+0.3)/2 = 0.2, (1,3): 0.075, ...
    assert [(c, k) for c, k, _ in pairs] == [(0, 2), (2, 3), (0, 1)]
    assert [v for *_, v in pairs] == pytest.approx([0.2, 0.2, 0.15])
    assert all(c != k for c, k, _ in top_pairs(m, n=10))  # never the diagonal


def test_suggested_temperature_rule_on_constructed_logits():
    # true-class logit margin d over 9 others: p[y] at T = e^(d/T) / (e^(d/T) + 9)
    def logits(margin):
        z = torch.zeros(50, 10)
        z[:, 3] = margin
        return z, torch.full((50,), 3)

    def p_true(d, t):
        return math.exp(d / t) / (math.exp(d / t) + 9)

    z, y = logits(10.0)  # T=1: 1.0, T=2: 0.94, T=4: 0.58, T=8: 0.28
    found = analyse(z, y)
    assert found.suggested == 4.0
    assert found.stats[4.0]["true_class"] == pytest.approx(p_true(10, 4))
    assert "T=4" in found.reason and "T=8" in found.reason and found.reason.count(".") >= 1
    assert analyse(*logits(4.0)).suggested == 1.0  # p[y] 0.86 at T=1 but 0.45 at T=2
    assert analyse(*logits(40.0)).suggested == 8.0  # still 0.94 at T=8: the highest T tried
    t, reason = suggest_temperature({1.0: 0.3, 2.0: 0.2})  # an unsure teacher: T=1, said so
    assert t == 1.0 and "unsure" in reason
    assert found.accuracy == 1.0 and "T=4" in "\n".join(found.lines())
