"""DistilBERT / TinyBERT / MiniLM terms between Hugging Face causal LMs: a Llama teacher (4 layers, 4 heads, 2 key/value
heads, width 32) and a GPT-2 student (2 layers, 2 heads, width 16). Hidden states through linear adapters, attention
across head counts, and the same per-token loss for a padded batch as for its sequences alone. Tiny, CPU only."""

from __future__ import annotations

import pytest
import torch

from featdistill import Distiller, Pair

transformers = pytest.importorskip("transformers")

VOCAB, T, LENGTHS = 40, 7, (7, 4)
PAIRS = [
    Pair("transformer.h.1", "model.layers.3", loss="mse", name="hidden"),  # FitNets / TinyBERT hidden states
    Pair("transformer.h.0", "model.layers.1", loss="cosine", name="cosine"),  # DistilBERT
    Pair("transformer.h.1.attn", "model.layers.3.self_attn", capture="attention", loss="attention_kl",
         name="attn"),  # MiniLM attention distributions
    Pair("transformer.h.1.attn", "model.layers.3.self_attn", capture="value_relation", loss="value_relation_kl",
         name="values"),  # MiniLM value relations
    Pair("transformer.h.0.attn", "model.layers.1.self_attn", capture="attention", loss="attention_mse",
         name="tinybert"),  # TinyBERT attention MSE
]


def models():
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(
        num_hidden_layers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=0), attn_implementation="eager")
    student = transformers.GPT2LMHeadModel._from_config(transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, n_positions=16, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
        attn_pdrop=0.0), attn_implementation="eager")
    return teacher, student


def padded(seqs: list[torch.Tensor], side: str) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(seqs), T, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        at = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[i, at], mask[i, at] = s, 1
    # positions count real tokens, so a left-padded sequence sees the positions it has alone
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp_min(0)}


def test_plan_shows_adapters_heads_and_capture():
    teacher, student = models()
    sample = padded([torch.arange(1, 8)], "right")
    with Distiller(teacher, student, PAIRS, kd=None, sample_input=sample) as distiller:
        plan = distiller.plan()
        print(plan)
        lines = {p.pair.key: p.line() for p in distiller.planned}
        assert "transformer.h.1 [7, 16] -> LastDim (544 params) -> model.layers.3 [7, 32]  loss=mse" in lines["hidden"]
        assert ("transformer.h.1.attn [2, 7, 7] -> AttentionAdapter (8 params) -> model.layers.3.self_attn [4, 7, 7]"
                "  loss=attention_kl weight=1 capture=attention") in lines["attn"]
        assert "[2, 7, 7] -> Identity (0 params) -> model.layers.3.self_attn [2, 7, 7]" in lines["values"]  # KV heads
        assert "capture=value_relation" in lines["values"]
        out = distiller(padded([torch.arange(1, 8)], "right"))
        out["loss"].backward()
        assert student.transformer.h[1].attn.c_attn.weight.grad is not None
        assert distiller.adapters[2].mix.grad is not None  # student heads mixed onto teacher heads, learned


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_gives_the_per_token_loss_of_its_sequences(side):
    teacher, student = models()
    seqs = [torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(n)) for n in LENGTHS]
    with Distiller(teacher, student, PAIRS, kd=None, sample_input=padded(seqs, side)) as distiller, torch.no_grad():
        distiller.eval()
        together = distiller(padded(seqs, side))
        alone = [distiller({"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.int64)})
                 for s in seqs]
        for pair in PAIRS:
            key = f"feat/{pair.name}"
            expected = sum(n * a[key] for n, a in zip(LENGTHS, alone)) / sum(LENGTHS)  # each real token once
            assert torch.isfinite(together[key])
            torch.testing.assert_close(together[key], expected, atol=1e-6, rtol=1e-4, msg=key)
        same = Distiller(teacher, teacher, [Pair("model.layers.2", "model.layers.2", loss="cosine"),
                                            Pair("model.layers.2.self_attn", "model.layers.2.self_attn",
                                                 capture="attention", loss="attention_kl")],
                         kd=None, sample_input=padded(seqs, side))
        zero = same(padded(seqs, side))
        same.close()
        assert all(abs(v.item()) < 1e-6 for k, v in zero.items() if k.startswith("feat/"))
