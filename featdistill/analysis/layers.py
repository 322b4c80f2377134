"""Which layers to compare, and their features on one batch: candidate layers by default (stages or blocks), any
named ones on request, and exactly what each recipe pair reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..capture import FeatureHooks, TapSet, block_names, pair_taps, resolve_module
from ..config import Pair

__all__ = ["candidate_layers", "enclosing", "layer_features", "model_logits", "pair_features"]


def candidate_layers(model: nn.Module) -> list[str]:
    """The default layers to compare, shallow -> deep: the model's stages when its blocks sit in several
    containers (ResNet ``layer1.0``, ``layer1.1``, ``layer2.0``, ... -> ``layer1`` ... ``layer4``), else the blocks
    themselves (ViT / DeiT ``blocks.0`` ... ``blocks.11``, all in one ``blocks`` list). Blocks are found by
    :func:`featdistill.capture.block_names` (class names like ``*Block`` / ``*Bottleneck``, else the longest list
    of identical modules); raises its FeatdistillError when there are none."""
    blocks = block_names(model)
    parents = list(dict.fromkeys(name.rpartition(".")[0] for name in blocks))
    if len(parents) > 1 and all(parents):
        return parents
    return blocks


def enclosing(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate that is ``name`` or contains it (``blocks.1.attn`` -> ``blocks.1``), else None."""
    for c in candidates:
        if name == c or name.startswith(c + "."):
            return c
    return None


def marked_pairs(pairs: Sequence, student_layers: Sequence[str], teacher_layers: Sequence[str]
                 ) -> list[tuple[int, int, str]]:
    """Where each layer pair of ``pairs`` (``Pair`` objects, multi-layer ones level by level) falls on a CKA map of
    these candidate layers: ``(student row, teacher column, pair key)``; pairs outside every candidate are left out."""
    marked = []
    for p in pairs:
        for s_name, t_name in zip(p.layers("student"), p.layers("teacher")):
            i, j = enclosing(s_name, student_layers), enclosing(t_name, teacher_layers)
            if i is not None and j is not None:
                marked.append((list(student_layers).index(i), list(teacher_layers).index(j), p.key))
    return marked


def _call(model: nn.Module, x: Any) -> Any:
    return model(**x) if isinstance(x, dict) else model(x)


@torch.no_grad()
def layer_features(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: feature [N, ...]}`` of the named layers' outputs in one eval forward of ``x [N, ...]`` (the model's
    train/eval mode is restored after). Unknown names raise UnknownNameError with close matches."""
    for name in names:
        resolve_module(model, name)  # the error names close matches before any forward
    was_training = model.training
    with FeatureHooks(model, names, detach=True, clone=True) as hooks:
        try:
            _call(model.eval(), x)
        finally:
            model.train(was_training)
        return hooks.pop()


@torch.no_grad()
def pair_features(model: nn.Module, pairs: Sequence[Pair], side: str, x: torch.Tensor) -> list[torch.Tensor]:
    """One feature ``[N, ...]`` per layer the pairs read on ``side`` (``'student'`` / ``'teacher'``), captured as the
    pairs capture them (output, input, attention maps...), in pair order; a multi-layer pair adds one per level."""
    taps = TapSet(model, pair_taps(model, pairs, side), detach=True, side=side)
    was_training = model.training
    try:
        model.eval()
        _, feats = taps.run(lambda: _call(model, x))
    finally:
        model.train(was_training)
        taps.close()
    return feats


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``model``'s logits ``[N, K]`` float32 on images ``x [N, ...]`` in eval mode, ``chunk`` images per forward (the
    first output of a model that returns several, e.g. a distilled DeiT in training mode)."""
    model.eval()
    outs = []
    for i in range(0, x.shape[0], chunk):
        out = model(x[i:i + chunk])
        outs.append((out[0] if isinstance(out, (tuple, list)) else out).float())
    return torch.cat(outs)
