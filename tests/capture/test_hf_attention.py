"""Hugging Face attention and hidden states read by hooks, model untouched: equal to the model's own
``output_attentions`` / ``output_hidden_states``. Tiny GPT-2 and Llama configs (MHA and grouped-query, rotary), CPU."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from featdistill import FeatureHooks, count_hooks
from featdistill.capture import TapSet, ValueRelation, attention_layer_names, attention_maps, make_tap
from featdistill.errors import CaptureError, FeatdistillError

transformers = pytest.importorskip("transformers")

VOCAB, T = 40, 7


def gpt2(attn: str = "eager", **kwargs):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=4, n_positions=16, vocab_size=VOCAB,
                                     bos_token_id=0, eos_token_id=0, **kwargs)
    return transformers.GPT2LMHeadModel._from_config(config, attn_implementation=attn).eval()


def llama(kv_heads: int = 4, attn: str = "eager"):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                                      num_key_value_heads=kv_heads, intermediate_size=32, vocab_size=VOCAB,
                                      max_position_embeddings=16, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM._from_config(config, attn_implementation=attn).eval()


MODELS = {"gpt2": (gpt2, "transformer.h.{}", "transformer.h.{}.attn", "transformer.ln_f"),
          "llama": (llama, "model.layers.{}", "model.layers.{}.self_attn", "model.norm"),
          "llama_gqa": (lambda **kw: llama(kv_heads=1, **kw), "model.layers.{}", "model.layers.{}.self_attn",
                        "model.norm")}


def batch() -> dict[str, torch.Tensor]:
    """Two sequences, the second right-padded after 4 tokens."""
    ids = torch.randint(1, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, T, dtype=torch.int64)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", list(MODELS))
def test_attention_and_hidden_states_equal_the_models_own(kind):
    build, block, attn, final_norm = MODELS[kind]
    model = build()
    inputs = batch()
    names = [attn.format(i) for i in range(2)]
    assert attention_layer_names(model) == names
    maps = attention_maps(model, names, inputs)
    assert count_hooks(model) == 0
    blocks = [block.format(i) for i in range(2)]
    with FeatureHooks(model, blocks) as hooks, torch.no_grad():
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
        hidden = hooks.pop()
    for i, name in enumerate(names):
        assert maps[name].shape == (2, 4, T, T)  # one map per query head, GQA included
        torch.testing.assert_close(maps[name], out.attentions[i].float(), atol=0, rtol=0)
    assert torch.all(maps[names[0]][1, :, :, 4:] == 0)  # padded keys carry no probability
    # hidden_states[0] is the embeddings, [i + 1] layer i's output, except the last: the final norm is applied
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(hidden[blocks[0]], out.hidden_states[1], atol=0, rtol=0)
    assert not torch.allclose(hidden[blocks[1]], out.hidden_states[2])
    with torch.no_grad():
        torch.testing.assert_close(model.get_submodule(final_norm)(hidden[blocks[1]]), out.hidden_states[2])


def _causal_relation(v: torch.Tensor) -> torch.Tensor:
    """Per head, by a loop: softmax over keys j <= i of v_i . v_j / sqrt(d). ``v``: [B, H, T, D]."""
    b, h, t, d = v.shape
    out = torch.zeros(b, h, t, t)
    for i in range(t):
        scores = v[:, :, i:i + 1] @ v[:, :, : i + 1].transpose(-2, -1) / math.sqrt(d)
        out[:, :, i, : i + 1] = torch.softmax(scores[:, :, 0], dim=-1)
    return out


@pytest.mark.parametrize("kind", list(MODELS))
def test_value_relations_follow_the_plain_formula(kind):
    build, _, attn, _ = MODELS[kind]
    model = build()
    inputs = batch()
    name = attn.format(1)
    module = model.get_submodule(name)
    proj = name + (".c_attn" if kind == "gpt2" else ".v_proj")
    with FeatureHooks(model, [proj], capture="input") as hooks, torch.no_grad():
        model(**inputs)
        x = hooks.pop()[proj]  # the attention's input hidden states [B, T, C]
    if kind == "gpt2":  # Conv1D: x @ W + b, values are the last third
        v = (x @ module.c_attn.weight + module.c_attn.bias)[..., 32:]
    else:
        v = F.linear(x, module.v_proj.weight)
    heads = 1 if kind == "llama_gqa" else 4  # grouped-query: one relation per key/value head
    expected = _causal_relation(v.reshape(2, T, heads, 4).transpose(1, 2))
    got = attention_maps(model, [name], inputs, kind="value_relation")[name]
    assert got.shape == (2, heads, T, T)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    tap = make_tap(model, name, "value_relation")
    assert tap.layer == proj and isinstance(tap.select, ValueRelation)
    select = tap.select
    clone = pickle.loads(pickle.dumps(select))
    assert repr(clone) == repr(select)


def test_sdpa_gives_an_error_naming_eager_and_value_relations_still_work():
    eager, sdpa = llama(attn="eager"), llama(attn="sdpa")
    inputs = batch()
    with pytest.raises(CaptureError, match=r"attn_implementation='sdpa'.* attn_implementation='eager'"):
        attention_maps(sdpa, ["model.layers.0.self_attn"], inputs)
    assert count_hooks(sdpa) == 0
    name = "model.layers.1.self_attn"
    torch.testing.assert_close(attention_maps(sdpa, [name], inputs, kind="value_relation")[name],
                               attention_maps(eager, [name], inputs, kind="value_relation")[name])


def test_taps_read_maps_with_gradients_and_wrong_modules_name_the_fix():
    model = gpt2(attn_pdrop=0.0)
    inputs = batch()
    taps = TapSet(model, [make_tap(model, "transformer.h.1.attn", "attention")], detach=False)
    out, (maps,) = taps.run(lambda: model(**inputs))
    maps.sum().backward()  # the student's maps train its attention
    assert model.transformer.h[1].attn.c_attn.weight.grad is not None
    taps.close()
    assert count_hooks(model) == 0
    with pytest.raises(FeatdistillError, match=r"GPT2Block is not a fused-qkv.*'transformer.h.3.attn'"):
        make_tap(model, "transformer.h.1", "attention")


def test_attention_dropout_in_training_warns_once():
    model = gpt2(attn_pdrop=0.1).train()
    taps = TapSet(model, [make_tap(model, "transformer.h.0.attn", "attention")], detach=False)
    with pytest.warns(RuntimeWarning, match="attn_pdrop=0"):
        taps.run(lambda: model(**batch()))
    taps.close()
