"""Distill: one training step from a teacher and a student.

- :mod:`.distiller`: ``Distiller``, the step as an ``nn.Module``.
- :mod:`.plan`: the dry run's typed rows (``PlannedPair``) and the printed plan.
- :mod:`.teachers`: the ``Teacher`` seam (``LiveTeacher``; ensemble teachers would plug in here).
- :mod:`.cached_teacher`, :mod:`.output_store`: ``CachedTeacher``, the teacher's outputs recorded once per
  augmentation view and served by sample index, and their on-disk format.
- :mod:`.combiner`: ``LossCombiner``, the weighted sum of task, logit and feature terms.
- :mod:`.logits`: logits from model outputs, and per-token rows of sequence logits.
- :mod:`.calibration`: ``AutoWeights`` for ``Pair(weight='auto')``.
"""

from .cached_teacher import CachedTeacher
from .calibration import AutoWeights
from .combiner import FeatureTerm, LossCombiner
from .distiller import Distiller, channel_layer_norm
from .logits import split_logits
from .plan import PlannedPair
from .teachers import LiveTeacher, Teacher, TeacherOutputs

__all__ = ["AutoWeights", "CachedTeacher", "Distiller", "FeatureTerm", "LiveTeacher", "LossCombiner", "PlannedPair",
           "Teacher", "TeacherOutputs", "channel_layer_norm", "split_logits"]
