"""Building models from recipe specs: timm, torchvision or Hugging Face (``hf:``, see :mod:`.hf_models`) names, or
factories; checkpoints; sizes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import hf_models
from .errors import FeatdistillError, did_you_mean


@functools.lru_cache(maxsize=1)
def _names() -> tuple[frozenset, frozenset]:
    import timm
    import torchvision

    return frozenset(timm.list_models()), frozenset(torchvision.models.list_models())


def split_name(name: str) -> tuple[str, str]:
    """``'torchvision:resnet18' -> ('torchvision', 'resnet18')``; a bare name is timm's; ``'hf:'`` takes the
    rest whole (a path may hold colons): ``'hf:./runs/lm' -> ('hf', './runs/lm')``."""
    if name.startswith("hf:"):
        return "hf", name[3:]
    source, _, model = name.rpartition(":")
    return (source or "timm"), model


def known_model(name: str) -> str | None:
    """None when ``name`` can be built, else a message with close matches."""
    source, model = split_name(name)
    if source == "hf":
        return hf_models.problem(model)
    if source not in ("timm", "torchvision"):
        return f"unknown model source {source!r}: use 'timm:NAME', 'torchvision:NAME', 'hf:NAME' or a factory"
    timm_names, tv_names = _names()
    if source == "timm":
        return None if model in timm_names else (
            f"timm has no model {model!r}.{did_you_mean(model, timm_names)} List them with timm.list_models('*vit*').")
    return None if model in tv_names else (
        f"torchvision has no model {model!r}.{did_you_mean(model, tv_names)} "
        "List them with torchvision.models.list_models().")


def build_model(spec: Any, num_classes: int, in_chans: int, where: str = "model") -> nn.Module:
    """Build ``spec`` (a ``config.Model``) for ``num_classes`` outputs on ``in_chans``-channel input and
    load its checkpoint, if any. A constructor that rejects the settings is a FeatdistillError naming ``where``
    (``'teacher'`` / ``'student'``) and the kwargs."""
    kwargs = dict(spec.kwargs)
    name = spec.name if isinstance(spec.name, str) else getattr(spec.name, "__qualname__", repr(spec.name))
    try:
        model = _construct(spec.name, num_classes, in_chans, kwargs)
    except FeatdistillError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise FeatdistillError(
            f"{where} {name!r} cannot be built with kwargs {spec.kwargs} (num_classes={num_classes}, "
            f"in_chans={in_chans}): {type(exc).__name__}: {exc}. Fix {where}.kwargs.") from None
    if spec.checkpoint:
        load_weights(model, spec.checkpoint)
    return model


def _construct(name: Any, num_classes: int, in_chans: int, kwargs: dict) -> nn.Module:
    if callable(name):
        return name(num_classes=num_classes, in_chans=in_chans, **kwargs)
    source, model = split_name(name)
    if source == "hf":  # a causal LM over num_classes tokens; in_chans means nothing for text
        return hf_models.build(model, num_classes, kwargs)
    if source == "timm":
        import timm

        kwargs.setdefault("pretrained", False)
        return timm.create_model(model, num_classes=num_classes, in_chans=in_chans, **kwargs)
    import torchvision

    if in_chans != 3:
        raise FeatdistillError(f"torchvision model {model!r} expects 3-channel input; set data.in_chans=3")
    return torchvision.models.get_model(model, num_classes=num_classes, **kwargs)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``state_dict`` (or a dict holding one under ``'state_dict'`` / ``'model'``) safely."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatdistillError(f"cannot read checkpoint {str(path)!r}: {exc}. It must be a torch.save()d "
                               "state_dict (loaded with weights_only=True).") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise FeatdistillError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: "
                               f"{' '.join(first)}. Check the model name and kwargs it was saved with.") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
