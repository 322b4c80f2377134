"""What to distil, as plain frozen dataclasses: ``LogitKD``, ``Pair``, ``AutoPairs``, ``Model``, ``Train``, ``Data``
and ``Recipe`` (``Data`` is defined in :mod:`.config_data`). Each has ``problems() -> list[str]``: every
problem at once, each naming its fix.

This module imports no torch, so recipes, launchers and tools can read and check a run's description without
building anything. Names of losses and adapters are checked against their registries, which live with the torch
code that fills them; ``problems()`` imports them on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .checks import layer_names, layer_problems
from .checks import log_problems as _log_problems
from .checks import number as _number
from .checks import unknown as _unknown

# Data lives in its own file; it and the dataset names are part of this module's surface
from .config_cache import TeacherCache  # noqa: F401
from .config_data import CIFAR_FOLDERS, DATASETS, IMAGEFOLDER_LAYOUT, TEXT_DATASETS, TEXT_LAYOUT, Data  # noqa: F401
from .errors import did_you_mean

# How a Pair reads a layer: its output, its input, or (for a fused-qkv attention module) the attention
# probabilities / MiniLM value relations [B, heads, N, N] recomputed from the qkv output. The one list of
# capture kinds: featdistill.capture.taps builds one tap class per entry.
CAPTURES = ("output", "input", "attention", "value_relation")
REPEAT_POLICIES = ("error", "first", "last", "stack")  # a layer that runs more than once per forward
NORMALIZE = (None, "teacher", "both")
OPTIMIZERS = ("adamw", "sgd")
AMP = ("none", "bf16", "fp16")
PAIRING = ("depth", "cka")  # AutoPairs.by: relative depth (TinyBERT) or linear CKA on a fixed batch
LOGGERS = ("tensorboard",)  # Train.log: where metrics go besides metrics.jsonl


@dataclass(frozen=True)
class LogitKD:
    """Logit distillation: ``alpha * CE(s, y) + (1 - alpha) * loss(s, t)``.

    Args:
        temperature: softening temperature T of the soft targets.
        alpha: weight of the hard-label cross-entropy.
        loss: a name in ``featdistill.losses.LOGIT_LOSSES``: ``'soft'`` is Hinton's
            ``KL(softmax(t/T) || softmax(s/T)) * T^2``, ``'hard'`` DeiT's cross-entropy to the teacher's argmax;
            also ``'dkd'``, ``'dist'``, ``'ls'`` (:mod:`featdistill.losses.logit`) and, per token for language models,
            ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'``/``'gkd'``, ``'skew_kl'``, ``'skew_rkl'`` (:mod:`.losses.lm`).
        loss_kwargs: extra keyword arguments for the logit loss's constructor (``beta``, ``skew``, ``chunk_tokens``...).
    """

    temperature: float = 4.0
    alpha: float = 0.5
    loss: str = "soft"
    loss_kwargs: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if not _number(self.temperature) or self.temperature <= 0:
            found.append(f"kd.temperature must be > 0 (usually 2..4), got {self.temperature!r}")
        if not _number(self.alpha) or not 0 <= self.alpha <= 1:
            found.append(f"kd.alpha must be in [0, 1] (the weight of the hard-label CE), got {self.alpha!r}")
        if not isinstance(self.loss, str):
            found.append(f"kd.loss must be a logit-loss name, got {self.loss!r}")
        else:
            found += _unknown("kd", "logit loss", self.loss)
        if not isinstance(self.loss_kwargs, dict):
            found.append(f"kd.loss_kwargs must be a dict, got {self.loss_kwargs!r}")
        return found


@dataclass(frozen=True)
class Pair:
    """One feature pair: ``weight * loss(adapter(student_layer), teacher_layer)``.

    Args:
        student, teacher: module names as ``model.named_modules()`` gives them; for a multi-layer loss (ReviewKD),
            a tuple of names per side, ordered shallow -> deep, paired level by level: one term
            ``weight * loss([S_1..S_L], [T_1..T_L])`` whose loss holds its own modules (no adapter).
        loss: a name in ``featdistill.losses.LOSSES``, a ``featdistill.losses.Loss`` (class or instance), or a
            callable ``(student, teacher) -> scalar``.
        adapter: a name in ``featdistill.adapters.ADAPTERS``, ``'auto'`` (chosen from the measured
            shapes), a factory ``(student_shape, teacher_shape) -> nn.Module`` or a module.
        weight: the term's weight, or ``'auto'``: calibrated over the first training steps so that the
            term is ``auto_ratio`` times the logit-KD term (the task term without KD), then frozen.
        auto_ratio: the target ratio for ``weight='auto'``.
        select / teacher_select: pick the tensor from a tuple/dict output (index, key or callable);
            ``teacher_select`` defaults to ``select``.
        capture: one of ``CAPTURES``: the layer's ``'output'`` or ``'input'``, or ``'attention'`` /
            ``'value_relation'`` for an attention module: maps ``[B, heads, N, N]`` recomputed from the ``qkv``
            output of timm's ``blocks.3.attn``, or read from a Hugging Face module (``transformer.h.3.attn``,
            ``model.layers.3.self_attn``; eager attention) (use ``loss='attention_kl'``; the 'auto' adapter mixes
            heads and resamples tokens).
        repeat: policy for a layer that runs more than once per forward (see ``FeatureHooks``).
        normalize: ``'teacher'`` layer-normalises the teacher feature over channels at each position
            before the loss (parameter-free), ``'both'`` does it to the adapted student feature too.
        name: the key in the step's result, ``feat/<name>``; defaults to ``'<student>~<teacher>'`` (a multi-layer
            term: ``'layer1+layer2~layer1+layer2'``).
        loss_kwargs / adapter_kwargs: extra keyword arguments for the loss / the adapter factory (e.g. the
            token layout ``student_grid=(h, w), student_prefix=k``).
    """

    student: str | tuple[str, ...] | list[str]
    teacher: str | tuple[str, ...] | list[str]
    loss: Any = "mse"
    adapter: Any = "auto"
    weight: float | str = 1.0
    select: Any = None
    teacher_select: Any = None
    capture: str = "output"
    repeat: str = "error"
    normalize: str | None = None
    name: str | None = None
    auto_ratio: float = 1.0
    loss_kwargs: dict = field(default_factory=dict)
    adapter_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        for side in ("student", "teacher"):  # a list of names is kept as a tuple: frozen, hashable
            if isinstance(getattr(self, side), list):
                object.__setattr__(self, side, tuple(getattr(self, side)))

    @property
    def multi_layer(self) -> bool:
        """Whether this pair names several layers per side (a tuple of names): one multi-layer term."""
        return not (isinstance(self.student, str) and isinstance(self.teacher, str))

    def layers(self, side: str) -> tuple[str, ...]:
        """The module names ``side`` (``'student'`` or ``'teacher'``) reads, shallow -> deep."""
        return layer_names(getattr(self, side))

    @property
    def key(self) -> str:
        return self.name or "~".join("+".join(map(str, self.layers(side))) for side in ("student", "teacher"))

    def problems(self) -> list[str]:
        where = f"pair {self.key!r}"
        found = layer_problems(where, self)
        if isinstance(self.loss, str):
            found += _unknown(where, "loss", self.loss)
        elif not callable(self.loss):
            found.append(f"{where}: loss must be a name, a Loss or a callable, got {self.loss!r}")
        if isinstance(self.adapter, str):
            found += _unknown(where, "adapter", self.adapter, extra=("auto",))
        if self.weight != "auto" and (not _number(self.weight) or self.weight < 0):
            found.append(f"{where}: weight must be a number >= 0 or 'auto', got {self.weight!r}")
        if not _number(self.auto_ratio) or self.auto_ratio <= 0:
            found.append(f"{where}: auto_ratio must be > 0, got {self.auto_ratio!r}")
        if self.capture not in CAPTURES:
            found.append(f"{where}: capture must be one of {CAPTURES}, got {self.capture!r}")
        if self.repeat not in REPEAT_POLICIES:
            found.append(f"{where}: repeat must be one of {REPEAT_POLICIES}, got {self.repeat!r}")
        if self.normalize not in NORMALIZE:
            found.append(f"{where}: normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        for name in ("loss_kwargs", "adapter_kwargs"):
            if not isinstance(getattr(self, name), dict):
                found.append(f"{where}: {name} must be a dict, got {getattr(self, name)!r}")
        return found


@dataclass(frozen=True)
class AutoPairs:
    """Pairs chosen automatically, ``by`` one of ``PAIRING``: ``'depth'`` (default), by relative depth among the
    block-like modules of both models (TinyBERT's uniform mapping: student block i <-> teacher block
    round((i + 1) * L_t / L_s) - 1, last blocks always paired); ``'cka'``, the stages or blocks ``inspect`` compares,
    in order, for the highest total linear CKA on a fixed training batch (:func:`featdistill.analysis.cka_pairs`).

    ``n_pairs`` keeps that many, evenly spaced over the student's blocks (default: every student block);
    the remaining fields are given to every ``Pair``. ``pairs='auto'`` means ``AutoPairs()``, ``pairs='cka'``
    ``AutoPairs(by='cka')``.
    """

    n_pairs: int | None = None
    loss: Any = "mse"
    adapter: Any = "auto"
    weight: float | str = 1.0
    normalize: str | None = None
    auto_ratio: float = 1.0
    by: str = field(default="depth", metadata={"omit_default": True})  # saved recipes from before keep their form

    def problems(self) -> list[str]:
        found = []
        if self.n_pairs is not None and (not isinstance(self.n_pairs, int) or self.n_pairs < 1):
            found.append(f"AutoPairs.n_pairs must be an integer >= 1 or None, got {self.n_pairs!r}")
        if self.by not in PAIRING:
            found.append(f"AutoPairs.by must be one of {PAIRING}, got {self.by!r}."
                         f"{did_you_mean(str(self.by), PAIRING, 1)}")
        return found + Pair("student", "teacher", name="AutoPairs", **self.pair_kwargs()).problems()

    def pair_kwargs(self) -> dict[str, Any]:
        """The fields every chosen ``Pair`` receives (all but ``n_pairs`` and ``by``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("n_pairs", "by")}


