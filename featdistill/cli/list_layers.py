"""``--list-layers teacher|student``: every module name of a recipe's model with its output shape on a sample batch."""

from __future__ import annotations

import torch

from ..capture import list_layers
from ..config import Recipe
from ..data import Batch, in_chans_of, make_loaders, sample_batch
from ..models import build_model, count_params


def list_layers_cmd(recipe: Recipe, which: str) -> int:
    sample = sample_batch(recipe.data, 2)
    spec = recipe.teacher if which == "teacher" else recipe.student
    # the real text for the vocabulary: a recipe that trains on generated text may not have generated it yet
    classes = make_loaders(recipe.data.for_teacher(), 2).num_classes
    model = build_model(spec, classes, in_chans_of(recipe.data), where=which)
    print(f"{which} {type(model).__name__} ({count_params(model):,} params): name, type, output shape "
          f"for a batch of {Batch.of(sample).size}")
    for name, desc in list_layers(_KeywordCall(model) if isinstance(sample, dict) else model, sample):
        print(f"  {name:40s} {desc}")
    return 0


class _KeywordCall:
    """``model`` as :func:`list_layers` sees it, called with a dict of inputs as keywords (``model(**inputs)``);
    everything else is the model's own."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, inputs: dict):
        return self.model(**inputs)
