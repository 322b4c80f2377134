"""Distill: one training step from a teacher and a student.

- :mod:`.distiller`: ``Distiller``, the step as an ``nn.Module``.
- :mod:`.plan`: the dry run's typed rows (``PlannedPair``) and the printed plan.
- :mod:`.teachers`: the ``Teacher`` seam (``LiveTeacher`` today; cached and ensemble teachers plug in here).
- :mod:`.combiner`: ``LossCombiner``, the weighted sum of task, logit and feature terms.
- :mod:`.logits`: logits from model outputs, and per-token rows of sequence logits.
- :mod:`.calibration`: ``AutoWeights`` for ``Pair(weight='auto')``.
"""

from .calibration import AutoWeights
from .combiner import FeatureTerm, LossCombiner
from .distiller import Distiller, channel_layer_norm
from .logits import split_logits
from .plan import PlannedPair
from .teachers import LiveTeacher, Teacher, TeacherOutputs

__all__ = ["AutoWeights", "Distiller", "FeatureTerm", "LiveTeacher", "LossCombiner", "PlannedPair", "Teacher",
           "TeacherOutputs", "channel_layer_norm", "split_logits"]
