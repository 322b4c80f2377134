"""The runner with a multi-layer term: --dry-run prints it as one group with every level; wrong names exit 2."""

import pytest

from featdistill.run import main

RECIPE = '''"""Tiny CNNs with named stages: ReviewKD over three stages plus logit KD."""
from torch import nn
from featdistill import LogitKD, Pair
from featdistill.data import Data
from featdistill.recipe import Model, Recipe, Train


def tiny(num_classes, in_chans, width):
    return nn.Sequential(nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU()),
                         nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
                         nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


recipe = Recipe(
    teacher=Model(tiny, kwargs=dict(width=8)),
    student=Model(tiny, kwargs=dict(width=4)),
    pairs=[Pair(student=("0", "1", "2"), teacher=("0", "1", "2"), loss="review_kd", name="review")],
    kd=LogitKD(temperature=4.0, alpha=0.5),
    data=Data(name="digits", image_size=16),
    train=Train(epochs=1, batch_size=32),
)
'''


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))


def test_dry_run_prints_the_multi_layer_term_with_every_level(tmp_path, capsys):
    path = tmp_path / "review.py"
    path.write_text(RECIPE)
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0+1+2 -> ReviewKD (" in out and "params, in the loss) -> 0+1+2  loss=review_kd weight=1, 3 levels:" in out
    for line in ("level 1: 0 [4, 16, 16] -> 0 [8, 16, 16]", "level 2: 1 [8, 8, 8] -> 1 [16, 8, 8]",
                 "level 3: 2 [16, 4, 4] -> 2 [32, 4, 4]"):
        assert line in out
    assert "losses: " in out and "1*review_kd(0+1+2, 0+1+2)" in out


def test_wrong_level_names_and_lengths_exit_2_naming_each(tmp_path, capsys):
    path = tmp_path / "review.py"
    path.write_text(RECIPE)
    assert main([str(path), "--dry-run", "--set", "pairs.0.teacher=('0', '9', '7')"]) == 2
    err = capsys.readouterr().err
    assert "teacher[1]: layer '9' not found" in err and "teacher[2]: layer '7' not found" in err
    assert main([str(path), "--dry-run", "--set", "pairs.0.teacher=('0', '1')"]) == 2
    assert "student names 3 layer(s)" in capsys.readouterr().err
