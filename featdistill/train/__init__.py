"""Train: the loop shared by the teacher stage and distillation (:mod:`.trainer`) and exact-resume checkpoints
(:mod:`.checkpoint`). Distributed training (torchrun) lands here next."""

from .checkpoint import CHECKPOINT, atomic_save, rng_state, set_rng_state
from .trainer import Trainer, WarmupCosine, autocast, evaluate, make_optimizer

__all__ = ["CHECKPOINT", "Trainer", "WarmupCosine", "atomic_save", "autocast", "evaluate", "make_optimizer",
           "rng_state", "set_rng_state"]
