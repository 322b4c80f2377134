"""Layer pairing: which layers each pair reads, and automatic pairs by relative depth (TinyBERT's uniform mapping).

``pair_taps`` / ``per_pair`` turn pairs into one tap per layer and the captures back into one feature per pair (a
list, shallow -> deep, for a multi-layer pair such as ReviewKD's). ``auto_pairs(teacher, student)`` finds the
repeated residual blocks of both models and pairs student block ``i`` with the teacher block at the same relative
depth, so a 4-block student learns from teacher blocks 3, 6, 9 and 12 of 12. Every pair comes with a one-line
explanation for logs and ``--dry-run``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..config import Pair
from ..errors import FeatdistillError
from .taps import Tap, make_tap


def pair_taps(model: nn.Module, pairs: Sequence[Pair], side: str) -> list[Tap]:
    """The taps ``side`` (``'student'`` or ``'teacher'``) reads on ``model``: one per layer, in pair order (a
    multi-layer pair: each of its layers, shallow -> deep). The teacher side uses ``teacher_select`` if given."""
    taps = []
    for p in pairs:
        select = p.teacher_select if side == "teacher" and p.teacher_select is not None else p.select
        taps += [make_tap(model, name, p.capture, select, p.repeat) for name in p.layers(side)]
    return taps


def per_pair(pairs: Sequence[Pair], features: Sequence[torch.Tensor]) -> list[torch.Tensor | list[torch.Tensor]]:
    """Features captured by :func:`pair_taps` (one per tap) regrouped one entry per pair: the tensor of a
    single-layer pair, the list of tensors (shallow -> deep) of a multi-layer one."""
    grouped, at = [], 0
    for p in pairs:
        n = len(p.layers("student"))
        grouped.append(list(features[at:at + n]) if p.multi_layer else features[at])
        at += n
    return grouped

# Tier 1: unambiguous residual-block class names (timm/torchvision ViT, DeiT, ResNet, MobileNet,
# EfficientNet, ConvNeXt, Swin, torch.nn.TransformerEncoderLayer ...).
_BLOCK_RE = re.compile(
    r"(Block|Bottle[Nn]eck|InvertedResidual|EdgeResidual|DepthwiseSeparableConv|EncoderLayer|DecoderLayer)$")
# Tier 2, only when tier 1 finds nothing: any ``*Layer`` (HF BertLayer, ViTLayer, ResNetBasicLayer). Kept
# apart because some codebases call a *stage* ``BasicLayer`` (old Swin) and its blocks ``*Block``.
_LAYER_RE = re.compile(r"[A-Za-z0-9]Layer$")


def _outermost(model: nn.Module, pattern: re.Pattern) -> list[str]:
    """Names of modules whose class name matches ``pattern``, skipping the root and anything nested
    inside an earlier match (a ``Block`` holding ``Block``s, e.g. MobileViT, counts once)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or not pattern.search(type(module).__name__):
            continue
        if any(name.startswith(outer + ".") for outer in found):
            continue
        found.append(name)
    return found


def _longest_uniform_container(model: nn.Module) -> list[str]:
    """Children of the longest ``nn.Sequential``/``nn.ModuleList`` (the model itself included) whose
    children all share one class; ties go to the first, outermost one."""
    best: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(module.named_children())
        if len(children) < 2 or len({type(c) for _, c in children}) != 1 or len(children) <= len(best):
            continue
        best = [f"{name}.{child}" if name else child for child, _ in children]
    return best


def block_names(model: nn.Module) -> list[str]:
    """The block-like modules of ``model`` in forward order, as ``model.named_modules()`` names them.

    Rule, first that finds anything wins:

    1. Modules whose class name ends in ``Block``, ``Bottleneck``, ``InvertedResidual``, ``EdgeResidual``,
       ``DepthwiseSeparableConv``, ``EncoderLayer`` or ``DecoderLayer`` (timm ViT/DeiT ``Block`` ->
       ``blocks.0``...; ResNet ``BasicBlock``/``Bottleneck`` -> ``layer1.0``...``layer4.1``; torchvision
       MobileNetV3 ``InvertedResidual`` -> ``features.1``...).
    2. Modules whose class name ends in ``Layer`` (Hugging Face ``BertLayer``, ``ViTLayer``...).
    3. The children of the longest ``nn.Sequential``/``nn.ModuleList`` whose children all share one class.

    In 1 and 2 only the outermost matches count (not one nested inside another match), and the model
    itself never does. "Forward order" is registration order, which is the order every standard
    backbone runs its blocks in.

    Raises:
        FeatdistillError: nothing block-like was found; pass the pairs explicitly.
    """
    for pattern in (_BLOCK_RE, _LAYER_RE):
        names = _outermost(model, pattern)
        if names:
            return names
    names = _longest_uniform_container(model)
    if names:
        return names
    raise FeatdistillError(
        f"cannot find repeated blocks in {type(model).__name__} (no module class named like *Block, "
        f"*Bottleneck, *InvertedResidual, *Layer, and no Sequential/ModuleList of identical modules), so "
        f"layers cannot be paired automatically. Pass the pairs explicitly, e.g. "
        f"Pair(student='layer2', teacher='layer3'); list the layer names with "
        f"`python -m featdistill.run RECIPE --list-layers student` (or `teacher`).")


