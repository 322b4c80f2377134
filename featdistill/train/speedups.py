"""Speed settings that change how a step runs, never what it computes: channels-last memory and ``torch.compile``.

Both act in place on the models the caller already holds, so layer names, ``state_dict`` keys, hooks and the
Distiller's references to its student and teacher all stay as they were:

- ``train.channels_last``: every 4-d parameter and buffer (convolution weights) moves to channels-last memory,
  and the trainer hands image batches ``[B, C, H, W]`` over in the same layout (:data:`memory_format`).
- ``train.compile``: ``nn.Module.compile`` on the student and the teacher (not a wrapper: no ``_orig_mod.``
  prefix in checkpoints). Forward hooks are traced into the graph; the hooked path has no graph breaks (tested
  with ``fullgraph=True``). Compile after the Distiller's dry run, which finds the captures that need copying.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def memory_format(train) -> torch.memory_format | None:
    """The layout image batches should take for ``train`` (a ``config.Train``): channels-last or None (as is)."""
    return torch.channels_last if getattr(train, "channels_last", False) else None


def to_channels_last(*modules: nn.Module) -> None:
    """Move every 4-d parameter and buffer of ``modules`` to channels-last memory (values unchanged)."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


def compile_in_place(modules: Iterable[nn.Module], backend: str = "inductor", fullgraph: bool = False,
                     mode: str | None = None) -> None:
    """``torch.compile`` each module in place (``nn.Module.compile``): its ``__call__`` runs the compiled graph from
    the next forward on, its hooks included. The first forward in each mode (train / eval, grad / no-grad) pays
    the compilation."""
    for module in modules:
        module.compile(backend=backend, fullgraph=fullgraph, mode=mode)


def uncompile(module: nn.Module) -> nn.Module:
    """Back to eager calls: the plain module a user exports, latency-tests or saves runs uncompiled."""
    if getattr(module, "_compiled_call_impl", None) is not None:
        module._compiled_call_impl = None  # what nn.Module.compile set; there is no public undo
    return module


def apply(train, student: nn.Module, teacher: nn.Module | None = None, extra: Iterable[nn.Module] = ()) -> None:
    """Apply ``train``'s speed settings: channels-last to ``student``, ``teacher`` and ``extra`` (adapters, losses
    with parameters), then compile ``student`` and ``teacher``."""
    models = [m for m in (student, teacher) if m is not None]
    if getattr(train, "channels_last", False):
        to_channels_last(*models, *extra)
    if getattr(train, "compile", False):
        compile_in_place(models)
