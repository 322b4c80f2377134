"""ReviewKD (review_kd): the hierarchical context loss against a plain formula, the attention-based fusion against a
hand computation, shapes (widths, sizes, pooled vectors), warm-up, and the errors of a badly ordered pair."""

import pytest
import torch
import torch.nn.functional as F

from featdistill import LOSSES, ShapeError
from featdistill.losses import ReviewKD, build_loss, hierarchical_context_loss
from featdistill.losses.multilevel import hcl_level

G = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=G)


def pool(x, size):
    """Average pool of an ``H x H`` map to ``size x size`` by reshaping (``H`` divisible by ``size``)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(dim=(3, 5))


def plain_hcl(s, t):
    """ReviewKD's HCL for one level, written out: pyramid sizes 4, 2, 1 below the map size, weights 1/2^k."""
    h = s.shape[-1]
    terms, weights = [((s - t) ** 2).mean()], [1.0]
    for k, size in enumerate([size for size in (4, 2, 1) if size < h], start=1):
        terms.append(((pool(s, size) - pool(t, size)) ** 2).mean())
        weights.append(0.5**k)
    return sum(w * x for w, x in zip(weights, terms)) / sum(weights)


@pytest.mark.parametrize("size, weights", [(8, [1, 0.5, 0.25, 0.125]), (4, [1, 0.5, 0.25]), (2, [1, 0.5]), (1, [1])])
def test_hcl_matches_the_written_out_formula_at_every_map_size(size, weights):
    s, t = randn(2, 3, size, size), randn(2, 3, size, size)
    expected = plain_hcl(s, t)
    torch.testing.assert_close(hcl_level(s, t), expected)
    # the weights, spelled out for the 8x8 case: (mse + .5 mse4 + .25 mse2 + .125 mse1) / 1.875
    if size == 8:
        mses = [F.mse_loss(s, t)] + [F.mse_loss(pool(s, k), pool(t, k)) for k in (4, 2, 1)]
        torch.testing.assert_close(hcl_level(s, t), sum(w * m for w, m in zip(weights, mses)) / sum(weights))


def test_hcl_sums_levels_and_is_zero_for_identical_inputs():
    s = [randn(2, 4, 8, 8), randn(2, 8, 4, 4), randn(2, 16, 1, 1)]
    t = [randn(2, 4, 8, 8), randn(2, 8, 4, 4), randn(2, 16, 1, 1)]
    torch.testing.assert_close(hierarchical_context_loss(s, t), sum(plain_hcl(a, b) for a, b in zip(s, t)))
    assert hierarchical_context_loss(t, t) == 0
    with pytest.raises(ShapeError, match="equal shapes"):
        hierarchical_context_loss([s[0]], [t[1]])


def test_registered_under_both_names_and_declares_multi_layer():
    assert LOSSES.get("review_kd") is LOSSES.get("reviewkd") is ReviewKD
    assert ReviewKD.multi_layer and not getattr(LOSSES.get("mse"), "multi_layer", False)


STUDENT = [(8, 16, 16), (16, 8, 8), (32, 4, 4)]
TEACHER = [(16, 16, 16), (32, 8, 8), (64, 4, 4)]


def test_outputs_take_each_teacher_level_shape_for_a_batch_of_two():
    torch.manual_seed(0)
    loss = build_loss("review_kd", STUDENT, TEACHER)
    assert isinstance(loss, ReviewKD) and loss.mid_channel == 32  # min(512, deepest student width)
    s, t = [randn(2, *shape) for shape in STUDENT], [randn(2, *shape) for shape in TEACHER]
    outs = loss.fuse(s, t)
    assert [tuple(o.shape) for o in outs] == [(2, *shape) for shape in TEACHER]
    value = loss(s, t)
    assert value.dim() == 0 and value > 0
    torch.testing.assert_close(value, hierarchical_context_loss(loss.fuse(s, t), t))
    # only the deepest level has no fusion; mid_channel is a keyword
    assert [abf.attention is not None for abf in loss.abfs] == [True, True, False]
    assert ReviewKD.build(STUDENT, TEACHER, mid_channel=256).abfs[0].reduce[0].out_channels == 256


