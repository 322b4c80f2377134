"""Automatic layer pairing: block discovery on common backbones, the uniform mapping, auto_pairs."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from featdistill.capture import auto_pairs, block_names, uniform_mapping
from featdistill.config import Pair
from featdistill.errors import FeatdistillError


@pytest.fixture(autouse=True)
def _meta_device():
    """Only module structure matters here: build models on the meta device, skipping weight init (fast)."""
    with torch.device("meta"):
        yield


def tiny_vit(depth):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=depth)


RESNET18_BLOCKS = [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]


@pytest.mark.parametrize("n_student, n_teacher, expected", [
    (4, 12, [(0, 2), (1, 5), (2, 8), (3, 11)]),
    (3, 6, [(0, 1), (1, 3), (2, 5)]),
    (4, 4, [(0, 0), (1, 1), (2, 2), (3, 3)]),
    (4, 6, [(0, 1), (1, 2), (2, 4), (3, 5)]),  # 1.5 and 4.5 round up, not to even
    (4, 2, [(0, 0), (1, 0), (2, 1), (3, 1)]),  # more students than teacher blocks: shared teacher blocks
    (3, 1, [(0, 0), (1, 0), (2, 0)]),  # clamped, never -1
])
def test_uniform_mapping(n_student, n_teacher, expected):
    assert uniform_mapping(n_student, n_teacher) == expected


@pytest.mark.parametrize("bad", [(0, 4), (4, 0), (2.0, 4), (True, 4)])
def test_uniform_mapping_rejects_bad_counts(bad):
    with pytest.raises(FeatdistillError, match="positive int"):
        uniform_mapping(*bad)


def test_block_names_vit():
    assert block_names(tiny_vit(4)) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]


def test_block_names_deit_distilled():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8)
    assert block_names(model) == [f"blocks.{i}" for i in range(12)]


def test_block_names_resnets():
    assert block_names(torchvision.models.resnet18()) == RESNET18_BLOCKS
    assert block_names(timm.create_model("resnet18", pretrained=False)) == RESNET18_BLOCKS


def test_block_names_mobilenet_v3():
    names = block_names(torchvision.models.mobilenet_v3_small())
    assert names == [f"features.{i}" for i in range(1, 12)]  # features.0 / .12 are stem / head convs


class Unit(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc(x)


def test_block_names_fallback_uniform_container():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(Unit(), Unit(), Unit()), nn.Linear(4, 2))
    assert block_names(model) == ["1.0", "1.1", "1.2"]
    assert block_names(nn.Sequential(Unit(), Unit())) == ["0", "1"]


def test_block_names_outermost_only():
    class Block(nn.Module):
        def __init__(self, inner=False):
            super().__init__()
            self.inner = nn.Sequential(Block(), Block()) if inner else nn.Identity()

    model = nn.Module()
    model.blocks = nn.ModuleList([Block(inner=True), Block()])
    assert block_names(model) == ["blocks.0", "blocks.1"]


def test_block_names_error_names_model_and_fix():
    with pytest.raises(FeatdistillError) as err:
        block_names(nn.Linear(4, 4))
    assert "Linear" in str(err.value)
    assert "--list-layers student" in str(err.value)


def test_auto_pairs_vit_12_to_4():
    pairs, lines = auto_pairs(tiny_vit(12), tiny_vit(4))
    assert [(p.student, p.teacher) for p in pairs] == [
        ("blocks.0", "blocks.2"), ("blocks.1", "blocks.5"), ("blocks.2", "blocks.8"), ("blocks.3", "blocks.11")]
    assert lines[1] == "student blocks.1 (2/4) <-> teacher blocks.5 (6/12): relative depth 0.50 / 0.50"
    assert len(lines) == 4 and lines[3].endswith("relative depth 1.00 / 1.00")
    for p in pairs:
        assert isinstance(p, Pair) and p.problems() == []
        assert (p.loss, p.adapter, p.weight) == ("mse", "auto", 1.0)
    assert len({p.key for p in pairs}) == len(pairs)


def test_auto_pairs_n_pairs_keeps_last_and_passes_kwargs():
    pairs, lines = auto_pairs(torchvision.models.resnet34(), torchvision.models.resnet18(), n_pairs=3,
                              loss="cosine", weight=0.5, normalize="teacher")
    assert [p.student for p in pairs] == ["layer2.0", "layer3.0", "layer4.1"]  # blocks 3, 5, 8 of 8
    assert pairs[-1].teacher == "layer4.2"  # resnet34's last of 16 blocks
    assert len(lines) == 3
    for p in pairs:
        assert p.problems() == [] and (p.loss, p.weight, p.normalize) == ("cosine", 0.5, "teacher")
    assert len({p.key for p in pairs}) == 3

    one, _ = auto_pairs(tiny_vit(12), tiny_vit(4), n_pairs=1)
    assert [(p.student, p.teacher) for p in one] == [("blocks.3", "blocks.11")]


def test_auto_pairs_rejects_bad_arguments():
    teacher, student = tiny_vit(4), tiny_vit(2)
    with pytest.raises(FeatdistillError, match="only 2 blocks"):
        auto_pairs(teacher, student, n_pairs=3)
    with pytest.raises(FeatdistillError, match="name"):
        auto_pairs(teacher, student, name="x")


def test_auto_pairs_student_deeper_than_teacher():
    pairs, _ = auto_pairs(tiny_vit(2), tiny_vit(4))
    assert [p.teacher for p in pairs] == ["blocks.0", "blocks.0", "blocks.1", "blocks.1"]
    assert len({p.key for p in pairs}) == 4
