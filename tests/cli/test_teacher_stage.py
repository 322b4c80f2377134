"""The teacher stage when things go wrong: a factory keyed by its code (an edited factory is never the old cached
teacher), a factory whose code cannot be read (trained, not cached), a damaged cache entry (moved aside, trained
again), a cache that cannot be written (the trained teacher is kept), a teacher stage that diverges (the error
names teacher.pretrain.*). Tiny CNNs on 8 px digits, one pretrain epoch of four steps."""

import dataclasses
import errno
from pathlib import Path

import pytest
import torch

import featdistill.cli.teacher as teacher_stage
from featdistill.cli.teacher import cache_dir, cache_path, prepare_teacher
from featdistill.data import make_loaders
from featdistill.errors import FeatdistillError
from featdistill.models import build_model, load_weights
from featdistill.recipe import apply_overrides, load_recipe
from featdistill.run import main

CPU = torch.device("cpu")
RECIPE = '''"""A tiny recipe for the teacher-stage tests."""
from torch import nn

from featdistill.data import Data
from featdistill.recipe import Model, Recipe, Train


def width():
    return 8


class Pool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def teacher(num_classes, in_chans):
    return nn.Sequential(nn.Conv2d(in_chans, width(), 3, padding=1), nn.ReLU(), Pool(), nn.Linear(width(), num_classes))


def student(num_classes, in_chans):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, num_classes))


class NaNs(nn.Module):
    def forward(self, x):
        return x * float("nan")


def broken(num_classes, in_chans):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, num_classes), NaNs())


recipe = Recipe(
    teacher=Model(teacher, pretrain=Train(epochs=1, batch_size=256, lr=1e-2)),
    student=Model(student),
    data=Data(name="digits", image_size=8, in_chans=1, augment=False),
    train=Train(epochs=1, batch_size=256),
)
'''


def write(tmp_path: Path, text: str = RECIPE, folder: str = "v0") -> Path:
    """Each version in its own folder (the same file name): the key depends on the code, not on where it lives."""
    path = tmp_path / folder / "recipe.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def recipe(tmp_path):
    return load_recipe(write(tmp_path))


def prepare(recipe, **kwargs):
    return prepare_teacher(recipe, make_loaders(recipe.data, recipe.train.batch_size), CPU, quiet=True, **kwargs)


def fresh(recipe):
    return build_model(recipe.teacher, 10, recipe.data.in_chans)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("old, new, changes", [
    ("nn.ReLU(), Pool()", "nn.Tanh(), Pool()", True),  # the factory's body
    ("    return 8\n", "    return 9\n", True),  # a helper function it calls
    ("return x.mean(dim=(2, 3))", "return x.amax(dim=(2, 3))", True),  # a method of a class it builds
    ('"""A tiny recipe for the teacher-stage tests."""', '"""Edited."""\nUNUSED = 3', False),  # elsewhere
    ("in_chans * 64, num_classes))\n\n\nclass", "in_chans * 64, num_classes), nn.ReLU())\n\n\nclass", False),
])
def test_the_factory_code_keys_the_cache(tmp_path, recipe, old, new, changes):
    assert old in RECIPE
    path = cache_path(recipe)
    assert path.name.startswith("factory-") and path.parent == cache_dir() / "teachers"
    assert cache_path(load_recipe(write(tmp_path, folder="again"))) == path  # loaded again, elsewhere: same key
    edited = load_recipe(write(tmp_path, RECIPE.replace(old, new, 1), folder="edited"))
    assert (cache_path(edited) != path) is changes


