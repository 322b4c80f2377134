"""The CLI end to end on the embedded digits data: outputs, resume, dry runs, errors (exit 2)."""

import json
from pathlib import Path

import pytest
import torch

from featdistill.models import build_model
from featdistill.recipe import apply_overrides, load_recipe
from featdistill.run import main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.py"))
VIT = str(ROOT / "recipes" / "vit_to_deit.py")
TINY = ["--set", "train.epochs=1", "--set", "teacher.pretrain.epochs=1", "--quiet"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_passes_dry_run(path, capsys):
    # a recipe that trains on text its teacher writes (lm_synthetic.py) is checked on the real text: the generated
    # file does not exist on a fresh machine (tests/cli/test_generate.py checks the message that says how to make it)
    recipe = load_recipe(path)
    generated = recipe.data.train_root is not None
    assert main([str(path), "--dry-run", *(["--set", "data.train_root=None"] if generated else [])]) == 0
    out = capsys.readouterr().out
    assert "adapters:" in out and "loss = " in out and "params" in out
    assert (" -> " in out) == bool(recipe.pairs)  # each pair's line: student layer -> teacher layer


def test_list_layers_prints_names_and_shapes(capsys):
    assert main([VIT, "--list-layers", "student"]) == 0
    out = capsys.readouterr().out
    assert "blocks.2" in out and "[2, 18, 64]" in out


def test_one_epoch_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([VIT, *TINY, "--out", str(out)]) == 0
    for name in ("run.json", "recipe.json", "checkpoint.pt", "metrics.jsonl", "summary.json", "student.pt",
                 "curves.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("teacher_accuracy", "student_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["student_params"] < summary["teacher_params"] and summary["student_latency_ms"] > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"step", "epoch"}
    assert {"loss", "task", "kd", "feat/blocks.1~blocks.1", "lr"} <= set(records[0])
    epoch = next(r for r in records if r["kind"] == "epoch")
    assert epoch["images_per_s"] == epoch["images_per_s_rank"] > 0  # one process: the total is its own rate
    assert json.loads((out / "recipe.json").read_text())["train"]["epochs"] == 1
    printed = capsys.readouterr().out
    assert "of the teacher's accuracy at" in printed and ("faster" in printed or "slower" in printed)
    # the exported student loads into a freshly built student
    recipe = apply_overrides(load_recipe(VIT), ["train.epochs=1"])
    fresh = build_model(recipe.student, 10, 3)
    fresh.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    # a second run reuses the cached teacher
    assert main([VIT, *TINY, "--out", str(tmp_path / "again")]) == 0
    assert "reusing the cached teacher" in capsys.readouterr().out
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["teacher_source"].startswith("cached")


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    two = ["--set", "train.epochs=2", "--set", "teacher.pretrain.epochs=1", "--quiet"]
    assert main([VIT, *two, "--out", str(tmp_path / "full")]) == 0
    assert main([VIT, *two, "--out", str(tmp_path / "cut"), "--stop-after", "1"]) == 0
    assert not (tmp_path / "cut" / "student.pt").exists()
    assert main(["--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    full = torch.load(tmp_path / "full" / "student.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "student.pt", weights_only=True)
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    history = [json.loads((tmp_path / d / "summary.json").read_text())["val_accuracy_history"] for d in ("full", "cut")]
    assert len(history[0]) == 2 and history[0] == history[1]
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(epochs) and epochs.count(0) == epochs.count(1)


def write(tmp_path, text, name="r.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEADER = "from featdistill import *\nfrom featdistill.recipe import *\nfrom featdistill.data import Data\n"


@pytest.mark.parametrize("argv, expected", [
    (["missing.py"], "does not exist"),
    ([VIT, "--set", "train.epoch=3"], "unknown key 'epoch'"),
    ([VIT, "--set", "kd.temperature=-1", "--set", "kd.alpha=2"], "temperature must be > 0"),
    ([VIT, "--set", "pairs.0.loss='mse2'"], "unknown loss 'mse2'"),
    ([VIT, "--set", "pairs.0.teacher='blocks.7'", "--dry-run"], "layer 'blocks.7' not found in VisionTransformer"),
    ([VIT, "--set", "data.name='cifar10'", "--set", "data.root='/nonexistent'", "--dry-run"], "cifar"),
    ([VIT, "--set", "teacher.checkpoint='/no/such.pt'"], "checkpoint '/no/such.pt' does not exist"),
    (["--resume", "/nonexistent-run"], "no run.json there"),
    ([], "give a recipe file"),
])
def test_bad_input_exits_2_with_a_message(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_recipe_file_problems_exit_2(tmp_path, capsys):
    assert main([write(tmp_path, HEADER + "recipe = Recipe(\n")]) == 2
    assert "syntax error" in capsys.readouterr().err
    assert main([write(tmp_path, HEADER + "teacher = 1\n")]) == 2
    assert "must define a module-level `recipe" in capsys.readouterr().err
    assert main(["--set", "x", VIT]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main([VIT, "--device", "tpu"]) == 2


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main([VIT, *TINY, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_bad_checkpoint_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "teacher.pt"
    bad.write_text("not a checkpoint")
    assert main([VIT, "--set", f"teacher.checkpoint='{bad}'", "--set", "teacher.pretrain=None", "--dry-run"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_trained_teacher_depends_only_on_its_cache_key(tmp_path, monkeypatch):
    """Neither the caller's RNG state nor the student's seed and batch size may change the cached teacher:
    otherwise the file under one key would depend on which run happened to train it first."""
    from featdistill.cli.teacher import prepare_teacher
    from featdistill.data import make_loaders

    base = apply_overrides(load_recipe(ROOT / "recipes" / "resnet_to_resnet.py"),
                           ["teacher.pretrain.epochs=1", "data.image_size=16"])
    states = []
    for i, student_settings in enumerate((["train.seed=0"], ["train.seed=3", "train.batch_size=16"])):
        monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / f"cache{i}"))
        recipe = apply_overrides(base, student_settings)
        torch.manual_seed(100 + i)
        loaders = make_loaders(recipe.data, recipe.train.batch_size, seed=recipe.train.seed)
        teacher, source = prepare_teacher(recipe, loaders, torch.device("cpu"), quiet=True)
        assert source.startswith("trained")
        states.append(teacher.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
