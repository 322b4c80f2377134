"""Hugging Face causal language models as recipe models: ``Model(name='hf:...')``.

Three forms of ``hf:NAME``, told apart by how NAME is written alone (not by what exists on disk or on the hub):

- ``hf:gpt2``, ``hf:llama``, any ``model_type`` with a causal-LM head in ``transformers``: built from a fresh config
  (``AutoConfig.for_model(type, **kwargs)`` + ``AutoModelForCausalLM.from_config``), random weights, no download.
  ``vocab_size`` is the recipe's ``num_classes`` (the tokenizer's vocabulary) unless kwargs set it.
- ``hf:./dir``, ``hf:/abs/dir``, ``hf:~/dir``, ``hf:runs/dir`` (a NAME with a path separator): a folder written by
  ``save_pretrained``, loaded with ``local_files_only=True``; kwargs override its config.
- ``hf:hub/ORG/NAME`` (e.g. ``hf:hub/openai-community/gpt2``): downloaded from the Hugging Face Hub, for users with
  the network; featdistill never downloads unless a name says ``hub/``.

Attention is ``'eager'`` unless kwargs set ``attn_implementation``, so attention probabilities can be captured
(fused SDPA/flash kernels never form them), and ``use_cache`` is False (distillation runs whole sequences; no
key/value cache to keep). The model maps ``input_ids [B, T]`` (+ ``attention_mask [B, T]``) to a ``ModelOutput``
whose ``logits`` are ``[B, T, vocab]``; its decoder layers are named as ``named_modules()`` gives them
(``transformer.h.3`` for GPT-2, ``model.layers.3`` for Llama) and each returns hidden states ``[B, T, C]``.
``transformers`` is imported only when an ``hf:`` name is used (``pip install -e ".[text]"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .errors import FeatdistillError, did_you_mean

HUB = "hub/"  # the prefix that allows a download
INSTALL = 'Hugging Face models need the transformers package: pip install -e ".[text]" (or pip install transformers)'


def _transformers():
    try:
        import transformers
    except ImportError:
        raise FeatdistillError(INSTALL) from None
    return transformers


def causal_lm_types() -> list[str]:
    """Every ``model_type`` that ``AutoModelForCausalLM`` can build (``'gpt2'``, ``'llama'``, ...)."""
    _transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def kind(name: str) -> str:
    """``'hub'``, ``'dir'`` or ``'type'``: how ``hf:NAME`` is built (see the module docstring)."""
    if name.startswith(HUB):
        return "hub"
    if name.startswith((".", "~")) or "/" in name or os.sep in name:
        return "dir"
    return "type"


def problem(name: str) -> str | None:
    """None when ``hf:NAME`` can be built here, else a message naming the fix. Reads only ``NAME/config.json``."""
    how = kind(name)
    if how == "hub":
        repo = name[len(HUB):]
        return None if repo.strip("/") else f"hf:{name} names no hub model; write hf:hub/ORG/NAME"
    if how == "dir":
        path = Path(name).expanduser()
        if (path / "config.json").is_file():
            return None
        hint = (f" To download {name!r} from the Hugging Face Hub write 'hf:{HUB}{name}'."
                if "/" in name and not name.startswith((".", "/", "~")) else "")
        return (f"hf:{name}: no folder with a config.json at {str(path)!r}; give a directory written by "
                f"model.save_pretrained(...), as hf:./DIR or hf:/abs/DIR.{hint}")
    try:
        types = causal_lm_types()
    except FeatdistillError as exc:
        return str(exc)
    if name in types:
        return None
    from transformers import CONFIG_MAPPING

    what = "has no causal-LM head" if name in CONFIG_MAPPING else "is not a transformers model type"
    return (f"hf:{name} {what}.{did_you_mean(name, types)} Model types build from a config with no download "
            f"(hf:gpt2, hf:llama); a saved folder is hf:./DIR; a hub model is hf:{HUB}ORG/NAME.")


def _fit_config(name: str, kwargs: dict[str, Any]) -> None:
    """Check ``kwargs`` against the config class of ``name`` (a misspelt field would be stored and ignored), and
    unset its default special-token ids that fall outside ``kwargs['vocab_size']`` (GPT-2's 50256 in 257 bytes)."""
    import dataclasses
    import inspect

    from transformers import CONFIG_MAPPING, PretrainedConfig

    cls = CONFIG_MAPPING[name]
    default = cls()
    fields = set(default.to_dict()) | set(getattr(cls, "attribute_map", {})) | {"output_attentions"}
    for init in (cls.__init__, PretrainedConfig.__init__):
        fields |= set(inspect.signature(init).parameters) - {"self", "args", "kwargs"}
    if dataclasses.is_dataclass(cls):
        fields |= {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise FeatdistillError(
            f"hf:{name} has no config field {unknown[0]!r}.{did_you_mean(unknown[0], fields)} Its fields are those of "
            f"transformers.{cls.__name__} (print {cls.__name__}()); fix the model's kwargs.")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(default, key, None)
        if key not in kwargs and isinstance(value, int) and value >= kwargs["vocab_size"]:
            kwargs[key] = None


def build(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """The causal LM ``hf:NAME`` names, for a vocabulary of ``num_classes`` tokens (see the module docstring).
    Raises FeatdistillError for a name that cannot be built; TypeError/ValueError from transformers for bad kwargs
    (``build_model`` reports those with the recipe's kwargs)."""
    found = problem(name)
    if found:
        raise FeatdistillError(found)
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(kwargs)
    kwargs.setdefault("use_cache", False)
    attn = kwargs.pop("attn_implementation", "eager")
    how = kind(name)
    if how == "type":
        kwargs.setdefault("vocab_size", num_classes)
        _fit_config(name, kwargs)
        try:
            config = AutoConfig.for_model(name, **kwargs)
        except (TypeError, ValueError):
            raise
        except Exception as exc:  # a strict-dataclass validation error (huggingface_hub): report its cause
            raise ValueError(str(exc.__cause__ or exc).rstrip(".")) from None
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    else:
        source = str(Path(name).expanduser()) if how == "dir" else name[len(HUB):]
        try:
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=how == "dir",
                                                         attn_implementation=attn, **kwargs)
        except OSError as exc:  # missing weights, no network, unknown repo
            fix = ("check the folder holds the files save_pretrained wrote" if how == "dir" else
                   "this needs the network; or save_pretrained it elsewhere, copy the folder here and use hf:./DIR")
            raise FeatdistillError(f"cannot load hf:{name}: {str(exc).splitlines()[0]}. Fix: {fix}.") from None
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < num_classes:
        raise FeatdistillError(
            f"hf:{name} has {vocab} token embeddings but the data's tokenizer has {num_classes} tokens; ids past "
            f"{vocab - 1} would index nothing. " + ("Drop vocab_size from the model's kwargs so it follows the data."
                                                    if how == "type" else "Set data.tokenizer to the tokenizer the "
                                                    "model was trained with."))
    return model