PAIRS_SHORTHANDS = {"auto": AutoPairs(), "cka": AutoPairs(by="cka")}  # Recipe(pairs='cka') etc.


@dataclass(frozen=True)
class Train:
    """Optimisation settings (student, or teacher when given as ``Model.pretrain``). ``batch_size`` is the global
    batch: under ``torchrun`` each of N processes takes ``batch_size // N`` of it. ``sync_bn``: under torchrun, the
    student's and adapters' BatchNorm statistics over the global batch (``SyncBatchNorm``, CUDA only).
    ``compile``: ``torch.compile`` the student and the teacher (hooks attached; the first steps pay the compilation).
    ``channels_last``: models, adapters and image batches in channels-last memory (faster convolutions on recent
    CPUs and GPUs; nothing else changes). Saved recipes and cache keys leave these three out while False, so runs
    and cached teachers from before them still match."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.0
    amp: str = "none"
    seed: int = 0
    sync_bn: bool = field(default=False, metadata={"omit_default": True})
    compile: bool = field(default=False, metadata={"omit_default": True})
    channels_last: bool = field(default=False, metadata={"omit_default": True})
    log: tuple[str, ...] = field(default=(), metadata={"omit_default": True})  # e.g. ('tensorboard',)

    def __post_init__(self):
        if isinstance(self.log, list):  # Train(log=['tensorboard']): kept as a tuple, frozen and hashable
            object.__setattr__(self, "log", tuple(self.log))

    def problems(self, where: str = "train") -> list[str]:
        found = []
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                found.append(f"{where}.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not _number(self.lr) or self.lr <= 0:
            found.append(f"{where}.lr must be > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            found.append(f"{where}.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.amp not in AMP:
            found.append(f"{where}.amp must be one of {AMP}, got {self.amp!r}")
        if not _number(self.warmup_epochs) or self.warmup_epochs < 0:
            found.append(f"{where}.warmup_epochs must be a finite number >= 0, got {self.warmup_epochs!r}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            found.append(f"{where}.weight_decay must be >= 0 (0.05 is usual for AdamW), got {self.weight_decay!r}")
        if not _number(self.momentum) or not 0 <= self.momentum < 1:
            found.append(f"{where}.momentum must be in [0, 1) (0.9 is usual), got {self.momentum!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            found.append(f"{where}.seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.clip_grad is not None and (not _number(self.clip_grad) or self.clip_grad <= 0):
            found.append(f"{where}.clip_grad must be > 0 or None, got {self.clip_grad!r}")
        if not _number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            found.append(f"{where}.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        for name in ("sync_bn", "compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                found.append(f"{where}.{name} must be True or False, got {getattr(self, name)!r}")
        return found + _log_problems(where, self.log, LOGGERS)


@dataclass(frozen=True)
class Model:
    """A model by name or factory.

    Args:
        name: a timm name (``'resnet18'`` or ``'timm:resnet18'``), ``'torchvision:resnet18'``, or a
            callable ``factory(num_classes=..., in_chans=..., **kwargs) -> nn.Module``.
        kwargs: keyword arguments for the constructor (``pretrained=True`` for real timm weights).
        checkpoint: a ``state_dict`` file loaded with ``weights_only=True``.
        pretrain: teacher only: train it on the task with these settings first; the result is cached
            (keyed by model, data and seed) and reused by the next run.
    """

    name: str | Callable[..., Any]
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    pretrain: Train | None = None


@dataclass(frozen=True)
class Recipe:
    """Everything a run needs. ``kd=None`` trains with cross-entropy only; ``pairs=()`` adds no feature terms."""

    teacher: Model
    student: Model
    pairs: tuple | AutoPairs | str = ()
    kd: LogitKD | None = field(default_factory=LogitKD)
    data: Data = field(default_factory=Data)
    train: Train = field(default_factory=Train)
    eval_teacher: bool = True
    teacher_cache: TeacherCache | None = field(default=None, metadata={"omit_default": True})

    def __post_init__(self):
        if isinstance(self.pairs, str) and self.pairs in PAIRS_SHORTHANDS:  # 'auto', 'cka'
            object.__setattr__(self, "pairs", PAIRS_SHORTHANDS[self.pairs])
        if isinstance(self.pairs, list):
            object.__setattr__(self, "pairs", tuple(self.pairs))
