"""``python -m featdistill.inspect`` end to end on a shrunk shipped recipe: findings, PNGs, JSON, ``--run`` and the
errors that exit 2."""

import json
from pathlib import Path

import pytest

from featdistill.inspect import main as inspect_main
from featdistill.run import main as run_main

ROOT = Path(__file__).resolve().parents[2]
VIT = str(ROOT / "recipes" / "vit_to_deit.py")
SHRINK = ["--set", "teacher.pretrain.epochs=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One teacher cache for the module: the one-epoch teacher is trained by the first test and reused after."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def use_cache(cache, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(cache))


def test_recipe_findings_in_words_pngs_and_json(tmp_path, capsys):
    out = tmp_path / "inspect"
    assert inspect_main([VIT, *SHRINK, "--batch", "48", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for words in ("mass off the true class", "suggested temperature T=", "classes the teacher relates most",
                  "best-aligned pairing by CKA", "uniform-depth pairing", "CKA at each recipe pair", "<->"):
        assert words in printed, words
    for name in ("dark_knowledge.png", "cka.png", "inspect.json"):
        assert (out / name).stat().st_size > 0, name
    found = json.loads((out / "inspect.json").read_text())
    layers = found["layers"]
    assert layers["student_layers"] == layers["teacher_layers"] == ["blocks.0", "blocks.1", "blocks.2"]
    assert layers["num_samples"] == 48 and len(layers["cka"]) == 3 and len(layers["cka"][0]) == 3
    assert all(0.0 <= v <= 1.0 for row in layers["cka"] for v in row)
    assert [p[2] for p in layers["recipe_pairs_on_grid"]] == ["blocks.1~blocks.1", "blocks.2~blocks.2"]
    dk = found["dark_knowledge"]
    assert dk["entropy_unit"] == "bits" and dk["suggested_temperature"] in (1.0, 2.0, 4.0, 8.0)
    assert set(dk["per_temperature"]) == {"1", "2", "4", "8"}
    # a second call never writes over the first
    assert inspect_main([VIT, *SHRINK, "--batch", "8", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_run_dir_before_and_after(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_main([VIT, *SHRINK, "--set", "train.epochs=1", "--quiet", "--out", str(run_dir)]) == 0
    out = tmp_path / "after"
    assert inspect_main(["--run", str(run_dir), "--batch", "32", "--layers-student", "blocks.1,blocks.2",
                         "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "before -> after training" in printed and "blocks.1~blocks.1: " in printed
    layers = json.loads((out / "inspect.json").read_text())["layers"]
    assert layers["student_layers"] == ["blocks.1", "blocks.2"]
    assert set(layers["pair_cka"]) == set(layers["pair_cka_after"]) == {"blocks.1~blocks.1", "blocks.2~blocks.2"}
    assert layers["pair_cka"] != layers["pair_cka_after"]  # the trained weights were loaded
    assert len(layers["cka_after"]) == 2


def test_a_cka_recipe_marks_the_pairs_a_run_would_choose(tmp_path, capsys):
    out = tmp_path / "cka"
    assert inspect_main([VIT, *SHRINK, "--set", "pairs='cka'", "--batch", "32", "--out", str(out)]) == 0
    assert "CKA at each recipe pair" in capsys.readouterr().out
    layers = json.loads((out / "inspect.json").read_text())["layers"]
    marked = [p[2] for p in layers["recipe_pairs_on_grid"]]
    assert len(marked) == 3 and [m.split("~")[0] for m in marked] == ["blocks.0", "blocks.1", "blocks.2"]
    assert set(layers["pair_cka"]) == set(marked)


def test_bad_layer_name_exits_2_with_close_matches_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert inspect_main([VIT, "--layers-teacher", "blocks.1,blocks.7", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--layers-teacher" in err and "'blocks.7' not found" in err and "Did you mean" in err
    assert not out.exists()  # checked before the output folder (and the teacher stage)


@pytest.mark.parametrize("argv, words", [
    (["--run", "/no/such/run"], "not a featdistill run directory"),
    ([VIT, "--set", "data.name='pydoc'"], "image recipes"),
    ([VIT, "--set", "train.epochz=1"], "epochz"),
    ([VIT, "--batch", "1"], "--batch must be 2 or more"),
])
def test_bad_input_exits_2(argv, words, capsys):
    assert inspect_main(argv) == 2
    assert words in capsys.readouterr().err


def test_help_shows_the_worked_example(capsys):
    assert inspect_main(["--help"]) == 0
    assert "[0.971, 0.018, 0.011]" in capsys.readouterr().out
