"""Multi-layer pairs in the recipe (no torch model is built here): tuples of names, their checks, keys, overrides,
and a recipe file that uses ``review_kd``."""

import subprocess
import sys

import pytest

from featdistill import Pair
from featdistill.recipe import Model, Recipe, apply_overrides, load_recipe, validate

STAGES = ("layer1", "layer2", "layer3")


def test_a_tuple_pair_is_one_term_with_a_readable_key():
    pair = Pair(student=list(STAGES), teacher=STAGES, loss="review_kd")
    assert pair.student == STAGES and pair.multi_layer and pair.problems() == []  # a list is kept as a tuple
    assert pair.key == "layer1+layer2+layer3~layer1+layer2+layer3"
    assert pair.layers("teacher") == STAGES and Pair("a", "b").layers("student") == ("a",)
    assert Pair(STAGES, STAGES, loss="review_kd", name="review").key == "review"
    assert Pair("blocks.1", "blocks.2").key == "blocks.1~blocks.2" and not Pair("a", "b").multi_layer
    assert pair == Pair(STAGES, list(STAGES), loss="review_kd")


@pytest.mark.parametrize("pair, expected", [
    (Pair(STAGES, STAGES[:2], loss="review_kd"),
     "student names 3 layer(s) ['layer1', 'layer2', 'layer3'] but teacher names 2 ['layer1', 'layer2']"),
    (Pair(STAGES, "layer3", loss="review_kd"), "give both sides as tuples of the same length"),
    (Pair(STAGES, STAGES), "loss 'mse' compares one student layer with one teacher layer, but this pair names 3 "
                           "student and 3 teacher layers; use one Pair per layer, or a multi-layer loss (review_kd"),
    (Pair("layer3", "layer3", loss="review_kd"), "loss 'review_kd' compares several layers at once; give student and "
                                                 "teacher as tuples of module names ordered shallow -> deep"),
    (Pair(("layer1", 3), STAGES[:2], loss="review_kd"), "student[1] must be a non-empty module name, got 3"),
    (Pair((), "layer1", loss="review_kd"), "student must be a non-empty module name (or, for a multi-layer loss"),
    (Pair(STAGES, STAGES, loss="review_kd", adapter="conv1x1"), "a multi-layer term has no per-layer adapter"),
    (Pair(STAGES, STAGES, loss="review_kd", normalize="both"), "normalize='both' is not supported on a multi-layer"),
])
def test_problems_say_what_is_wrong_and_how_to_fix_it(pair, expected):
    assert any(expected in p for p in pair.problems()), pair.problems()


def test_identity_and_auto_adapters_are_accepted_and_problems_come_together():
    assert Pair(STAGES, STAGES, loss="review_kd", adapter="identity").problems() == []
    assert Pair(STAGES, STAGES, loss="review_kd", adapter=None).problems() == []
    problems = Pair(STAGES, STAGES[:2], loss="mse", normalize="teacher", weight=-1).problems()
    assert len(problems) == 4  # lengths, a single-layer loss, normalize=, the weight


def test_overrides_set_tuples_of_names():
    recipe = Recipe(Model("resnet18"), Model("resnet10t"), pairs=[Pair("layer1", "layer1")])
    new = apply_overrides(recipe, ["pairs.0.student=['layer1', 'layer2']", "pairs.0.teacher=('layer1', 'layer2')",
                                   "pairs.0.loss='review_kd'"])
    assert new.pairs[0].student == ("layer1", "layer2") and validate(new) == []
    new = apply_overrides(recipe, ["pairs=[{'student': ['layer1', 'layer2'], 'teacher': ['layer1', 'layer2'], "
                                   "'loss': 'reviewkd'}]"])
    assert new.pairs[0].key == "layer1+layer2~layer1+layer2" and validate(new) == []
    assert any("compares one student layer" in p
               for p in validate(apply_overrides(new, ["pairs.0.loss='mse'"])))


RECIPE = '''"""ReviewKD between two timm ResNets: one term over three stages plus logit KD."""
from featdistill import LogitKD, Pair
from featdistill.data import Data
from featdistill.recipe import Model, Recipe, Train

recipe = Recipe(
    teacher=Model("resnet18", kwargs=dict(channels=(8, 16, 32, 64), stem_width=8)),
    student=Model("resnet10t", kwargs=dict(channels=(4, 8, 16, 32), stem_width=4)),
    pairs=[Pair(student=("layer1", "layer2", "layer3"), teacher=("layer1", "layer2", "layer3"), loss="review_kd",
                weight=1.0)],
    kd=LogitKD(temperature=4.0, alpha=0.5),
    data=Data(name="digits", image_size=16),
    train=Train(epochs=1),
)
'''


def test_a_recipe_with_a_review_kd_term_loads_and_validates(tmp_path):
    path = tmp_path / "review.py"
    path.write_text(RECIPE)
    recipe = load_recipe(path)
    assert validate(recipe) == [] and recipe.pairs[0].loss == "review_kd"
    broken = path.with_name("broken.py")
    broken.write_text(RECIPE.replace('teacher=("layer1", "layer2", "layer3")', 'teacher=("layer1", "layer2")'))
    assert any("student names 3 layer(s)" in p for p in validate(load_recipe(broken)))


def test_config_still_needs_no_torch_for_a_multi_layer_pair():
    code = ("import sys; sys.modules['torch'] = None; from featdistill.config import Pair; "
            "p = Pair(('a', 'b'), ['c', 'd']); print(p.key, p.multi_layer, p.layers('teacher'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a+b~c+d True ('c', 'd')"