def test_fusion_matches_a_hand_computation():
    """Two levels in eval mode: O_2 = BN(conv3(BN(conv1(S_2)))); O_1 fuses S_1 with the upsampled residual."""
    torch.manual_seed(0)
    loss = ReviewKD([3, 5], [4, 6], mid_channel=7).eval()
    for bn in [m for m in loss.modules() if isinstance(m, torch.nn.BatchNorm2d)]:  # non-trivial statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    s1, s2 = randn(2, 3, 8, 8), randn(2, 5, 4, 4)
    t1, t2 = randn(2, 4, 8, 8), randn(2, 6, 4, 4)

    def conv_bn(seq, x, padding=0):
        conv, bn = seq[0], seq[1]
        x = F.conv2d(x, conv.weight, conv.bias, padding=padding)
        return (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
            * bn.weight[:, None, None] + bn.bias[:, None, None]

    deep, shallow = loss.abfs[1], loss.abfs[0]
    r2 = conv_bn(deep.reduce, s2)
    o2 = conv_bn(deep.output, r2, padding=1)
    m1 = conv_bn(shallow.reduce, s1)
    up = r2.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 4x4 -> 8x8
    att = torch.sigmoid(F.conv2d(torch.cat([m1, up], 1), shallow.attention[0].weight, shallow.attention[0].bias))
    o1 = conv_bn(shallow.output, m1 * att[:, :1] + up * att[:, 1:], padding=1)
    with torch.no_grad():
        outs = loss.fuse([s1, s2], [t1, t2])
        torch.testing.assert_close(outs[1], o2)
        torch.testing.assert_close(outs[0], o1)
        torch.testing.assert_close(loss([s1, s2], [t1, t2]), plain_hcl(o1, t1) + plain_hcl(o2, t2))


def test_other_sizes_are_resized_to_the_teacher_and_pooled_vectors_are_1x1_levels():
    loss = ReviewKD.build([(4, 8, 8), (8,)], [(6, 16, 16), (12,)])
    s, t = [randn(2, 4, 8, 8), randn(2, 8)], [randn(2, 6, 16, 16), randn(2, 12)]
    outs = loss.fuse(s, t)
    assert [tuple(o.shape) for o in outs] == [(2, 6, 16, 16), (2, 12, 1, 1)]
    loss(s, t).backward()
    assert all(p.grad is not None for p in loss.parameters())


def test_warm_up_ramps_over_training_calls_only():
    loss = ReviewKD.build(STUDENT, TEACHER, warmup_steps=4)
    s, t = [randn(2, *shape) for shape in STUDENT], [randn(2, *shape) for shape in TEACHER]
    with torch.no_grad():
        assert loss.eval()(s, t) == 0 and int(loss.steps) == 0  # eval calls do not count
        loss.train()(s, t)  # one training call: the factor is 1/4
        full = hierarchical_context_loss(loss.eval().fuse(s, t), t)
        torch.testing.assert_close(loss(s, t), full / 4)
        assert int(loss.steps) == 1
    assert "warmup_steps=4" in repr(loss)


@pytest.mark.parametrize("student, teacher, kwargs, message", [
    ([(16, 4, 4), (8, 8, 8)], [(16, 4, 4), (8, 8, 8)], {}, "ordered shallow -> deep"),
    ([(17, 8)], [(17, 8)], {}, r"feature maps \[C, H, W\]"),
    ([(8, 4, 4)], [(8, 4, 4), (8, 2, 2)], {}, "as many teacher levels"),
])
def test_bad_levels_are_refused_with_the_fix(student, teacher, kwargs, message):
    with pytest.raises(ShapeError, match=message):
        ReviewKD.build(student, teacher, **kwargs)


def test_bad_keywords_are_refused():
    with pytest.raises(Exception, match="mid_channel must be a positive int"):
        ReviewKD.build(STUDENT, TEACHER, mid_channel=0)
    with pytest.raises(Exception, match="warmup_steps must be an integer >= 0"):
        ReviewKD.build(STUDENT, TEACHER, warmup_steps=-1)
