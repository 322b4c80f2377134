"""The teacher cache key: what a trained teacher depends on (its spec, training settings and seed, the data) changes
the cached file's path; the student's side of the recipe never does. Nothing is trained here."""

from pathlib import Path

import pytest

from featdistill.cli.teacher import cache_dir, cache_path
from featdistill.recipe import apply_overrides, load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "vit_to_deit.py"


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    return load_recipe(RECIPE)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("FEATDISTILL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "featdistill"


def test_same_recipe_same_path_under_the_cache(base, tmp_path):
    path = cache_path(base)
    assert path == cache_path(load_recipe(RECIPE))  # loaded twice: equal, not just identical
    assert path.parent == tmp_path / "cache" / "teachers"
    assert path.suffix == ".pt" and path.name.startswith("vit_tiny_patch16_224-")
    assert not path.exists()  # computing the key trains and writes nothing


@pytest.mark.parametrize("override", [
    "teacher.kwargs={'depth': 2}",
    "teacher.kwargs={'embed_dim': 48}",
    "teacher.pretrain.epochs=1",
    "teacher.pretrain.seed=1",
    "teacher.pretrain.lr=0.001",
    "teacher.pretrain.batch_size=16",
    "data.image_size=32",
    "data.augment=False",
])
def test_what_the_teacher_depends_on_changes_the_key(base, override):
    changed = apply_overrides(base, [override])
    assert changed != base
    assert cache_path(changed) != cache_path(base)
    assert cache_path(changed).parent == cache_path(base).parent


def test_another_teacher_model_changes_the_name():
    recipe = load_recipe(RECIPE)
    other = apply_overrides(recipe, ["teacher.name='timm:vit_small_patch16_224'"])
    assert cache_path(other).name.startswith("timm-vit_small_patch16_224-")  # ':' is not kept in file names


@pytest.mark.parametrize("override", [
    "student.kwargs={'depth': 2}",
    "student.name='deit_small_distilled_patch16_224'",
    "kd.temperature=2.0",
    "kd=None",
    "pairs=[]",
    "train.seed=5",
    "train.batch_size=16",
    "train.epochs=1",
])
def test_student_settings_keep_the_key(base, override):
    changed = apply_overrides(base, [override])
    assert changed != base
    assert cache_path(changed) == cache_path(base)



def test_a_new_text_split_changes_a_text_teachers_key_only(base, monkeypatch):
    import featdistill.cli.teacher_key as teacher_key

    lm = load_recipe(RECIPE.parent / "lm_to_small_lm.py")
    image_key, text_key = cache_path(base), cache_path(lm)
    monkeypatch.setattr(teacher_key, "TEXT_SPLIT_VERSION", teacher_key.TEXT_SPLIT_VERSION + 1)
    assert cache_path(base) == image_key  # an image teacher never trained on a text split
    assert cache_path(lm) != text_key  # a teacher trained on another split is not reused
