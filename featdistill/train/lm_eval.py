"""Held-out metrics of a causal language model: loss, perplexity and bits per byte (the validation metric of a text
run, each epoch, and the test figures of its summary)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import IGNORE_INDEX, Batch
from ..data.text import lm_metrics
from .distributed import World, sum_counts


def is_text_loader(loader: Any) -> bool:
    """Whether ``loader`` serves text blocks (its dataset records the ``num_bytes`` that bits per byte need)."""
    return hasattr(getattr(loader, "dataset", None), "num_bytes")


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model output: a tensor, the first of a tuple, or ``'logits'`` of a dict / ``ModelOutput``."""
    if isinstance(output, Mapping):
        return output["logits"]
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def evaluate_lm(model: nn.Module, loader, device: torch.device, amp: str = "none",
                world: World | None = None) -> dict[str, float]:
    """``{'loss', 'perplexity', 'bits_per_byte', 'accuracy'}`` of ``model`` over a text ``loader``.

    Each batch is ``input_ids / attention_mask / labels [B, T]`` (labels already shifted, ``IGNORE_INDEX`` on
    padding); the model's logits ``[B, T, V]`` are scored at every kept label: ``loss`` is the mean NLL per predicted
    token in nats, ``bits_per_byte`` the summed NLL over the split's UTF-8 bytes (``loader.dataset.num_bytes``), so
    padding changes nothing. ``accuracy`` is per-token top-1. With a distributed ``world`` each rank takes every
    ``world.size``-th batch and the sums are added up, as :func:`~featdistill.train.evaluate` does."""
    world = world or World()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    was_training = model.training
    model.eval()
    nll, correct, total = 0.0, 0, 0
    for i, raw in enumerate(loader):
        if i % world.size != world.rank:
            continue
        batch = Batch.of(raw).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):  # as the trainer's autocast
            logits = logits_of(batch.run(model))
        flat, labels = logits.flatten(0, -2).float(), batch.labels.flatten()  # [B*T, V], [B*T]
        nll += F.cross_entropy(flat, labels, ignore_index=IGNORE_INDEX, reduction="sum").item()
        kept = labels != IGNORE_INDEX
        correct += ((flat.argmax(-1) == labels) & kept).sum().item()
        total += kept.sum().item()
    model.train(was_training)
    nll, correct, total = sum_counts([nll, correct, total], device, world)
    if total == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "bits_per_byte": float("nan"), "accuracy": 0.0}
    return {**lm_metrics(nll, total, loader.dataset.num_bytes), "accuracy": correct / total}
