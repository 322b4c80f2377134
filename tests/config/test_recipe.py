"""Recipe loading, typed overrides and validation (nothing is built)."""

from pathlib import Path

import pytest

from featdistill import LogitKD, Pair, RecipeError
from featdistill.recipe import Recipe, Train, apply_overrides, load_recipe, validate

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.py"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and validate(recipe) == []
    assert recipe.data.name in ("digits", "pydoc"), "shipped defaults must run with no download"
    assert (path.read_text().lstrip().startswith('"""')), "each recipe explains itself in a docstring"


def test_overrides_are_typed_and_nested():
    recipe = load_recipe(RECIPES[0])
    new = apply_overrides(recipe, ["train.epochs=3", "kd.temperature=2", "train.lr=0.01", "pairs.0.weight=2",
                                   "student.kwargs={'depth': 1}", "train.optimizer=sgd"])
    assert new.train.epochs == 3 and new.kd.temperature == 2.0 and new.train.lr == 0.01
    assert new.pairs[0].weight == 2 and new.train.optimizer == "sgd"
    assert new.student.kwargs["depth"] == 1 and "embed_dim" in new.student.kwargs  # kwargs merge
    bare = apply_overrides(recipe, ["kd=None", "pairs=[]"])
    assert bare.kd is None and bare.pairs == ()
    back = apply_overrides(bare, ["kd.alpha=0.2"])  # a field of a None section starts from the defaults
    assert back.kd == LogitKD(alpha=0.2)


def test_bad_overrides_are_all_reported_with_valid_keys():
    recipe = load_recipe(RECIPES[0])
    with pytest.raises(RecipeError) as err:
        apply_overrides(recipe, ["train.epoch=3", "train.epochs='three'", "nonsense", "pairs.7.weight=1"])
    msg = str(err.value)
    assert "unknown key 'epoch'" in msg and "'epochs'" in msg and "Valid keys here: epochs, batch_size" in msg
    assert "expected int, got str 'three'" in msg
    assert "expected KEY=VALUE" in msg
    assert "'7' is not an index" in msg
    assert len(err.value.problems) == 4


def test_validation_collects_every_problem():
    recipe = load_recipe(RECIPES[0])
    broken = apply_overrides(recipe, ["kd.temperature=0", "kd.alpha=1.5", "train.epochs=0", "data.name='digts'",
                                      "teacher.name='vit_tinny_patch16_224'"])
    broken = Recipe(**{**broken.__dict__, "pairs": (Pair("blocks.0", "blocks.0", loss="mes", adapter="lin"),)})
    problems = "\n".join(validate(broken))
    for part in ("temperature must be > 0", "alpha must be in [0, 1]", "train.epochs must be an integer >= 1",
                 "'digits'", "timm has no model 'vit_tinny_patch16_224'", "vit_tiny_patch16_224",
                 "unknown loss 'mes'", "unknown adapter 'lin'"):
        assert part in problems


def test_recipe_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\nrecipe = Recipe(\n")
    with pytest.raises(RecipeError, match=r"syntax error at .*bad.py:2"):
        load_recipe(bad)
    bad.write_text("x = 1\nrecipe = undefined_name\n")
    with pytest.raises(RecipeError, match=r"NameError.*bad.py:2"):
        load_recipe(bad)
    bad.write_text("recipes = 1\n")
    with pytest.raises(RecipeError, match="must define a module-level `recipe = Recipe"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.py")


def test_a_recipe_can_derive_from_another(tmp_path):
    variant = tmp_path / "variant.py"
    variant.write_text(
        "from dataclasses import replace\n"
        "from featdistill.recipe import load_recipe, Train\n"
        f"recipe = replace(load_recipe({str(RECIPES[0])!r}), train=Train(epochs=2))\n")
    assert load_recipe(variant).train == Train(epochs=2)
