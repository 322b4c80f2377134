"""Reading logits out of model outputs, and turning them into the rows the logit losses compare."""

from __future__ import annotations

from typing import Any

import torch

from ..data.batch import IGNORE_INDEX


def split_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(task_logits, kd_logits)`` from a model output. A tensor serves both; a 2-tuple is
    ``(class_head, distillation_head)`` as timm's distilled DeiT returns in training; a dict (or a Hugging Face
    ``ModelOutput``) gives ``'logits'``."""
    if isinstance(output, torch.Tensor):
        return output, output
    if isinstance(output, (tuple, list)) and len(output) == 2 and all(isinstance(o, torch.Tensor) for o in output):
        return output[0], output[1]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"], output["logits"]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; "
        "pass logits_from= (a callable output -> [B, K] tensor) to the Distiller."
    )


def kept_positions(logits: torch.Tensor, labels: torch.Tensor | None,
                   mask: torch.Tensor | None) -> torch.Tensor | None:
    """For sequence logits ``[B, T, V]``: the ``[B*T]`` bool of positions that count (``mask`` true and the label
    not ``IGNORE_INDEX``); None for ``[B, K]`` logits, where every row counts."""
    if logits.dim() <= 2:
        return None
    keep = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if mask is not None:
        keep &= mask.bool()
    if labels is not None:
        keep &= labels != IGNORE_INDEX
    return keep.flatten()


def rows(x: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, K]`` as it is; ``[B, T, V]`` (or labels ``[B, T]``) as the kept rows ``[N, V]`` (``[N]``), so every
    term is a mean over real tokens, not over the batch."""
    if x is None or keep is None:
        return x
    return x.flatten(0, 1)[keep] if x.dim() >= 2 else x
