"""Recipe fields of issue 16: ``pairs='cka'`` (``AutoPairs(by='cka')``) and ``train.log=['tensorboard']`` validate,
override and save like the other fields; a misspelling is an error with a suggestion."""

import importlib.util
from pathlib import Path

import pytest

from featdistill import AutoPairs, RecipeError
from featdistill.config import Train
from featdistill.recipe import Recipe, apply_overrides, load_recipe, to_dict, validate

VIT = Path(__file__).resolve().parents[2] / "recipes" / "vit_to_deit.py"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(VIT)


def test_cka_string_means_autopairs_by_cka_and_validates(recipe):
    built = Recipe(teacher=recipe.teacher, student=recipe.student, pairs="cka")
    assert built.pairs == AutoPairs(by="cka") and validate(built) == []
    overridden = apply_overrides(recipe, ["pairs='cka'"])
    assert overridden.pairs == AutoPairs(by="cka") and validate(overridden) == []
    assert apply_overrides(recipe, ["pairs=cka"]).pairs == AutoPairs(by="cka")  # a bare word is a string
    assert apply_overrides(recipe, ["pairs={'by': 'cka', 'n_pairs': 2}"]).pairs == AutoPairs(n_pairs=2, by="cka")
    assert apply_overrides(recipe, ["pairs=auto"]).pairs == AutoPairs()


def test_by_is_saved_only_when_not_the_default(recipe):
    """Resolved recipes and teacher-cache keys written before ``by`` existed keep their exact text."""
    assert "by" not in to_dict(AutoPairs()) and to_dict(AutoPairs(by="cka"))["by"] == "cka"
    assert "log" not in to_dict(Train()) and to_dict(Train(log=["tensorboard"]))["log"] == ["tensorboard"]


@pytest.mark.parametrize("value, words", [
    ("'ckaa'", ["got 'ckaa'", "Did you mean 'cka'?", "--set pairs='cka'"]),
    ("'atuo'", ["Did you mean 'auto'?"]),
    ("{'by': 'kca'}", ["AutoPairs.by must be one of ('depth', 'cka')", "Did you mean 'cka'?"]),
])
def test_a_misspelt_pairing_is_an_error_with_a_suggestion(recipe, value, words):
    problems = "\n".join(validate(apply_overrides(recipe, [f"pairs={value}"])))
    for w in words:
        assert w in problems


def test_train_log_tensorboard_overrides_and_validates(recipe):
    new = apply_overrides(recipe, ["train.log=['tensorboard']"])
    assert new.train.log == ("tensorboard",) and validate(new) == []
    assert Train(log=["tensorboard"]).log == ("tensorboard",)  # a list in a recipe file is kept as a tuple


def test_train_log_problems_name_the_valid_loggers_and_the_fix(recipe, monkeypatch):
    problems = "\n".join(validate(apply_overrides(recipe, ["train.log=['tensorbord', 'wandb']"])))
    assert "unknown logger 'tensorbord'. Did you mean 'tensorboard'? Valid: tensorboard" in problems
    assert "unknown logger 'wandb'" in problems
    assert "train.log must be a list" in "\n".join(Train(log="tensorboard").problems())
    assert "only the student's run writes logs" in "\n".join(Train(log=("tensorboard",)).problems("teacher.pretrain"))
    with pytest.raises(RecipeError, match="expected tuple"):
        apply_overrides(recipe, ["train.log=3"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    missing = "\n".join(validate(apply_overrides(recipe, ["train.log=['tensorboard']"])))
    assert "pip install tensorboard" in missing
