"""The recipe's Distiller: its pairs completed with what only the runner knows (the training split's size for losses
with a per-sample memory bank)."""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch

from ..config import Pair, Recipe
from ..distill import Distiller
from ..errors import UnknownNameError
from ..losses import LOSSES, Loss


def _wants_num_samples(pair: Pair) -> bool:
    """Whether the pair's loss keeps a memory of every training sample (declares ``needs_index`` and takes
    ``num_samples``) and its ``loss_kwargs`` leave that number out."""
    if "num_samples" in pair.loss_kwargs:
        return False
    try:
        entry = LOSSES.get(pair.loss) if isinstance(pair.loss, str) else pair.loss
    except UnknownNameError:
        return False  # the Distiller reports it
    if isinstance(entry, Loss) or not getattr(entry, "needs_index", False):
        return False
    takes = [entry.build, entry] if isinstance(entry, type) else [entry]
    try:
        return any("num_samples" in inspect.signature(f).parameters for f in takes)
    except (TypeError, ValueError):
        return False


def build_distiller(recipe: Recipe, teacher, student, sample: torch.Tensor,
                    num_samples: int | None = None) -> Distiller:
    """The recipe's Distiller; a loss with a per-sample memory bank (``crd``) gets ``num_samples``, the size of the
    training split, unless the pair's ``loss_kwargs`` give it."""
    pairs = recipe.pairs
    if num_samples is not None and isinstance(pairs, (list, tuple)):
        pairs = [replace(p, loss_kwargs={**p.loss_kwargs, "num_samples": num_samples}) if _wants_num_samples(p)
                 else p for p in pairs]
    return Distiller(teacher, student, pairs, kd=recipe.kd, sample_input=sample,
                     label_smoothing=recipe.train.label_smoothing)
