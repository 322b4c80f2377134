"""``featdistill.generate``: the teacher's continuations of training-split prompts as JSONL with a settings sidecar,
never overwritten; the text loader reads them back, and a recipe trains on them (``data.train_root``) while it is
tested on the real held-out text. Plus the sampling pieces by hand. CPU only, tiny models, no downloads."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from featdistill.cli.sampling import continuations, draw_prompts, prompt_starts, sample_loop, top_p_filter
from featdistill.cli.teacher import cache_path
from featdistill.data import make_text_datasets
from featdistill.data.text import EOD, pydoc_documents, read_documents
from featdistill.generate import main as generate
from featdistill.recipe import load_recipe
from featdistill.run import main as run

pytest.importorskip("transformers")
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

RECIPE = '''"""A tiny LM recipe for generate tests."""
from featdistill.data import Data
from featdistill.recipe import Model, Recipe, Train

TINY = dict(n_embd=32, n_head=2, n_positions=16)
recipe = Recipe(
    teacher=Model("hf:gpt2", kwargs=dict(TINY, n_layer=2), pretrain=Train(epochs=1, batch_size=16, lr=3e-3)),
    student=Model("hf:gpt2", kwargs=dict(TINY, n_layer=1)),
    pairs=[],
    kd=None,
    data=Data(name="text", root=ROOT, block_size=16, train_root=SYNTHETIC),
    train=Train(epochs=1, batch_size=16, lr=3e-3),
)
'''


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def recipe(tmp_path) -> Path:
    """A synthetic-data recipe over eight short real documents (about 8 KB); its train_root is not generated yet."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d[:1000]}) + "\n" for d in pydoc_documents()[:8]))
    path = tmp_path / "tiny_synthetic.py"
    path.write_text(RECIPE.replace("root=ROOT", f"root={str(corpus)!r}")
                    .replace("train_root=SYNTHETIC", f"train_root={str(tmp_path / 'syn' / 'teacher.jsonl')!r}"))
    return path


def test_generate_writes_train_prompts_and_settings_then_a_recipe_trains_on_them(recipe, tmp_path, capsys):
    out = tmp_path / "syn" / "teacher.jsonl"
    assert run([str(recipe), "--dry-run"]) == 2  # the text is not generated yet: the error names the command
    assert "python -m featdistill.generate" in capsys.readouterr().err

    argv = [str(recipe), "--samples", "6", "--prompt-tokens", "6", "--max-new-tokens", "10", "--quiet"]
    assert generate(argv) == 0  # --out defaults to the recipe's data.train_root
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6 and all(r["text"] == r["prompt"] + r["continuation"] for r in lines)
    real = load_recipe(recipe).data.for_teacher()
    splits = make_text_datasets(real)
    train = bytes(t for t in splits.train.tokens.tolist() if t != EOD).decode()
    assert all(len(r["prompt"].encode()) == 6 and r["prompt"] in train for r in lines)  # prompts: train split only
    meta = json.loads((tmp_path / "syn" / "teacher.jsonl.json").read_text())
    assert meta["settings"] == {"samples": 6, "prompt_tokens": 6, "max_new_tokens": 10, "temperature": 1.0,
                                "top_p": 0.95, "seed": 0, "batch_size": 64}
    assert meta["counts"]["samples"] == 6 and meta["counts"]["new_tokens"] <= 6 * 10
    assert meta["prompts_from"] == "train split"
    assert meta["teacher"]["weights"] == str(cache_path(load_recipe(recipe))) and len(meta["teacher"]["sha256"]) == 64
    assert "train_root" not in meta["data"] and meta["elapsed_seconds"] > 0
    assert "trained and cached" in meta["teacher"]["source"]

    before = out.read_bytes()
    assert generate(argv) == 2  # never over an existing file
    assert "already exist" in capsys.readouterr().err and out.read_bytes() == before
    assert generate(argv + ["--out", str(tmp_path / "again.jsonl")]) == 0  # the same seed, the same text
    assert (tmp_path / "again.jsonl").read_bytes() == before
    assert generate(argv + ["--out", str(tmp_path / "greedy.jsonl"), "--temperature", "0"]) == 0
    assert len((tmp_path / "greedy.jsonl").read_text().splitlines()) == 6

    # the loader reads it back: the generated documents are the training split; val/test stay the real text
    assert read_documents(out) == [r["text"] for r in lines]
    mixed = make_text_datasets(load_recipe(recipe).data)
    assert mixed.train.num_bytes == sum(len(r["text"].encode()) for r in lines)
    assert torch.equal(mixed.test.tokens, splits.test.tokens) and torch.equal(mixed.val.tokens, splits.val.tokens)

    run_dir = tmp_path / "run"
    assert run([str(recipe), "--out", str(run_dir), "--quiet"]) == 0
    assert "reusing the cached teacher" in capsys.readouterr().out  # the teacher never trains on generated text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert math.isfinite(summary["student_bits_per_byte"]) and summary["teacher_source"].startswith("cached")