def _check_count(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FeatdistillError(f"{what} must be a positive int, got {value!r}")


def uniform_mapping(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """TinyBERT's uniform mapping: ``(i, round((i + 1) * n_teacher / n_student) - 1)`` for each student
    block ``i`` (0-based), so the last blocks of both models are always paired.

    ``round`` rounds halves *up* (exact integer arithmetic), not Python's round-half-to-even: 4 students
    over 6 teacher blocks gives teacher blocks 1, 2, 4, 5 (not 1, 2, 3, 5). Examples: 12 -> 4 gives
    ``[(0, 2), (1, 5), (2, 8), (3, 11)]``, 6 -> 3 ``[(0, 1), (1, 3), (2, 5)]``, n -> n the identity.

    With more student than teacher blocks the same formula maps several student blocks to one teacher
    block (4 students over 2 teacher blocks: 0, 0, 1, 1); a student block shallower than half the first
    teacher block (possible when ``n_student > 2 * n_teacher``) is clamped to teacher block 0.
    """
    _check_count(n_student, "n_student")
    _check_count(n_teacher, "n_teacher")
    # round-half-up of p/q == floor((2p + q) / 2q), no float error
    return [(i, max(0, (2 * (i + 1) * n_teacher + n_student) // (2 * n_student) - 1)) for i in range(n_student)]


def auto_pairs(teacher: nn.Module, student: nn.Module, n_pairs: int | None = None, loss="mse",
               adapter="auto", weight: float = 1.0, **pair_kwargs) -> tuple[list[Pair], list[str]]:
    """Pair every student block with the teacher block at the same relative depth (``uniform_mapping``).

    Args:
        teacher, student: the models; their blocks are found with ``block_names``.
        n_pairs: keep only this many pairs, evenly spaced over the student's blocks and always including
            the last one (student blocks picked by ``uniform_mapping(n_pairs, n_student_blocks)``).
        loss, adapter, weight, **pair_kwargs: passed to every ``Pair`` (``name`` is not accepted: the
            default ``'<student>~<teacher>'`` keys are unique because the student blocks are).

    Returns:
        ``(pairs, explanations)``, one explanation line per pair, e.g.
        ``"student blocks.1 (2/4) <-> teacher blocks.5 (6/12): relative depth 0.50 / 0.50"``.
    """
    clash = sorted({"student", "teacher", "name"} & set(pair_kwargs))
    if clash:
        raise FeatdistillError(f"auto_pairs() sets {', '.join(clash)} itself; remove it from the arguments "
                               f"(or build the Pair objects by hand)")
    s_names, t_names = block_names(student), block_names(teacher)
    ns, nt = len(s_names), len(t_names)
    mapping = uniform_mapping(ns, nt)
    if n_pairs is not None:
        _check_count(n_pairs, "n_pairs")
        if n_pairs > ns:
            raise FeatdistillError(f"n_pairs={n_pairs} but the student ({type(student).__name__}) has only "
                                   f"{ns} blocks; use n_pairs <= {ns} or None for one pair per block")
        mapping = [mapping[s] for _, s in uniform_mapping(n_pairs, ns)]

    pairs, lines = [], []
    for i, j in mapping:
        pairs.append(Pair(student=s_names[i], teacher=t_names[j], loss=loss, adapter=adapter, weight=weight,
                          **pair_kwargs))
        lines.append(f"student {s_names[i]} ({i + 1}/{ns}) <-> teacher {t_names[j]} ({j + 1}/{nt}): "
                     f"relative depth {(i + 1) / ns:.2f} / {(j + 1) / nt:.2f}")
    keys = [p.key for p in pairs]
    assert len(set(keys)) == len(keys), keys  # student blocks are distinct, so keys are too
    return pairs, lines
