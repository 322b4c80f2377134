"""featdistill: feature-based knowledge distillation for any PyTorch model."""

from .adapters import ADAPTERS
from .engine import Distiller, split_logits
from .errors import CaptureError, FeatdistillError, RecipeError, ShapeError, UnknownNameError
from .hooks import FeatureHooks, count_hooks, list_layers
from .losses import LOSSES, kd_loss
from .spec import LogitKD, Pair

__version__ = "0.1.0"

__all__ = [
    "ADAPTERS", "LOSSES", "CaptureError", "Distiller", "FeatdistillError", "FeatureHooks", "LogitKD", "Pair",
    "RecipeError", "ShapeError", "UnknownNameError", "count_hooks", "kd_loss", "list_layers", "split_logits",
]
