"""Hugging Face causal LMs as recipe models (``hf:``): built from a config with no download, layer names as users
know them, vocabulary from the data, eager attention, save_pretrained folders, and errors that name the fix.
Tiny configs, CPU only; skipped when transformers is not installed (pip install -e ".[text]")."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from featdistill import Distiller, LogitKD, Pair
from featdistill.config import Data, Model, Recipe
from featdistill.data import make_text_datasets
from featdistill.distill import split_logits
from featdistill.errors import FeatdistillError
from featdistill.hf_models import kind
from featdistill.models import build_model, known_model, split_name
from featdistill.recipe import validate

pytest.importorskip("transformers")

GPT2 = Model("hf:gpt2", kwargs={"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 32})
LLAMA = Model("hf:llama", kwargs={"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2,
                                  "intermediate_size": 32, "max_position_embeddings": 32})


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"gpt2": build_model(GPT2, 257, 3), "llama": build_model(LLAMA, 257, 3)}


@pytest.mark.parametrize("kind_, layer", [("gpt2", "transformer.h.1"), ("llama", "model.layers.1")])
def test_config_models_build_with_data_vocab_and_eager_attention(models, kind_, layer):
    model = models[kind_]
    names = dict(model.named_modules())
    assert layer in names and layer.replace(".1", ".2") not in names  # two decoder layers, named as HF names them
    assert model.get_input_embeddings().num_embeddings == 257 and model.config.vocab_size == 257
    assert model.config._attn_implementation == "eager" and model.config.use_cache is False
    assert model.config.bos_token_id is None or model.config.bos_token_id < 257  # not GPT-2's 50256
    out = model(input_ids=torch.randint(0, 257, (2, 8)), attention_mask=torch.ones(2, 8, dtype=torch.int64))
    assert out.logits.shape == (2, 8, 257)
    task, kd = split_logits(out)  # a ModelOutput's .logits are what the Distiller reads
    assert task is out.logits and kd is out.logits


def test_kwargs_set_vocab_and_attention_and_bad_kwargs_name_the_fix():
    model = build_model(Model("hf:gpt2", kwargs={**GPT2.kwargs, "vocab_size": 300, "attn_implementation": "sdpa"}),
                        257, 3)
    assert model.config.vocab_size == 300 and model.config._attn_implementation == "sdpa"
    with pytest.raises(FeatdistillError, match="has 100 token embeddings but the data's tokenizer has 257 tokens"):
        build_model(Model("hf:gpt2", kwargs={**GPT2.kwargs, "vocab_size": 100}), 257, 3)
    with pytest.raises(FeatdistillError, match="no config field 'num_layers'. Did you mean 'n_layer'"):
        build_model(Model("hf:gpt2", kwargs={"num_layers": 2}), 257, 3)
    with pytest.raises(FeatdistillError, match=r"student 'hf:llama' cannot be built with kwargs .*not a multiple of"):
        build_model(Model("hf:llama", kwargs={"hidden_size": 30, "num_attention_heads": 4}), 257, 3, where="student")


def test_save_pretrained_folder_round_trip(models, tmp_path, monkeypatch):
    models["llama"].save_pretrained(tmp_path / "lm")
    assert known_model(f"hf:{tmp_path / 'lm'}") is None and kind(str(tmp_path / "lm")) == "dir"
    monkeypatch.chdir(tmp_path)
    for name in (f"hf:{tmp_path / 'lm'}", "hf:./lm"):
        loaded = build_model(Model(name), 257, 3)
        assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.config._attn_implementation == "eager"
        want, got = models["llama"].state_dict(), loaded.state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(FeatdistillError, match="has 257 token embeddings but the data's tokenizer has 300"):
        build_model(Model("hf:./lm"), 300, 3)


def test_names_and_their_errors(monkeypatch):
    assert split_name("hf:/data/run:3/lm") == ("hf", "/data/run:3/lm")  # a path may hold colons
    assert split_name("resnet18") == ("timm", "resnet18")
    assert (kind("gpt2"), kind("./lm"), kind("runs/lm"), kind("hub/openai-community/gpt2")) == (
        "type", "dir", "dir", "hub")
    assert known_model("hf:gpt2") is None and known_model("hf:hub/openai-community/gpt2") is None  # no download
    msg = known_model("hf:lama")
    assert "not a transformers model type" in msg and "'llama'" in msg and "hf:hub/ORG/NAME" in msg
    assert "has no causal-LM head" in known_model("hf:vit")
    msg = known_model("hf:openai-community/gpt2")
    assert "save_pretrained" in msg and "'hf:hub/openai-community/gpt2'" in msg
    assert "no folder with a config.json" in known_model("hf:./missing")
    assert "hf:NAME" in known_model("hff:gpt2")
    with pytest.raises(FeatdistillError, match="not a transformers model type"):
        build_model(Model("hf:lama"), 257, 3)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    assert 'pip install -e ".[text]"' in known_model("hf:gpt2")


def test_recipe_with_hf_models_and_text_data_validates():
    recipe = Recipe(teacher=LLAMA, student=GPT2, pairs=[Pair("transformer.h.1", "model.layers.1")],
                    data=Data(name="pydoc", block_size=16))
    assert validate(recipe) == []
    bad = Recipe(teacher=Model("hf:lama"), student=GPT2, data=Data(name="pydoc"))
    assert any(p.startswith("teacher.name: hf:lama") for p in validate(bad))


def test_text_labels_are_shifted_as_hf_shifts_them(models):
    """featdistill's labels[t] is the target of logits[t]; HF's labels= takes unshifted ids and shifts inside."""
    val = make_text_datasets(Data(name="pydoc", block_size=16)).val
    model = models["llama"].eval()
    item = val[0]
    with torch.no_grad():
        ours = F.cross_entropy(model(input_ids=item["input_ids"][None]).logits[0], item["labels"])
        chunk = val.tokens[:17][None]  # the same T + 1 stream tokens
        theirs = model(input_ids=chunk, labels=chunk).loss
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_distiller_runs_hf_teacher_and_student_on_text_blocks(models):
    ds = make_text_datasets(Data(name="pydoc", block_size=16))
    batch = ds.train.collate([ds.train[i] for i in range(3)])
    sample = {k: v for k, v in batch.items() if k != "labels"}
    with Distiller(models["llama"], models["gpt2"], [Pair("transformer.h.1", "model.layers.1")], kd=LogitKD(),
                   sample_input=sample) as distiller:
        out = distiller(batch)
        assert set(out) == {"task", "kd", "feat/transformer.h.1~model.layers.1", "loss"}
        assert out["task"].item() == pytest.approx(0.5 * torch.log(torch.tensor(257.0)).item(), rel=0.1)  # random
        out["loss"].backward()
    assert models["gpt2"].transformer.h[1].mlp.c_fc.weight.grad is not None
