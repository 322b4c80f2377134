"""``teacher_cache`` from the command line: the first run records the teacher's outputs, a second run of the same
recipe and seed reuses them without running the teacher at all and trains the same student, a damaged cache is
moved aside and recorded again with a message, and a cache over its budget is refused before anything runs."""

import json
from pathlib import Path

import pytest

import featdistill.cli.run as run_module
from featdistill.run import main

ROOT = Path(__file__).resolve().parents[2]
VIT = str(ROOT / "recipes" / "vit_to_deit.py")
CACHED = [VIT, "--set", "train.epochs=1", "--set", "teacher.pretrain.epochs=1", "--set", "teacher_cache.views=1",
          "--quiet"]


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """The forwards of the teacher that is distilled from (not the dry-run copy) until training ends; the report
    after it (the teacher's latency, its soft targets on held-out data) is not counted."""
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    calls = []
    real = run_module.teacher_for_rank

    def counting(*args, **kwargs):
        teacher, source = real(*args, **kwargs)
        teacher.register_forward_hook(lambda *_: calls.append(1))
        return teacher, source

    def report(*args, **kwargs):
        calls.append("report")
        return real_finish(*args, **kwargs)

    real_finish = run_module.finish
    monkeypatch.setattr(run_module, "teacher_for_rank", counting)
    monkeypatch.setattr(run_module, "finish", report)
    return calls


def _until_report(calls: list) -> list:
    return calls[:calls.index("report")]


def _accuracy(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["student_accuracy"]


def test_a_warm_cache_never_runs_the_teacher_and_a_damaged_one_is_recorded_again(tmp_path, counted, capsys):
    assert main([*CACHED, "--out", str(tmp_path / "first")]) == 0
    assert "teacher outputs: recording 1 view(s)" in capsys.readouterr().out
    assert len(_until_report(counted)) > 0  # it recorded them (and measured the teacher's test accuracy)
    counted.clear()
    assert main([*CACHED, "--out", str(tmp_path / "second")]) == 0
    assert "teacher outputs: reusing the cache" in capsys.readouterr().out
    assert _until_report(counted) == []
    assert _accuracy(tmp_path / "second") == _accuracy(tmp_path / "first")
    first, second = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("first", "second"))
    assert first["teacher_accuracy"] == second["teacher_accuracy"] > 0  # recorded with the cache

    (store,) = (tmp_path / "cache" / "teacher_outputs").iterdir()
    target = store / "view0.pair0.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main([*CACHED, "--out", str(tmp_path / "third")]) == 0
    out = capsys.readouterr().out
    assert f"the cache {store} cannot be used" in out and "view0.pair0.npy changed after it was written" in out
    assert "teacher outputs: recording" in out
    assert (store.parent / f"{store.name}.damaged").is_dir() and (store / "meta.json").is_file()
    assert _accuracy(tmp_path / "third") == _accuracy(tmp_path / "first")


def test_a_cache_over_its_budget_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    assert main([VIT, "--dry-run", "--set", "teacher_cache.max_gb=0.001"]) == 2
    err = capsys.readouterr().err
    assert "would take 25.2 MB (4 views x 1,022 samples x 6,164 bytes" in err  # stored targets: [16, 96] per pair
    assert "over teacher_cache.max_gb=0.001" in err
    assert "teacher_cache.views" in err and "teacher_cache.top_k" in err
    assert main([VIT, "--dry-run", "--set", "teacher_cache.views=2"]) == 0
    assert "teacher outputs: cached, 2 view(s) x 1,022 samples" in capsys.readouterr().out
    assert main([VIT, "--dry-run", "--set", "teacher_cache.views=0"]) == 2
    assert "teacher_cache.views must be an integer >= 1" in capsys.readouterr().err
