"""Faults in the middle of a run: a signal mid-epoch, a signal before the first checkpoint, a full disk, a diverged
loss, an edited recipe, a cut-off metrics line, a damaged cached teacher. Each leaves a run that --resume finishes,
and a resumed run ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from featdistill.cli.teacher import cache_path
from featdistill.recipe import apply_overrides, load_recipe
from featdistill.run import main
from featdistill.train import Trainer

ROOT = Path(__file__).resolve().parents[2]
RESNET = str(ROOT / "recipes" / "resnet_to_resnet.py")
SETTINGS = ["--set", "teacher.pretrain.epochs=1", "--set", "train.epochs=2", "--quiet"]
TIMING = ("epoch_seconds", "images_per_s", "images_per_s_rank")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def signal_at(monkeypatch, desc: str, at: int, signum: int = signal.SIGTERM) -> None:
    """Deliver ``signum`` to this process during the ``at``-th training step (0-based) of the ``desc`` stage."""
    original, calls = Trainer.step, {"n": 0}

    def step(self, batch, position=(0, 0)):
        if self.desc == desc:
            if calls["n"] == at:
                os.kill(os.getpid(), signum)
            calls["n"] += 1
        return original(self, batch, position)

    monkeypatch.setattr(Trainer, "step", step)


def weights(run: Path) -> dict:
    return torch.load(run / "student.pt", weights_only=True)


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def uninterrupted(tmp_path):
    run = tmp_path / "full"
    assert main([RESNET, *SETTINGS, "--out", str(run)]) == 0
    return run


def same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert metrics(a) == metrics(b)


def test_sigterm_mid_epoch_checkpoints_there_and_resume_is_exact(uninterrupted, tmp_path, monkeypatch, capsys):
    run = tmp_path / "cut"
    signal_at(monkeypatch, "student", 5)  # epoch 1, batch 6 of 16: weight='auto' is still calibrating
    assert main([RESNET, *SETTINGS, "--out", str(run)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at epoch 1, batch 7" in err and f"--resume {run}" in err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["position"] == [0, 6]
    assert not (run / "student.pt").exists()
    monkeypatch.undo()
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    assert main(["--resume", str(run), "--quiet"]) == 0
    same_run(uninterrupted, run)


def test_a_signal_before_the_first_checkpoint_resumes_from_the_start(uninterrupted, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    shutil.rmtree(cache)  # so the teacher stage runs, and is stopped
    run = tmp_path / "cut"
    signal_at(monkeypatch, "teacher", 2, signal.SIGINT)
    assert main([RESNET, *SETTINGS, "--out", str(run)]) == 128 + signal.SIGINT
    assert "during the teacher stage; nothing was cached" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists() and not any(cache.rglob("*.pt"))
    monkeypatch.undo()
    monkeypatch.setenv("FEATDISTILL_CACHE", str(cache))
    assert main(["--resume", str(run), "--quiet"]) == 0
    assert "starting from the beginning" in capsys.readouterr().out
    same_run(uninterrupted, run)


def test_a_full_disk_is_exit_2_and_the_run_resumes(uninterrupted, tmp_path, monkeypatch, capsys):
    import featdistill.train.trainer as trainer_module

    def no_space(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    run = tmp_path / "cut"
    monkeypatch.setattr(trainer_module, "atomic_save", no_space)
    assert main([RESNET, *SETTINGS, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full writing" in err and "checkpoint.pt" in err and "Traceback" not in err
    monkeypatch.undo()  # space again
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    assert main(["--resume", str(run), "--quiet"]) == 0
    same_run(uninterrupted, run)


def test_a_diverged_run_names_the_term_and_resumes_with_a_lower_rate(tmp_path, capsys):
    run = tmp_path / "nan"
    assert main([RESNET, *SETTINGS, "--set", "train.lr=1e30", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "first non-finite term" in err and "It is governed by" in err
    assert f"--resume {run} --set train.lr=5e+29" in err
    assert main(["--resume", str(run), "--set", "train.lr=0.002", "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["overrides"][-1] == "train.lr=0.002"
    assert json.loads((run / "recipe.json").read_text())["train"]["lr"] == 0.002


def test_resume_uses_the_recipe_as_it_was_and_accepts_safe_changes(uninterrupted, tmp_path, capsys):
    recipe = tmp_path / "mine.py"
    recipe.write_text(Path(RESNET).read_text())
    run = tmp_path / "cut"
    assert main([str(recipe), *SETTINGS, "--out", str(run), "--stop-after", "1"]) == 0
    recipe.write_text(recipe.read_text().replace("resnet10t", "resnet18"))  # edited after the run started
    lines = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(lines + '{"kind": "step", "epo')  # a line cut off by a crash
    assert main(["--resume", str(run), "--quiet"]) == 0
    same_run(uninterrupted, run)


def test_a_damaged_cached_teacher_is_moved_aside_and_retrained(uninterrupted, cache, capsys):
    recipe = apply_overrides(load_recipe(RESNET), ["teacher.pretrain.epochs=1"])
    path = cache_path(recipe)
    path.write_bytes(path.read_bytes()[:100])  # cut off
    assert main([RESNET, *SETTINGS, "--out", str(uninterrupted.parent / "again")]) == 0
    out = capsys.readouterr().out
    assert "is damaged; moved it to" in out and path.with_name(path.name + ".damaged").exists()
    same_run(uninterrupted, uninterrupted.parent / "again")