def test_generate_refuses_bad_settings_and_image_recipes(recipe, tmp_path, capsys):
    assert generate([str(recipe), "--top-p", "0", "--temperature", "-1", "--prompt-tokens", "12",
                     "--max-new-tokens", "8"]) == 2
    err = capsys.readouterr().err
    assert "--top-p must be in (0, 1]" in err and "--temperature must be >= 0" in err and "data.block_size" in err
    assert generate([str(RECIPES / "vit_to_deit.py"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "not text" in capsys.readouterr().err
    assert generate([str(recipe), "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # all refused before any teacher was trained


def test_layers_of_a_synthetic_recipe_list_before_its_text_is_generated(recipe, capsys):
    assert run([str(recipe), "--list-layers", "student"]) == 0  # the vocabulary comes from the real text
    assert "transformer.h.0" in capsys.readouterr().out


def test_synthetic_recipe_shares_the_teacher_of_lm_to_small_lm():
    plain, synthetic = load_recipe(RECIPES / "lm_to_small_lm.py"), load_recipe(RECIPES / "lm_synthetic.py")
    assert cache_path(plain) == cache_path(synthetic) and synthetic.data.train_root
    assert synthetic.kd is None and synthetic.pairs == () and synthetic.student == plain.student
    assert replace(synthetic.data, train_root=None) == plain.data


def test_prompts_stay_inside_documents_and_on_character_boundaries():
    text = "ab\u00e9c"  # é is two bytes: 0xC3 0xA9
    tokens = torch.tensor([EOD, *text.encode(), EOD, *b"xyz", EOD])  # [EOD] a b C3 A9 c [EOD] x y z [EOD]
    starts = prompt_starts(tokens, 2, EOD, byte_tokens=True).tolist()
    # windows of two inside a document, none starting or ending inside the two-byte character
    assert starts == [1, 3, 7, 8]
    prompts = draw_prompts(tokens, 3, 2, EOD, True, seed=0)
    assert prompts.shape == (3, 2) and len({tuple(p) for p in prompts.tolist()}) == 3  # without replacement


def test_top_p_keeps_the_smallest_nucleus_and_sampling_stops_at_the_separator():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    kept = top_p_filter(logits, 0.8).isfinite().tolist()
    assert kept == [[False, True, True]]  # 0.6 + 0.3 reaches 0.8; the 0.1 token is cut
    assert top_p_filter(logits, 0.5).isfinite().tolist() == [[False, True, False]]
    assert top_p_filter(logits, 1.0).isfinite().all()

    class Fixed(nn.Module):  # always puts almost all mass on token 2, the separator here
        def forward(self, input_ids, attention_mask=None):
            out = torch.full((*input_ids.shape, 4), -20.0)
            out[..., 2] = 0.0
            return out

    new = sample_loop(Fixed(), torch.zeros(2, 3, dtype=torch.int64), 5, 1.0, 0.9, 2, 8, torch.Generator())
    assert new.tolist() == [[2], [2]]
    rows, ended = continuations(torch.tensor([[5, 6, 2, 2], [7, 8, 9, 1]]), 2)
    assert rows == [[5, 6], [7, 8, 9, 1]] and ended == 1
