"""Train: the loop shared by the teacher stage and distillation (:mod:`.trainer`), exact-resume checkpoints
(:mod:`.checkpoint`), clean stops on SIGINT/SIGTERM (:mod:`.interrupt`) and training under torchrun
(:mod:`.distributed`), held-out LM metrics (:mod:`.lm_eval`), channels-last and torch.compile (:mod:`.speedups`)."""

from .checkpoint import CHECKPOINT, METRICS, atomic_save, read_checkpoint, rng_state, set_rng_state, trim_metrics
from .interrupt import Interrupted, StopRequest
from .lm_eval import evaluate_lm, is_text_loader, logits_of
from .trainer import NonFiniteLoss, Trainer, WarmupCosine, autocast, evaluate, make_optimizer

__all__ = ["CHECKPOINT", "METRICS", "Interrupted", "NonFiniteLoss", "StopRequest", "Trainer", "WarmupCosine",
           "atomic_save", "autocast", "evaluate", "evaluate_lm", "is_text_loader", "logits_of", "make_optimizer",
           "read_checkpoint", "rng_state", "set_rng_state", "trim_metrics"]
