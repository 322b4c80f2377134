"""Batch: one batch as the Distiller and the trainer see it, whatever the loader yields.

Loaders may yield ``(x, y)``, ``(x, y, index)`` or a mapping of tensors (``input_ids``, ``attention_mask``,
``labels``, ``index``, ...); :meth:`Batch.of` reads all of them, and :meth:`Batch.run` calls a model the way its
inputs ask (``model(x)`` for a tensor, ``model(**inputs)`` for a mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100  # a label position nothing is predicted at (padding), as in PyTorch and Hugging Face


@dataclass
class Batch:
    """``inputs``: a tensor ``[B, ...]`` or a mapping of tensors ``[B, ...]`` (e.g. ``input_ids [B, T]``,
    ``attention_mask [B, T]``); ``labels``: ``[B]`` classes or ``[B, T]`` tokens (``IGNORE_INDEX`` where nothing
    is predicted), or None; ``index``: ``[B]`` int64 dataset indices of the samples, or None."""

    inputs: Any
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @classmethod
    def of(cls, raw: Any) -> Batch:
        """A ``Batch`` from a loader item: ``(x,)``, ``(x, y)``, ``(x, y, index)``, a mapping or a ``Batch``."""
        if isinstance(raw, Batch):
            return raw
        if isinstance(raw, Mapping):
            inputs = {k: v for k, v in raw.items() if k not in ("labels", "index")}
            return cls(inputs, raw.get("labels"), raw.get("index"))
        if isinstance(raw, (tuple, list)) and 1 <= len(raw) <= 3:
            return cls(*raw)
        if isinstance(raw, torch.Tensor):
            return cls(raw)
        raise TypeError(f"a batch must be (x, y), (x, y, index) or a mapping of tensors, got {type(raw).__name__}"
                        + (f" of {len(raw)} items" if isinstance(raw, (tuple, list)) else ""))

    @property
    def size(self) -> int:
        """The number of samples B."""
        first = next(iter(self.inputs.values())) if isinstance(self.inputs, Mapping) else self.inputs
        return int(first.shape[0])

    @property
    def mask(self) -> torch.Tensor | None:
        """``attention_mask [B, T]`` of mapping inputs (1 = a real token), else None."""
        return self.inputs.get("attention_mask") if isinstance(self.inputs, Mapping) else None

    def to(self, device: torch.device | str, non_blocking: bool = False,
           memory_format: torch.memory_format | None = None) -> Batch:
        """On ``device``; with ``memory_format`` (``torch.channels_last``), 4-d float inputs take that layout."""
        def move(v: Any) -> Any:
            return v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v

        def layout(v: Any) -> Any:
            if memory_format is None or not isinstance(v, torch.Tensor) or v.dim() != 4 or not v.is_floating_point():
                return v
            return v.contiguous(memory_format=memory_format)

        inputs = {k: layout(move(v)) for k, v in self.inputs.items()} if isinstance(self.inputs, Mapping) \
            else layout(move(self.inputs))
        return Batch(inputs, move(self.labels), move(self.index))

    def run(self, model: Any) -> Any:
        """``model(**inputs)`` for mapping inputs, ``model(inputs)`` otherwise."""
        return model(**self.inputs) if isinstance(self.inputs, Mapping) else model(self.inputs)
