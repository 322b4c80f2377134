"""The CLI on a causal language model: a tiny GPT-2 teacher and student on a small text corpus, end to end (teacher
stage and its cache, distillation with a hidden-state pair, held-out bits per byte, the summary and its sample),
the dry run, --list-layers, and the LM evaluation checked by hand on padded blocks. CPU only, no downloads."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_lm import write_tiny_lm
from torch.utils.data import DataLoader

from featdistill.config import Data
from featdistill.data import TextBlocks, make_text_datasets
from featdistill.data.text import EOD
from featdistill.hf_models import build
from featdistill.run import main
from featdistill.train import evaluate_lm

pytest.importorskip("transformers")



@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def recipe(tmp_path) -> str:
    """A recipe file over eight short documents of real prose (about 8 KB): a run takes seconds."""
    return str(write_tiny_lm(tmp_path))


def test_lm_run_end_to_end_reports_bits_per_byte_and_reuses_the_teacher(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([recipe, "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("student_bits_per_byte", "teacher_bits_per_byte", "student_perplexity", "teacher_perplexity"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["bits_per_byte_ratio"] == pytest.approx(summary["student_bits_per_byte"]
                                                           / summary["teacher_bits_per_byte"])
    assert summary["student_params"] < summary["teacher_params"] and summary["student_latency_ms"] > 0
    assert summary["teacher_source"].startswith("trained and cached")
    sample = summary["sample"]
    assert sample["prompt"] and isinstance(sample["teacher"], str) and isinstance(sample["student"], str)
    epochs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert {"val_loss", "val_bits_per_byte", "val_accuracy"} <= set(epochs[0])
    assert "feat/transformer.h.0~transformer.h.1" in epochs[0]
    printed = capsys.readouterr().out
    assert "bits/byte on the test text" in printed and "of the teacher's (" in printed and "prompt:" in printed
    assert (out / "curves.png").is_file() and (out / "student.pt").is_file()

    assert main([recipe, "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert "reusing the cached teacher" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["teacher_bits_per_byte"] == pytest.approx(summary["teacher_bits_per_byte"])


def test_dry_run_prints_the_hidden_state_pair(recipe, capsys):
    assert main([recipe, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "blocks of 16 tokens, a vocabulary of 257" in out
    assert "transformer.h.0 [16, 32] -> " in out and "-> transformer.h.1 [16, 32]" in out
    assert "KL(t||s; T=1)" in out and "per token" in out


def test_list_layers_names_the_decoder_blocks(recipe, capsys):
    assert main([recipe, "--list-layers", "student"]) == 0
    out = capsys.readouterr().out
    assert "transformer.h.0 " in out and "GPT2Block [2, 16, 32]" in out and "transformer.h.1 " not in out


def test_padded_evaluation_equals_a_hand_computation():
    """Bits per byte over padded val blocks (batches of 3, the last block padded) equal the NLL of every block run
    alone without its padding, summed by hand."""
    torch.manual_seed(0)
    model = build("gpt2", 257, dict(n_layer=1, n_embd=16, n_head=2, n_positions=32)).eval()
    tokens = make_text_datasets(Data(name="pydoc", block_size=32)).val.tokens[:200]
    val = TextBlocks(tokens, block_size=32, num_bytes=180, pad_id=EOD)  # 7 blocks, the last one part padding
    assert len(val) == 7 and int(val[6]["attention_mask"].sum()) == 199 - 6 * 32
    got = evaluate_lm(model, DataLoader(val, batch_size=3, collate_fn=val.collate), torch.device("cpu"))
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            n = int(item["attention_mask"].sum())
            logits = model(input_ids=item["input_ids"][None, :n]).logits[0]
            nll += F.cross_entropy(logits, item["labels"][:n], reduction="sum").item()
            count += n
    assert count == 199
    assert got["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / val.num_bytes, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
