"""featdistill: feature-based knowledge distillation for any PyTorch model."""

from .adapters import ADAPTERS
from .attention import attention_layer_names, attention_maps  # also registers the attention losses / adapter
from .engine import Distiller, split_logits
from .errors import CaptureError, FeatdistillError, OutputTypeError, RecipeError, ShapeError, UnknownNameError
from .hooks import FeatureHooks, count_hooks, list_layers
from .losses import LOSSES, kd_loss
from .spec import AutoPairs, LogitKD, Pair

__version__ = "0.1.0"

__all__ = [
    "ADAPTERS", "AutoPairs", "CaptureError", "Distiller", "FeatdistillError", "FeatureHooks", "LOSSES",
    "LogitKD", "OutputTypeError", "Pair", "RecipeError", "ShapeError", "UnknownNameError", "attention_layer_names",
    "attention_maps", "count_hooks", "kd_loss", "list_layers", "split_logits",
]
