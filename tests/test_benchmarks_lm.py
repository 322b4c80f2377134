"""compare_kd.py on language-model recipes: the LM modes and their overrides, bits per byte judged so that a win is
an improvement, the tables, and one tiny end-to-end run with the teacher's generated text."""

import argparse
import json
import sys
from pathlib import Path

import pytest
from tiny_lm import write_tiny_lm

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RECIPES = BENCH.parent / "recipes"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import compare_kd  # noqa: E402  (benchmarks/ is not a package)
import kd_tables  # noqa: E402
import lm_modes  # noqa: E402

pytest.importorskip("transformers")



@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))


def args(out: Path, modes=None, **kw) -> argparse.Namespace:
    return argparse.Namespace(modes=modes, variant=[], extra=[], out=out, synthetic_samples=lm_modes.SAMPLES, **kw)


def test_lm_recipe_gets_the_lm_modes_with_forward_kl_as_baseline(tmp_path):
    recipe = RECIPES / "lm_to_small_lm.py"
    modes = compare_kd.modes_for(recipe, args(tmp_path), None)
    assert list(modes) == ["alone", "forward_kl", "forward_kl+hidden", "reverse_kl", "jsd", "synthetic",
                           "synthetic+forward_kl"]
    assert modes["alone"] == ["kd=None", "pairs=[]"] and modes["forward_kl+hidden"] == []
    assert modes["jsd"] == ["kd.loss='jsd'", "pairs=[]"] and modes["reverse_kl"][0] == "kd.loss='reverse_kl'"
    root = modes["synthetic"][-1]
    assert modes["synthetic"][:2] == ["kd=None", "pairs=[]"] and modes["synthetic+forward_kl"] == ["pairs=[]", root]
    # the generated text is named by the recipe and its teacher's cache key: another teacher, another file
    key = compare_kd.cache_path(compare_kd.load_recipe(recipe)).stem
    assert root == f"data.train_root={str(tmp_path / 'synthetic' / f'lm_to_small_lm-{key}-n2000.jsonl')!r}"
    # asked modes of the recipe's kind, the baseline put first; image modes do not apply to a text recipe
    assert list(compare_kd.modes_for(recipe, args(tmp_path, ["alone", "logit", "synthetic"]), None)) == \
        ["forward_kl", "alone", "synthetic"]
    assert list(compare_kd.modes_for(RECIPES / "vit_to_deit.py", args(tmp_path, ["alone", "jsd"]), None)) == \
        ["logit", "alone"]
    assert RECIPES / "lm_synthetic.py" not in compare_kd.shipped_recipes()  # it is the synthetic mode, not a recipe
    with pytest.raises(SystemExit, match="lm_to_small_lm"):
        compare_kd.modes_for(RECIPES / "lm_synthetic.py", args(tmp_path), None)


def test_bits_per_byte_are_paired_as_baseline_minus_mode_and_tabled_apart_from_accuracy():
    def run(bpb):
        return {"student_bits_per_byte": bpb, "teacher_bits_per_byte": 3.0, "epoch_seconds": 1.0}

    table = compare_kd.tabulate({"forward_kl": [run(3.5), run(3.6), run(3.4)],
                                 "synthetic": [run(3.3), run(3.45), run(3.2)]}, lm_modes.BITS_PER_BYTE)
    row = table["modes"]["synthetic"]
    assert row["paired_diff_mean"] == pytest.approx(0.1833333) and row["verdict"] == "wins"  # lower bits/byte wins
    assert row["bits_per_byte_mean"] == pytest.approx((3.3 + 3.45 + 3.2) / 3) and table["baseline"] == "forward_kl"
    assert table["teacher_bits_per_byte"] == 3.0 and "verdict" not in table["modes"]["forward_kl"]
    image = compare_kd.tabulate({"logit": [{"student_accuracy": 0.9, "teacher_accuracy": 0.95, "epoch_seconds": 1}],
                                 "alone": [{"student_accuracy": 0.8, "teacher_accuracy": 0.95, "epoch_seconds": 1}]})
    meta = {"jobs": 1, "threads_per_job": 1, "seeds": [0], "date": "d", "machine": "m", "torch": "t", "command": "c"}
    text = kd_tables.markdown({"lm": table, "vit": image}, meta)
    assert "| lm | synthetic | 3.317 +- 0.126 | +0.183 [" in text and "| vit | alone | 80.00 +- 0.00 | -10.00 [" in text
    assert "forward KL - mode: + is better" in text and "| vit | teacher | 95.00 |" in text
    assert text.count("| recipe | mode |") == 2


def test_compare_kd_runs_an_lm_recipe_on_the_teachers_text(tmp_path):
    recipe = write_tiny_lm(tmp_path)
    out = tmp_path / "out"
    assert compare_kd.main([str(recipe), "--seeds", "1", "--modes", "synthetic", "--synthetic-samples", "8",
                            "--jobs", "1", "--out", str(out), "--tag", "lm"]) == 0
    saved = json.loads((out / "lm.json").read_text())
    result = saved["results"]["tiny_lm"]
    assert list(result["modes"]) == ["forward_kl", "synthetic"] and result["metric"] == "bits_per_byte"
    assert result["modes"]["synthetic"]["verdict"] == "one seed: no verdict"
    (path, sha), = saved["meta"]["synthetic_sha256"]["tiny_lm"].items()
    assert len(Path(path).read_text().splitlines()) == 8 and len(sha) == 64
    assert "test bits/byte (lower is better)" in (out / "lm.md").read_text() and (out / "lm.png").stat().st_size > 0


def test_convergence_curves_an_lm_recipe_in_bits_per_byte(tmp_path):
    import convergence

    recipe = write_tiny_lm(tmp_path)
    out = tmp_path / "out"
    assert convergence.main([str(recipe), "--epochs", "1", "2", "--seeds", "1", "--jobs", "1",
                             "--out", str(out), "--tag", "c"]) == 0
    result = json.loads((out / "c.json").read_text())["results"]["tiny_lm"]
    # the LM analogues of logit and both by default, judged in bits per byte (a byte-level LM starts near 8)
    assert list(result["modes"]) == ["forward_kl", "forward_kl+hidden"] and result["metric"] == "bits_per_byte"
    assert sorted(result["modes"]["forward_kl"]) == ["1", "2"] and 0 < result["teacher_bits_per_byte"] < 16
    table = (out / "c.md").read_text()
    assert "test bits/byte (lower is better)" in table and "| forward_kl |" in table
    with pytest.raises(SystemExit, match="language-model recipe; give some of: alone"):
        convergence.main([str(recipe), "--epochs", "1", "--modes", "logit", "both", "--out", str(out)])
