"""Losses, one file per family; importing this package registers every shipped loss.

- :mod:`.base`: ``Loss`` (a module declaring ``channel_free`` / ``relational`` / ``needs_index``), ``LOSSES``,
  ``build_loss``, ``declares``.
- :mod:`.logit`: ``LOGIT_LOSSES`` (``'soft'`` Hinton KD, ``'hard'`` DeiT) and ``kd_loss``.
- :mod:`.feature`: ``mse`` (FitNet hints), ``smooth_l1``, ``cosine``.
- :mod:`.attention`: ``attention_transfer`` (``at``), ``attention_transfer_tokens``, ``attention_kl``
  (``value_relation_kl``), ``attention_mse``.

Argument order is always ``(student, teacher, ...)``; each returns a scalar.
"""

from .attention import attention_kl, attention_map, attention_mse, attention_transfer, attention_transfer_tokens
from .base import LOSSES, FunctionLoss, Loss, build_loss, declares
from .feature import cosine, mse, smooth_l1
from .logit import LOGIT_LOSSES, HardKD, LogitLoss, SoftKD, kd_loss

__all__ = [
    "LOGIT_LOSSES", "LOSSES", "FunctionLoss", "HardKD", "LogitLoss", "Loss", "SoftKD", "attention_kl",
    "attention_map", "attention_mse", "attention_transfer", "attention_transfer_tokens", "build_loss", "cosine",
    "declares", "kd_loss", "mse", "smooth_l1",
]
