"""Pair and LogitKD: the plain, frozen descriptions of what to distil. Building nothing, they validate cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Union

from .adapters import ADAPTERS
from .errors import did_you_mean
from .hooks import REPEAT_POLICIES
from .losses import LOSSES

NORMALIZE = (None, "teacher", "both")
# 'attention' / 'value_relation': the pair names attention modules; their probabilities (or MiniLM value
# relations) [B, heads, N, N] are recomputed from the fused qkv output, the model untouched
CAPTURES = ("output", "input", "attention", "value_relation")


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
        weight: the term's weight, or ``'auto'``: calibrated over the first training steps so that the
            term is ``auto_ratio`` times the logit-KD term (the task term without KD), then frozen.
        auto_ratio: the target ratio for ``weight='auto'``.
        select / teacher_select: pick the tensor from a tuple/dict output (index, key or callable);
            ``teacher_select`` defaults to ``select``.
        capture: ``'output'`` or ``'input'`` of the layer, or ``'attention'`` / ``'value_relation'`` for an
            attention module (timm ``blocks.3.attn``): maps ``[B, heads, N, N]`` recomputed from its ``qkv``
            output (use ``loss='attention_kl'``; the 'auto' adapter mixes heads and resamples tokens).
        repeat: policy for a layer that runs more than once per forward (see ``FeatureHooks``).
        normalize: ``'teacher'`` layer-normalises the teacher feature over channels at each position
            before the loss (parameter-free), ``'both'`` does it to the adapted student feature too.
        name: the key in the step's result, ``feat/<name>``; defaults to ``'<student>~<teacher>'``.
    """

    student: str
    teacher: str
    loss: Any = "mse"
    adapter: Any = "auto"
    weight: Union[float, str] = 1.0
    select: Any = None
    teacher_select: Any = None
    capture: str = "output"
    repeat: str = "error"
    normalize: str | None = None
    name: str | None = None
    auto_ratio: float = 1.0
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
        if self.weight != "auto" and (
                isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight < 0):
            found.append(f"{where}: weight must be a number >= 0 or 'auto', got {self.weight!r}")
        if not isinstance(self.auto_ratio, (int, float)) or self.auto_ratio <= 0:
            found.append(f"{where}: auto_ratio must be > 0, got {self.auto_ratio!r}")
        if self.capture not in CAPTURES:
            found.append(f"{where}: capture must be one of {CAPTURES}, got {self.capture!r}")
        if self.repeat not in REPEAT_POLICIES:
            found.append(f"{where}: repeat must be one of {REPEAT_POLICIES}, got {self.repeat!r}")
        if self.normalize not in NORMALIZE:
            found.append(f"{where}: normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        return found


@dataclass(frozen=True)
class AutoPairs:
    """Pairs chosen by relative depth among the block-like modules of both models (TinyBERT's uniform
    mapping: student block i <-> teacher block round((i + 1) * L_t / L_s) - 1, last blocks always paired).

    ``n_pairs`` keeps that many, evenly spaced over the student's blocks (default: every student block);
    the remaining fields are given to every ``Pair``. ``pairs='auto'`` means ``AutoPairs()``.
    """

    n_pairs: Union[int, None] = None
    loss: Any = "mse"
    adapter: Any = "auto"
    weight: Union[float, str] = 1.0
    normalize: Union[str, None] = None
    auto_ratio: float = 1.0

    def problems(self) -> list[str]:
        found = []
        if self.n_pairs is not None and (not isinstance(self.n_pairs, int) or self.n_pairs < 1):
            found.append(f"AutoPairs.n_pairs must be an integer >= 1 or None, got {self.n_pairs!r}")
        return found + Pair("student", "teacher", name="AutoPairs", **self.pair_kwargs()).problems()

    def pair_kwargs(self) -> dict[str, Any]:
        """The fields every chosen ``Pair`` receives (all but ``n_pairs``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "n_pairs"}
