"""Real 2-process CPU jobs (gloo) through ``torch.distributed.run``, as ``torchrun`` starts them: a run finishes
with one run directory, a run stopped and resumed under torchrun ends where a single process with the same global
batch ends, and a user error on one rank ends the whole job with exit code 2 instead of a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featdistill.run import main

ROOT = Path(__file__).resolve().parents[2]
VIT = str(ROOT / "recipes" / "vit_to_deit.py")  # BatchNorm-free and dropout-free: two processes can match one
# 1022 training images: a global batch of 256 is 4 steps per epoch, 128 per process (the last: 127 + 127 = 254)
SHRUNK = ["--set", "teacher.pretrain.epochs=1", "--set", "train.epochs=2", "--set", "train.batch_size=256", "--quiet"]


def torchrun(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=2 --standalone -m featdistill.run ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "featdistill.run", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def job_env(tmp: Path) -> dict:
    return {**os.environ, "FEATDISTILL_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "FEATDISTILL_DIST_TIMEOUT": "30"}


@pytest.fixture(scope="module")
def resumed_job(tmp_path_factory):
    """A 2-process run stopped after its first epoch (as a crash would), then resumed under torchrun."""
    tmp = tmp_path_factory.mktemp("torchrun")
    env, out = job_env(tmp), tmp / "runs" / "two"
    first = torchrun([VIT, *SHRUNK, "--out", str(out), "--stop-after", "1"], env)
    after_first = torch.load(out / "checkpoint.pt", weights_only=True)["position"] if first.returncode == 0 else None
    second = torchrun(["--resume", str(out), "--quiet"], env)
    return tmp, out, first, second, after_first


def test_a_torchrun_job_writes_one_run_directory_and_resumes(resumed_job):
    tmp, out, first, second, after_first = resumed_job
    assert first.returncode == 0, first.stdout + first.stderr
    assert after_first == [1, 0]  # the checkpoint after epoch 1
    assert f"continue with --resume {out}" in first.stdout
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming at epoch 2/2" in second.stdout
    assert [p.name for p in (tmp / "runs").iterdir()] == ["two"]  # only rank 0 made a run directory
    assert len(list(out.rglob("summary.json"))) == 1 and (out / "student.pt").is_file()
    assert second.stdout.count("student:") == 1  # one summary printed, by rank 0
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [0, 1]  # one writer, no duplicate lines
    # images/s: rank 0's own, and the sum of both ranks' measured rates (not rank 0's times two)
    assert all(0 < r["images_per_s_rank"] < r["images_per_s"] for r in epochs if r["kind"] == "epoch")
    assert len([r for r in epochs if r["kind"] == "step"]) == 8  # 4 global steps per epoch
    assert any(p.name.endswith(".pt") for p in (tmp / "cache").rglob("*"))  # rank 0 cached the teacher


def test_two_processes_match_one_with_the_same_global_batch(resumed_job, monkeypatch):
    tmp, out, *_ = resumed_job
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp / "cache"))  # the teacher the job trained and cached
    one = tmp / "one"
    assert main([VIT, *SHRUNK, "--out", str(one)]) == 0
    a = torch.load(one / "student.pt", weights_only=True)
    b = torch.load(out / "student.pt", weights_only=True)
    assert a.keys() == b.keys()
    flat_a = torch.cat([a[k].flatten() for k in a if a[k].is_floating_point()])
    flat_b = torch.cat([b[k].flatten() for k in a if a[k].is_floating_point()])
    # relative over all weights: a key bias of attention gets a zero gradient in exact arithmetic, so AdamW turns
    # rounding noise into updates of its own there; every other tensor agrees to about 1e-6 on its own
    assert ((flat_a - flat_b).norm() / flat_a.norm()).item() < 1e-5
    terms = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, out)]
    for r1, r2 in zip(*terms, strict=True):  # the averaged terms are the single process's, step by step
        assert r1["kind"] == r2["kind"] and r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)


FAILING = '''
import os

from torch import nn

from featdistill import LogitKD
from featdistill.data import Data
from featdistill.errors import FeatdistillError
from featdistill.recipe import Model, Recipe, Train


class Picky(nn.Module):
    """A linear classifier that refuses to train on rank 1: a problem only one process of the job meets."""

    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.fc = nn.Linear(in_chans * 8 * 8, num_classes)

    def forward(self, x):
        if self.training and x.shape[0] > 2 and os.environ.get("RANK") == "1":
            raise FeatdistillError("rank 1 refuses its batch")
        return self.fc(x.flatten(1))


def picky(num_classes=10, in_chans=3):
    return Picky(num_classes, in_chans)


recipe = Recipe(teacher=Model(picky), student=Model(picky), kd=LogitKD(), data=Data(image_size=8),
                train=Train(epochs=1, batch_size=32))
'''


def test_a_user_error_on_one_rank_ends_the_job_with_exit_2(tmp_path):
    recipe = tmp_path / "failing.py"
    recipe.write_text(FAILING)
    start = time.monotonic()
    job = torchrun([str(recipe), "--out", str(tmp_path / "run"), "--quiet"], job_env(tmp_path), timeout=120)
    seconds = time.monotonic() - start
    output = job.stdout + job.stderr
    assert job.returncode != 0, output  # torchrun itself exits 1 when a worker fails
    assert "error (rank 1 of 2): rank 1 refuses its batch" in output
    assert "exitcode  : 2" in output  # torchrun's report: the failed worker's own exit code
    assert "exitcode  : 1" not in output and "internal error" not in output  # rank 0 ends with rank 1's code 2
    assert f'File "{ROOT / "featdistill"}' not in output  # a message, not a traceback from featdistill's code
    assert seconds < 100, f"the job took {seconds:.0f} s to end"


def test_a_teacher_output_cache_is_recorded_once_and_reused_under_torchrun(resumed_job):
    """Rank 0 records the cache while the other waits, both train from it; a second job reuses it (every rank takes
    the same path through the collectives) and trains the same student."""
    tmp = resumed_job[0]  # its cache holds the trained teacher
    env, args = job_env(tmp), [VIT, *SHRUNK, "--set", "train.epochs=1", "--set", "teacher_cache.views=1"]
    first = torchrun([*args, "--out", str(tmp / "runs" / "cached1")], env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "teacher outputs: recording 1 view(s)" in first.stdout and first.stdout.count("recording") == 1
    second = torchrun([*args, "--out", str(tmp / "runs" / "cached2")], env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "teacher outputs: reusing the cache" in second.stdout and "recording" not in second.stdout
    accuracy = [json.loads((tmp / "runs" / r / "summary.json").read_text())["student_accuracy"]
                for r in ("cached1", "cached2")]
    assert accuracy[0] == accuracy[1]
    assert len(list((tmp / "cache" / "teacher_outputs").iterdir())) == 1  # one folder, no leftover temporary one
