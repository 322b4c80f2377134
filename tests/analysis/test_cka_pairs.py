"""Pairs chosen by linear CKA (``pairs='cka'``): on tiny models whose student layers are, by construction, a teacher
layer up to an orthogonal transform and a scale, the pairing finds those layers; the Distiller builds them and
its plan shows each pair's CKA and why."""

import copy

import pytest
import torch
from torch import nn

from featdistill import AutoPairs
from featdistill.analysis import cka_pairs, measure_cka
from featdistill.distill import Distiller
from featdistill.errors import FeatdistillError

WIDTH = 16


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Net(nn.Module):
    """``blocks`` (found as candidate layers by their class names, ``*Block``), then a linear head."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


class RotatedBlock(nn.Module):
    """``scale_out * inner(x) @ q_out`` where ``x = h @ q_in^T / scale_in`` undoes the previous block's rotation and
    scale: the block reproduces ``inner``'s output in another orthonormal basis and at another scale."""

    def __init__(self, inner, q_in, q_out, scale_in, scale_out):
        super().__init__()
        self.inner, self.scale_in, self.scale_out = inner, scale_in, scale_out
        self.register_buffer("q_in", q_in)
        self.register_buffer("q_out", q_out)

    def forward(self, h):
        return self.scale_out * (self.inner(h @ self.q_in.T / self.scale_in) @ self.q_out)


def orthogonal(seed):
    q, _ = torch.linalg.qr(torch.randn(WIDTH, WIDTH, generator=torch.Generator().manual_seed(seed)))
    return q


@pytest.fixture
def models():
    """A 4-block teacher; a 2-block student whose block 0 is teacher block 2 (rotated, x3) and block 1 teacher
    block 3 (rotated again, x0.5). Uniform depth would pair student block 0 with teacher block 1."""
    torch.manual_seed(0)
    teacher = Net([Block() for _ in range(4)])
    inner = copy.deepcopy(teacher.blocks)  # the student's own copy: the teacher is frozen by the Distiller
    q1, q2 = orthogonal(1), orthogonal(2)
    student = Net([RotatedBlock(inner[:3], torch.eye(WIDTH), q1, 1.0, 3.0),
                   RotatedBlock(inner[3], q1, q2, 3.0, 0.5)])
    x = torch.randn(64, WIDTH, generator=torch.Generator().manual_seed(3))
    return teacher, student, x


def test_the_constructed_layers_have_cka_one_and_are_chosen(models):
    teacher, student, x = models
    s_layers, t_layers, cka = measure_cka(teacher, student, x)
    assert s_layers == ["blocks.0", "blocks.1"] and t_layers == [f"blocks.{i}" for i in range(4)]
    assert cka[0, 2] == pytest.approx(1.0, abs=1e-9) and cka[1, 3] == pytest.approx(1.0, abs=1e-9)
    assert cka[0, 1] < 0.999  # the layer uniform depth would pick is a different representation
    pairs, notes = cka_pairs(teacher, student, x, loss="cosine", weight=2.0)
    assert [(p.student, p.teacher) for p in pairs] == [("blocks.0", "blocks.2"), ("blocks.1", "blocks.3")]
    assert all(p.loss == "cosine" and p.weight == 2.0 for p in pairs)
    assert notes[0] == "student blocks.0 (1/2) <-> teacher blocks.2 (3/4): CKA 1.00"
    assert "mean CKA 1.00 on a fixed batch of 64 inputs (uniform-depth pairing of the same layers:" in notes[2]
    assert notes[-1].startswith("why: ") and notes[-1].count(". ") == 0  # one sentence


def test_n_pairs_keeps_the_last_student_layer_and_pairs_it_by_cka(models):
    teacher, student, x = models
    pairs, notes = cka_pairs(teacher, student, x, n_pairs=1)
    assert [(p.student, p.teacher) for p in pairs] == [("blocks.1", "blocks.3")]
    with pytest.raises(FeatdistillError, match="1 <= n_pairs <= 2"):
        cka_pairs(teacher, student, x, n_pairs=3)


def test_the_distiller_builds_cka_pairs_and_its_plan_says_why(models):
    teacher, student, x = models
    with Distiller(teacher, student, "cka", sample_input=x[:2], pairing_input=x) as d:
        assert [p.key for p in d.pairs] == ["blocks.0~blocks.2", "blocks.1~blocks.3"]
        plan = d.plan()
        out = d(x[:8], torch.zeros(8, dtype=torch.long))
    assert set(out) >= {"loss", "feat/blocks.0~blocks.2", "feat/blocks.1~blocks.3"}
    assert "pairs chosen automatically by linear CKA" in plan and "relative depth (TinyBERT" not in plan
    assert "student blocks.1 (2/2) <-> teacher blocks.3 (4/4): CKA 1.00" in plan and "  why: " in plan
    # AutoPairs(by='cka') is the same; its other fields reach every pair
    with Distiller(teacher, student, AutoPairs(by="cka", normalize="teacher"), sample_input=x) as d:
        assert [p.teacher for p in d.pairs] == ["blocks.2", "blocks.3"]
        assert all(p.normalize == "teacher" for p in d.pairs)


def test_too_small_a_batch_is_refused_with_the_fix(models):
    teacher, student, x = models
    with pytest.raises(FeatdistillError, match="at least 8 samples.*pairing_input"):
        Distiller(teacher, student, "cka", sample_input=x[:2])
    with pytest.raises(FeatdistillError, match="AutoPairs.by must be one of.*Did you mean 'cka'"):
        Distiller(teacher, student, AutoPairs(by="cak"), sample_input=x)
