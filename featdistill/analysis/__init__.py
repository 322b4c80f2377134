"""Analysis before (and after) training: what the teacher's soft targets hold and which layers align.

- :mod:`.dark_knowledge`: soft-target entropy, off-class mass and class-by-class relations per temperature; a
  suggested temperature with its reason; the textbook worked example.
- :mod:`.cka`: linear CKA between layers (``linear_cka``, ``cka_matrix``) and pairings by it (``best_pairing``,
  ``uniform_pairing``).
- :mod:`.layers`: the candidate layers of a model (stages or blocks) and their features on one batch.
- :mod:`.cka_pairs`: recipe pairs chosen by CKA (``pairs='cka'``): ``cka_pairs``, ``measure_cka``; the CKA of
  what given pairs read: ``pair_cka``.

``python -m featdistill.inspect RECIPE`` (:mod:`featdistill.cli.inspect`) puts these together.
"""

from .cka import best_pairing, centered_gram, cka_matrix, flatten, linear_cka, pairing_score, uniform_pairing
from .cka_pairs import cka_pairs, measure_cka, pair_cka
from .dark_knowledge import (
    TEMPERATURES,
    DarkKnowledge,
    analyse,
    class_matrix,
    soft_stats,
    suggest_temperature,
    top_pairs,
    worked_example,
)
from .layers import candidate_layers, enclosing, layer_features, marked_pairs, model_logits, pair_features

__all__ = [
    "TEMPERATURES", "DarkKnowledge", "analyse", "best_pairing", "candidate_layers", "centered_gram", "cka_matrix",
    "cka_pairs", "class_matrix", "enclosing", "flatten", "layer_features", "linear_cka", "marked_pairs", "measure_cka",
    "model_logits", "pair_cka", "pair_features", "pairing_score", "soft_stats", "suggest_temperature", "top_pairs",
    "uniform_pairing", "worked_example",
]
