"""The teacher stage: load a checkpoint, or train the teacher on the task once and cache it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Recipe
from ..data import Batch, make_loaders
from ..models import build_model, load_weights
from ..recipe import to_dict
from ..train import Trainer, atomic_save


def cache_dir() -> Path:
    """``$FEATDISTILL_CACHE`` or ``~/.cache/featdistill``."""
    return Path(os.environ.get("FEATDISTILL_CACHE", Path.home() / ".cache" / "featdistill"))


def cache_path(recipe: Recipe) -> Path:
    """The cached teacher's file, keyed by the teacher spec (with its training settings and seed) and the data."""
    key = json.dumps({"teacher": to_dict(recipe.teacher), "data": to_dict(recipe.data)}, sort_keys=True)
    name = recipe.teacher.name if isinstance(recipe.teacher.name, str) else "factory"
    return cache_dir() / "teachers" / f"{name.replace(':', '-')}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def prepare_teacher(recipe: Recipe, loaders, device: torch.device, quiet: bool = False) -> tuple[nn.Module, str]:
    """The teacher, ready to distil from, and where it came from (a message for the summary).

    A teacher trained here depends only on what its cache key holds (its spec, its training settings and seed,
    the data): it is initialised from ``pretrain.seed`` and trained on loaders of its own batch size and seed,
    never the student's, so the cached file is the same whichever run or student seed happened to make it."""
    spec = recipe.teacher
    if spec.pretrain is not None:
        torch.manual_seed(spec.pretrain.seed)
    teacher = build_model(spec, loaders.num_classes, loaders.in_chans).to(device)
    if spec.pretrain is None:
        return teacher, f"checkpoint {spec.checkpoint}" if spec.checkpoint else "as built (no training)"
    path = cache_path(recipe)
    if path.exists():
        load_weights(teacher, path)
        print(f"teacher: reusing the cached teacher {path}", flush=True)
        return teacher, f"cached {path}"
    print(f"teacher: training on the task first ({spec.pretrain.epochs} epochs); it will be cached at {path}",
          flush=True)
    torch.manual_seed(spec.pretrain.seed)
    smoothing = spec.pretrain.label_smoothing

    def loss_fn(batch: Batch) -> dict:
        logits = batch.run(teacher)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=smoothing)
        return {"loss": loss, "task": loss}

    own = make_loaders(recipe.data, spec.pretrain.batch_size, seed=spec.pretrain.seed)
    Trainer(teacher, loss_fn, own, spec.pretrain, device, teacher, desc="teacher", quiet=quiet).fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(teacher.state_dict(), path)
    return teacher, f"trained and cached at {path}"
