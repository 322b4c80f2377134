"""Losses, one file per family; importing this package registers every shipped loss.

- :mod:`.base`: ``Loss`` (a module declaring ``channel_free`` / ``relational`` / ``needs_index`` / ``multi_layer`` /
  ``masked``), ``LOSSES``, ``build_loss``, ``declares``.
- :mod:`.masking`: padding masks for per-token features ``[B, T, C]`` and attention maps ``[B, H, T, T]`` (the
  ``masked`` losses below: ``mse``, ``smooth_l1``, ``cosine``, ``attention_kl``, ``attention_mse``).
- :mod:`.logit`: ``LOGIT_LOSSES`` (``'soft'`` Hinton KD, ``'hard'`` DeiT, ``'dkd'`` Decoupled KD, ``'dist'`` DIST,
  ``'ls'`` / ``'logit_standardized'`` logit standardization) and ``kd_loss``.
- :mod:`.lm`: token-level KD for language models, also in ``LOGIT_LOSSES``: ``forward_kl``, ``reverse_kl``
  (MiniLLM), ``jsd`` (``gkd``: generalised JSD), ``skew_kl`` / ``skew_rkl`` (DistiLLM), per-token means computed
  in chunks (no fp32 ``[B, T, V]`` copy); ``token_kd_loss`` over ``[B, T, V]`` with a mask or ``-100`` labels.
- :mod:`.feature`: ``mse`` (FitNet hints), ``smooth_l1``, ``cosine``, ``nst`` (neuron selectivity transfer,
  widths may differ), ``vid`` (``VID``: variational information distillation, learned variances).
- :mod:`.attention`: ``attention_transfer`` (``at``), ``attention_transfer_tokens``, ``attention_kl``
  (``value_relation_kl``), ``attention_mse``.
- :mod:`.relational`: batch relations, any widths, no adapter: ``sp``, ``rkd``, ``pkt``, ``cc`` (and long aliases).
- :mod:`.multilevel`: one term over several layers per side (``multi_layer``): ``review_kd`` (``ReviewKD``,
  ``reviewkd``: attention-based fusion + hierarchical context loss).
- :mod:`.contrastive`: ``crd`` (``CRD``: projection heads and memory banks; any widths, needs sample indices).

Argument order is always ``(student, teacher, ...)``; each returns a scalar.
"""

from .attention import attention_kl, attention_map, attention_mse, attention_transfer, attention_transfer_tokens
from .base import LOSSES, FunctionLoss, Loss, build_loss, declares
from .contrastive import CRD
from .feature import VID, cosine, mse, neuron_selectivity_transfer, smooth_l1
from .lm import ForwardKL, GeneralizedJSD, ReverseKL, SkewKL, SkewReverseKL, naive_token_kd_loss, token_kd_loss
from .logit import DIST, LOGIT_LOSSES, DecoupledKD, HardKD, LogitLoss, SoftKD, StandardizedKD, kd_loss
from .multilevel import ReviewKD, hierarchical_context_loss
from .relational import correlation_congruence, probabilistic_kt, relational_kd, similarity_preserving

__all__ = [
    "CRD", "DIST", "DecoupledKD", "LOGIT_LOSSES", "LOSSES", "FunctionLoss", "HardKD", "LogitLoss", "Loss", "SoftKD",
    "StandardizedKD", "VID", "attention_kl",
    "attention_map", "attention_mse", "attention_transfer", "attention_transfer_tokens", "build_loss", "cosine",
    "correlation_congruence", "declares", "kd_loss", "mse", "neuron_selectivity_transfer", "probabilistic_kt",
    "relational_kd", "ReviewKD", "hierarchical_context_loss",
    "similarity_preserving", "smooth_l1",
    "ForwardKL", "GeneralizedJSD", "ReverseKL", "SkewKL", "SkewReverseKL", "naive_token_kd_loss", "token_kd_loss",
]
