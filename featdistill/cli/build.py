"""The recipe's Distiller: its pairs completed with what only the runner knows (the training split's size for losses
with a per-sample memory bank, the fixed batch of training inputs ``pairs='cka'`` measures CKA on)."""

from __future__ import annotations

import copy
import inspect
from dataclasses import replace
from typing import Any

import torch

from ..config import AutoPairs, Pair, Recipe
from ..data import Batch
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


CKA_SAMPLES = 256  # the fixed batch pairs='cka' measures on (inspect's default --batch)


def pairing_input(recipe: Recipe, loaders, device: torch.device, samples: int = CKA_SAMPLES) -> Any:
    """For ``pairs='cka'``: a fixed batch of up to ``samples`` training inputs (``[N, C, S, S]``, or a dict of token
    tensors ``[N, T]``), not augmented, drawn with the recipe's seed from the whole training split (every rank of a
    torchrun job draws the same), on ``device``. None for any other pairs."""
    if not (isinstance(recipe.pairs, AutoPairs) and recipe.pairs.by == "cka"):
        return None
    dataset = copy.copy(loaders.train.dataset)  # the plain images: the pairing must not depend on augmentation
    if getattr(dataset, "augment", None) is not None:
        dataset.augment = None
    n = min(samples, len(dataset))
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(recipe.train.seed))[:n]
    raw = loaders.train.collate_fn([dataset[int(i)] for i in pick.sort().values])
    return Batch.of(raw).to(device).inputs


def cka_dry_run_note(recipe: Recipe) -> str | None:
    """What a dry run of ``pairs='cka'`` says when the teacher trains first: the dry run measures the untrained one."""
    if isinstance(recipe.pairs, AutoPairs) and recipe.pairs.by == "cka" and recipe.teacher.pretrain is not None:
        return ("pairs='cka': measured below on the teacher before its training stage; the run measures again on "
                "the trained teacher")
    return None


def build_distiller(recipe: Recipe, teacher, student, sample: torch.Tensor,
                    num_samples: int | None = None, pairing: Any = None) -> Distiller:
    """The recipe's Distiller; a loss with a per-sample memory bank (``crd``) gets ``num_samples``, the size of the
    training split, unless the pair's ``loss_kwargs`` give it. ``pairing``: the batch of :func:`pairing_input`."""
    pairs = recipe.pairs
    if num_samples is not None and isinstance(pairs, (list, tuple)):
        pairs = [replace(p, loss_kwargs={**p.loss_kwargs, "num_samples": num_samples}) if _wants_num_samples(p)
                 else p for p in pairs]
    return Distiller(teacher, student, pairs, kd=recipe.kd, sample_input=sample,
                     label_smoothing=recipe.train.label_smoothing, pairing_input=pairing)
