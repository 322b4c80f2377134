"""Pair and LogitKD: the plain, frozen descriptions of what to distil. Building nothing, they validate cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .adapters import ADAPTERS
from .errors import did_you_mean
from .hooks import REPEAT_POLICIES
from .losses import LOSSES

NORMALIZE = (None, "teacher", "both")


@dataclass(frozen=True)
class LogitKD:
    """Logit distillation: ``alpha * CE + (1 - alpha) * KL(t/T || s/T) * T^2`` (``mode='hard'``: DeiT's
    cross-entropy to the teacher's argmax instead of the KL term)."""

    temperature: float = 4.0
    alpha: float = 0.5
    mode: str = "soft"

    def problems(self) -> list[str]:
        found = []
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            found.append(f"kd.temperature must be > 0 (usually 2..4), got {self.temperature!r}")
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            found.append(f"kd.alpha must be in [0, 1] (the weight of the hard-label CE), got {self.alpha!r}")
        if self.mode not in ("soft", "hard"):
            found.append(f"kd.mode must be 'soft' or 'hard', got {self.mode!r}")
        return found


@dataclass(frozen=True)
class Pair:
    """One feature pair: ``weight * loss(adapter(student_layer), teacher_layer)``.

    Args:
        student, teacher: module names as ``model.named_modules()`` gives them.
        loss: a name in ``featdistill.losses.LOSSES`` or a callable ``(student, teacher) -> scalar``.
        adapter: a name in ``featdistill.adapters.ADAPTERS``, ``'auto'`` (chosen from the measured
            shapes), a factory ``(student_shape, teacher_shape) -> nn.Module`` or a module.
        weight: the term's weight.
        select / teacher_select: pick the tensor from a tuple/dict output (index, key or callable);
            ``teacher_select`` defaults to ``select``.
        capture: ``'output'`` or ``'input'`` of the layer.
        repeat: policy for a layer that runs more than once per forward (see ``FeatureHooks``).
        normalize: ``'teacher'`` layer-normalises the teacher feature over channels at each position
            before the loss (parameter-free), ``'both'`` does it to the adapted student feature too.
        name: the key in the step's result, ``feat/<name>``; defaults to ``'<student>~<teacher>'``.
    """

    student: str
    teacher: str
    loss: Any = "mse"
    adapter: Any = "auto"
    weight: float = 1.0
    select: Any = None
    teacher_select: Any = None
    capture: str = "output"
    repeat: str = "error"
    normalize: str | None = None
    name: str | None = None
    loss_kwargs: dict = field(default_factory=dict)
    adapter_kwargs: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name or f"{self.student}~{self.teacher}"

    def problems(self) -> list[str]:
        where = f"pair {self.key!r}"
        found = []
        for side in ("student", "teacher"):
            if not isinstance(getattr(self, side), str) or not getattr(self, side):
                found.append(f"{where}: {side} must be a non-empty module name, got {getattr(self, side)!r}")
        if isinstance(self.loss, str) and self.loss not in LOSSES:
            found.append(f"{where}: unknown loss {self.loss!r}.{did_you_mean(self.loss, LOSSES, 1)} "
                         f"Known: {', '.join(LOSSES)}")
        if isinstance(self.adapter, str) and self.adapter != "auto" and self.adapter not in ADAPTERS:
            found.append(f"{where}: unknown adapter {self.adapter!r}.{did_you_mean(self.adapter, ADAPTERS, 1)} "
                         f"Known: auto, {', '.join(ADAPTERS)}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0:
            found.append(f"{where}: weight must be a number >= 0, got {self.weight!r}")
        if self.capture not in ("output", "input"):
            found.append(f"{where}: capture must be 'output' or 'input', got {self.capture!r}")
        if self.repeat not in REPEAT_POLICIES:
            found.append(f"{where}: repeat must be one of {REPEAT_POLICIES}, got {self.repeat!r}")
        if self.normalize not in NORMALIZE:
            found.append(f"{where}: normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        return found