def test_an_unreadable_factory_is_trained_but_not_cached(recipe, cache, capsys):
    scope = {"nn": torch.nn}
    exec(compile("make = lambda num_classes, in_chans: nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))",
                 "<stdin>", "exec"), scope)  # as typed in a REPL: no file to read the source from
    typed = dataclasses.replace(recipe, teacher=dataclasses.replace(recipe.teacher, name=scope["make"]))
    assert cache_path(typed) is None
    teacher, source = prepare(typed)
    assert source.startswith("trained for this run only") and "cannot be read" in source
    torch.manual_seed(typed.teacher.pretrain.seed)
    assert not torch.equal(teacher[1].weight, fresh(typed)[1].weight)  # trained from its seeded start
    out = capsys.readouterr().out
    assert "cannot be cached because the source of <lambda> cannot be read" in out and "in a .py file" in out
    assert not cache.exists() or not any(cache.rglob("*"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shapes"])
def test_a_damaged_cache_entry_is_moved_aside_and_trained_again(recipe, cache, tmp_path, capsys, damage):
    path = cache_path(recipe)
    path.parent.mkdir(parents=True)
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "truncated":
        torch.save(fresh(recipe).state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # the conv fits (load_state_dict copies it in before it fails), the head does not
        state = {k: torch.full_like(v, 7.0) for k, v in fresh(recipe).state_dict().items()}
        state["3.weight"] = torch.zeros(3, 3)
        torch.save(state, path)
    original = path.read_bytes()
    (path.parent / f"{path.name}.damaged").write_bytes(b"an earlier one")  # never overwritten

    teacher, source = prepare(recipe)
    aside = path.parent / f"{path.name}.damaged.1"
    assert aside.read_bytes() == original and (path.parent / f"{path.name}.damaged").read_bytes() == b"an earlier one"
    out = capsys.readouterr().out
    assert f"the cached teacher {path} is damaged" in out and f"moved it to {aside}" in out
    assert source == f"trained and cached at {path}"
    reloaded = fresh(recipe)
    load_weights(reloaded, path)  # the cache holds a loadable file again
    assert same_weights(reloaded.state_dict(), teacher.state_dict())
    if damage == "wrong shapes":  # trained from a fresh start, as if the cache had been empty
        cache.rename(tmp_path / "old-cache")
        clean, _ = prepare(recipe)
        assert same_weights(clean.state_dict(), teacher.state_dict())
    _, source = prepare(recipe)
    assert source == f"cached {path}"


def no_space(obj, path):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failure", ["cache under a file", "disk full"])
def test_a_cache_that_cannot_be_written_keeps_the_trained_teacher(recipe, tmp_path, monkeypatch, capsys, failure):
    if failure == "disk full":
        monkeypatch.setattr(teacher_stage, "atomic_save", no_space)
        expected = "No space left on device"
    else:
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "a-file" / "cache"))
        expected = "Not a directory"
    teacher, source = prepare(recipe, fallback_dir=tmp_path / "run")
    kept = tmp_path / "run" / "teacher.pt"
    assert source.startswith("trained, not cached") and str(kept) in source
    out = capsys.readouterr().out
    assert "$FEATDISTILL_CACHE=" in out and expected in out and f"Kept it at {kept}" in out
    reloaded = fresh(recipe)
    load_weights(reloaded, kept)
    assert same_weights(reloaded.state_dict(), teacher.state_dict())
    assert not list((tmp_path / "run").glob(".*"))  # no temp file left


def test_when_the_fallback_fails_too_the_run_still_gets_its_teacher(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(teacher_stage, "atomic_save", no_space)
    (tmp_path / "a-file").write_text("")
    teacher, source = prepare(recipe, fallback_dir=tmp_path / "a-file" / "run")
    assert source.endswith("used for this run only") and isinstance(teacher, torch.nn.Module)
    out = capsys.readouterr().out
    assert "No space left on device" in out and "failed too" in out and "Not a directory" in out
    _, source = prepare(recipe)  # no fallback_dir given: returned all the same
    assert source == "trained, not cached (No space left on device); used for this run only"


@pytest.mark.parametrize("how", ["lr", "nan logits"])
def test_a_diverging_teacher_stage_names_the_pretrain_fields(tmp_path, recipe, how):
    if how == "lr":
        recipe = apply_overrides(recipe, ["teacher.pretrain.lr=1e30"])
        advice = "--set teacher.pretrain.lr=5e+29"
    else:
        recipe = load_recipe(write(tmp_path, RECIPE.replace("Model(teacher,", "Model(broken,"), folder="nan"))
        advice = "--set teacher.pretrain.lr=0.005"
    with pytest.raises(FeatdistillError) as info:
        prepare(recipe)
    message = str(info.value)
    assert message.startswith("the teacher stage diverged: the loss became ")
    assert advice in message and "teacher.pretrain.warmup_epochs" in message and "train.lr" not in \
        message.replace("teacher.pretrain.lr", "")
    assert not cache_dir().exists() or not any(cache_dir().rglob("*.pt"))


def test_the_cli_exits_2_when_the_teacher_stage_diverges(tmp_path, capsys):
    argv = [str(write(tmp_path)), "--set", "teacher.pretrain.lr=1e30", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the teacher stage diverged" in err and "teacher.pretrain.lr" in err and "Traceback" not in err
