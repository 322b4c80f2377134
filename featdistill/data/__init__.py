"""Data: datasets, loaders and the batch the Distiller reads.

- :mod:`.batch`: ``Batch`` (``(x, y)``, ``(x, y, index)`` or a mapping of tensors) and ``IGNORE_INDEX``.
- :mod:`.vision`: the embedded digits benchmark, CIFAR-10/100 and ImageFolder.
- :mod:`.augment`: augmentation as a pure function of ``(seed, epoch, index)``.
- :mod:`.loaders`: ``make_loaders`` (``DistributedSampler`` sharding; images or text), ``Loaders``,
  ``sample_batch``, ``in_chans_of``.
- :mod:`.text`: text for causal LMs (the embedded ``pydoc`` corpus, a user's .txt/.jsonl files; byte or Hugging
  Face tokens): ``make_text_datasets``, ``collate_text``, ``lm_metrics``.

``Data`` (the recipe's dataset settings) lives in :mod:`featdistill.config` and is re-exported here.
"""

from ..config import Data
from .batch import IGNORE_INDEX, Batch
from .loaders import Loaders, in_chans_of, is_text, make_loaders, sample_batch, view_loaders
from .text import TextBlocks, TextDatasets, collate_text, lm_metrics, make_text_datasets

__all__ = ["IGNORE_INDEX", "Batch", "Data", "Loaders", "TextBlocks", "TextDatasets", "collate_text", "in_chans_of",
           "is_text", "lm_metrics", "make_loaders", "make_text_datasets", "sample_batch",
           "view_loaders"]
