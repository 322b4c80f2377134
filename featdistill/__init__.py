"""featdistill: feature-based knowledge distillation for any PyTorch model.

Rooms (subpackages), in the direction data flows: :mod:`.config` (what to distil; no torch), :mod:`.capture`
(hooks, taps, pairing), :mod:`.adapters`, :mod:`.losses`, :mod:`.distill` (plan, Distiller, combiner, teachers),
:mod:`.data`, :mod:`.train`, :mod:`.cli`. Public names below are imported on first use, so
``import featdistill.config`` (or reading a recipe's settings) needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOME = {
    "ADAPTERS": "adapters",
    "AutoPairs": "config", "LogitKD": "config", "Pair": "config", "TeacherCache": "config",
    "Batch": "data",
    "Distiller": "distill", "LiveTeacher": "distill", "Teacher": "distill", "TeacherOutputs": "distill",
    "split_logits": "distill",
    "CaptureError": "errors", "FeatdistillError": "errors", "OutputTypeError": "errors", "RecipeError": "errors",
    "ShapeError": "errors", "UnknownNameError": "errors",
    "FeatureHooks": "capture", "attention_layer_names": "capture", "attention_maps": "capture",
    "count_hooks": "capture", "list_layers": "capture",
    "LOGIT_LOSSES": "losses", "LOSSES": "losses", "Loss": "losses", "LogitLoss": "losses", "kd_loss": "losses",
}

__all__ = sorted(_HOME)

def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'featdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
