"""Pairs chosen by linear CKA (``pairs='cka'``): on tiny models whose student layers are, by construction, a teacher
layer up to an orthogonal transform and a scale, the pairing finds those layers; the Distiller builds them and
its plan shows each pair's CKA and why. A loss that compares positions (attention transfer) never gets a layer
with a single position (1x1 maps, vectors)."""

import copy

import pytest
import torch
from torch import nn

from featdistill import AutoPairs
from featdistill.analysis import cka_pairs, measure_cka
from featdistill.distill import Distiller
from featdistill.errors import FeatdistillError
from featdistill.losses import Loss

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


class ConvBlock(nn.Module):
    """conv 3x3 (stride 2 halves the map) + ReLU; ``pool`` ends at a 1x1 map, as a ResNet's last stage on small
    images."""

    def __init__(self, c_in, c_out, stride=1, pool=False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool else nn.Identity()

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


class ConvNet(nn.Module):
    """Stages ``layer1`` ... (each an ``nn.Sequential`` of ``*Block``s: the candidate layers), then a linear head."""

    def __init__(self, stages):
        super().__init__()
        for i, blocks in enumerate(stages, 1):
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.n = len(stages)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for i in range(1, self.n + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture
def cnns():
    """On 8x8 images a 4-stage teacher (8x8, 4x4, 2x2, 1x1) and a 3-stage student (8x8, 4x4, 1x1) whose stages are
    copies of the teacher's: student layer3 is teacher layer3 + layer4, so it reproduces teacher layer4 (CKA 1)."""
    torch.manual_seed(0)
    teacher = ConvNet([[ConvBlock(3, 8)], [ConvBlock(8, 8, 2)], [ConvBlock(8, 8, 2)], [ConvBlock(8, 8, pool=True)]])
    t = copy.deepcopy(teacher)
    student = ConvNet([list(t.layer1), list(t.layer2), [t.layer3[0], t.layer4[0]]])
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    return teacher, student, x


LEFT_OUT = "left out (one position: attention_transfer compares positions): student layer3, teacher layer4"


def test_a_position_loss_never_gets_a_1x1_layer_and_the_notes_say_so(cnns):
    teacher, student, x = cnns
    # mse compares channels too: the 1x1 layers stay candidates, and the student's last stage finds teacher layer4
    pairs, notes = cka_pairs(teacher, student, x, loss="mse")
    assert [(p.student, p.teacher) for p in pairs] == [("layer1", "layer1"), ("layer2", "layer2"),
                                                       ("layer3", "layer4")]
    assert not any(n.startswith("left out") for n in notes)
    pairs, notes = cka_pairs(teacher, student, x, loss="attention_transfer")
    assert [(p.student, p.teacher) for p in pairs] == [("layer1", "layer1"), ("layer2", "layer2")]
    assert notes[0] == "student layer1 (1/3) <-> teacher layer1 (1/4): CKA 1.00"  # depth among all candidates
    assert notes[-2] == LEFT_OUT and notes[-1].startswith("why: ")
    # n_pairs spaces over the remaining student layers and keeps the last remaining one
    pairs, _ = cka_pairs(teacher, student, x, n_pairs=1, loss="at")
    assert [(p.student, p.teacher) for p in pairs] == [("layer2", "layer2")]
    with pytest.raises(FeatdistillError, match=r"2 student layers to choose from \(layer1, layer2\); use 1 <= n_pairs"):
        cka_pairs(teacher, student, x, n_pairs=3, loss="attention_transfer")

    class Positions(Loss):  # a Loss class (or instance) declaring channel_free counts as a name does
        channel_free = True

    for loss in (Positions, Positions()):
        pairs, notes = cka_pairs(teacher, student, x, loss=loss)
        assert [p.student for p in pairs] == ["layer1", "layer2"]
        assert notes[-2] == "left out (one position: Positions compares positions): student layer3, teacher layer4"


def test_the_distiller_builds_attention_transfer_cka_pairs(cnns):
    teacher, student, x = cnns
    auto = AutoPairs(by="cka", loss="attention_transfer", n_pairs=2, weight="auto", auto_ratio=0.25)
    with Distiller(teacher, student, auto, sample_input=x) as d:
        assert [p.key for p in d.pairs] == ["layer1~layer1", "layer2~layer2"]
        plan = d.plan()
        out = d(x[:8], torch.zeros(8, dtype=torch.long))
    assert LEFT_OUT in plan
    assert set(out) >= {"loss", "feat/layer1~layer1", "feat/layer2~layer2"} and torch.isfinite(out["loss"])


def test_only_single_position_candidates_are_refused_with_the_fix(models, cnns):
    teacher, student, x = models  # vectors [N, 16]: one position each
    with pytest.raises(FeatdistillError, match=r"every student candidate layer has a single position "
                                               r"\(blocks.0 \[16\], blocks.1 \[16\]\).*loss='mse' with "
                                               r"normalize='teacher'.*explicit"):
        cka_pairs(teacher, student, x, loss="attention_transfer")
    teacher, student, x = cnns  # on 1x1 images every stage is 1x1
    with pytest.raises(FeatdistillError, match="every student candidate layer has a single position"):
        Distiller(teacher, student, AutoPairs(by="cka", loss="attention_transfer"), sample_input=x[:, :, :1, :1])
    flat_teacher = ConvNet([[ConvBlock(3, 8, pool=True)], [ConvBlock(8, 8)]])  # 1x1 from its first stage on
    with pytest.raises(FeatdistillError, match=r"every teacher candidate layer has a single position \(layer1 "
                                               r"\[8, 1, 1\], layer2 \[8, 1, 1\]\)"):
        cka_pairs(flat_teacher, student, x, loss="attention_transfer")
