"""Losses, one file per family; importing this package registers every shipped loss.

- :mod:`.base`: ``Loss`` (a module declaring ``channel_free`` / ``relational`` / ``needs_index``), ``LOSSES``,
  ``build_loss``, ``declares``.
- :mod:`.logit`: ``LOGIT_LOSSES`` (``'soft'`` Hinton KD, ``'hard'`` DeiT, ``'dkd'`` Decoupled KD, ``'dist'`` DIST,
  ``'ls'`` / ``'logit_standardized'`` logit standardization) and ``kd_loss``.
- :mod:`.feature`: ``mse`` (FitNet hints), ``smooth_l1``, ``cosine``.
- :mod:`.attention`: ``attention_transfer`` (``at``), ``attention_transfer_tokens``, ``attention_kl``
  (``value_relation_kl``), ``attention_mse``.
- :mod:`.relational`: batch relations, any widths, no adapter: ``sp``, ``rkd``, ``pkt``, ``cc`` (and long aliases).

Argument order is always ``(student, teacher, ...)``; each returns a scalar.
"""

from .attention import attention_kl, attention_map, attention_mse, attention_transfer, attention_transfer_tokens
from .base import LOSSES, FunctionLoss, Loss, build_loss, declares
from .feature import cosine, mse, smooth_l1
from .logit import DIST, LOGIT_LOSSES, DecoupledKD, HardKD, LogitLoss, SoftKD, StandardizedKD, kd_loss
from .relational import correlation_congruence, probabilistic_kt, relational_kd, similarity_preserving

__all__ = [
    "DIST", "DecoupledKD", "LOGIT_LOSSES", "LOSSES", "FunctionLoss", "HardKD", "LogitLoss", "Loss", "SoftKD",
    "StandardizedKD", "attention_kl",
    "attention_map", "attention_mse", "attention_transfer", "attention_transfer_tokens", "build_loss", "cosine",
    "correlation_congruence", "declares", "kd_loss", "mse", "probabilistic_kt", "relational_kd",
    "similarity_preserving", "smooth_l1",
]
