"""Layer pairs chosen by linear CKA (``pairs='cka'``, ``AutoPairs(by='cka')``): the pairing ``inspect`` shows.

On one fixed batch ``x [N, ...]`` both models run once (eval, no grad); the candidate layers of each
(:func:`~featdistill.analysis.layers.candidate_layers`: stages, else blocks) give the CKA matrix ``[S, T]``, and
:func:`~featdistill.analysis.cka.best_pairing` pairs every student layer with a teacher layer, in order, for the
highest total CKA. Each pair comes with its CKA for the plan, and one sentence says why. :func:`pair_cka` measures
what given pairs read (``inspect``, ``report.html``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..capture import uniform_mapping
from ..config import Pair
from ..errors import FeatdistillError
from ..losses import LOSSES
from .cka import best_pairing, cka_matrix, linear_cka, pairing_score
from .layers import candidate_layers, layer_features, pair_features

__all__ = ["CKA_TITLE", "CKA_WHY", "MIN_SAMPLES", "cka_pairs", "measure_cka", "pair_cka"]

MIN_SAMPLES = 8  # centred over fewer samples, every layer looks alike (N=2: rank 1, CKA 1 wherever it is defined)
CKA_TITLE = "pairs chosen automatically by linear CKA (the pairing `python -m featdistill.inspect` shows):"
CKA_WHY = ("why: each student layer learns, in order, from the teacher layer whose representation of the same "
           "images it already resembles most (highest total linear CKA), so every feature term starts from a "
           "target the student can reach rather than from a layer matched only by relative depth.")


def _inputs(x: Any) -> Any:
    """A tensor ``[N, ...]`` or a dict of model inputs; a ``Batch`` gives its inputs."""
    return x.inputs if hasattr(x, "inputs") and hasattr(x, "run") else x


def _size(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, dict) else x
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 0


def measure_cka(teacher: nn.Module, student: nn.Module, x: Any, student_layers: Sequence[str] | None = None,
                teacher_layers: Sequence[str] | None = None) -> tuple[list[str], list[str], torch.Tensor]:
    """``(student layers, teacher layers, cka [S, T] float64 on the CPU)`` on the batch ``x [N, ...]`` (a tensor or a
    dict of model inputs); the layers default to each model's candidates (stages, else blocks)."""
    s_feats, t_feats = _features(teacher, student, x, student_layers, teacher_layers)
    return list(s_feats), list(t_feats), cka_matrix(s_feats, t_feats).cpu()


def _features(teacher: nn.Module, student: nn.Module, x: Any, student_layers: Sequence[str] | None = None,
              teacher_layers: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``({student layer: feature [N, ...]}, {teacher layer: feature [N, ...]})``, shallow -> deep, one eval forward
    of each model on ``x``."""
    x = _inputs(x)
    if _size(x) < MIN_SAMPLES:
        raise FeatdistillError(f"the CKA pairing needs a batch of at least {MIN_SAMPLES} samples to compare layers "
                               f"on, got {_size(x)}; pass a batch of training inputs (pairing_input=) or pair the "
                               "layers by depth (pairs='auto')")
    s_layers = list(student_layers or candidate_layers(student))
    t_layers = list(teacher_layers or candidate_layers(teacher))
    t_feats = layer_features(teacher, t_layers, x)
    s_feats = layer_features(student, s_layers, x)
    return {n: s_feats[n] for n in s_layers}, {n: t_feats[n] for n in t_layers}


def _positions(feat: torch.Tensor) -> int:
    """Positions of one sample of ``feat [N, ...]``: H*W of maps ``[N, C, H, W]``, T of tokens ``[N, T, C]``, 1 of
    vectors ``[N, C]`` (the product of the trailing dims of higher-rank maps ``[N, C, D, H, W]``)."""
    shape = tuple(feat.shape[1:])
    return shape[0] if len(shape) == 2 else math.prod(shape[1:])


def _channel_free(loss: Any) -> bool:
    """Whether ``loss`` (a registered name, a ``Loss`` class or instance, or a function marked by ``declares``)
    compares where energy sits across positions."""
    entry = LOSSES.get(loss) if isinstance(loss, str) else loss
    return bool(getattr(entry, "channel_free", False))


def cka_pairs(teacher: nn.Module | None, student: nn.Module, x: Any, n_pairs: int | None = None, loss="mse",
              adapter="auto", weight: float = 1.0, **pair_kwargs) -> tuple[list[Pair], list[str]]:
    """Pair the student's candidate layers with the teacher's by linear CKA on ``x [N, ...]``.

    Args:
        teacher, student: the models (the teacher as trained, the student as it starts).
        x: the fixed batch both run on (a tensor, a dict of model inputs or a ``Batch``; at least ``MIN_SAMPLES``).
        n_pairs: keep this many student layers, evenly spaced and always including the last (as ``auto_pairs``),
            and pair those by CKA.
        loss, adapter, weight, **pair_kwargs: given to every ``Pair``. A ``channel_free`` loss (attention
            transfer: it compares positions) leaves out the candidate layers, on both sides, whose feature has one
            position (maps ``[N, C, 1, 1]``, vectors ``[N, C]``): there its loss is always 0 and the plan refuses
            it. ``n_pairs`` then spaces over the remaining student layers (the last remaining one kept).

    Returns:
        ``(pairs, notes)``: one note per pair (``"student blocks.1 (2/3) <-> teacher blocks.2 (3/3): CKA 0.81"``,
        the depth among all candidates), then the mean CKA beside the uniform-depth pairing's, then the layers
        left out (if any), then why (``CKA_WHY``).

    Raises:
        FeatdistillError: a side has no candidate layer left for a ``channel_free`` loss (use another loss, e.g.
            ``loss='mse', normalize='teacher'``, or explicit pairs), a batch under ``MIN_SAMPLES``, a bad
            ``n_pairs``.
    """
    clash = sorted({"student", "teacher", "name"} & set(pair_kwargs))
    if clash:
        raise FeatdistillError(f"cka_pairs() sets {', '.join(clash)} itself; remove it from the arguments")
    if teacher is None:
        raise FeatdistillError("pairs='cka' measures the teacher's layers, but this teacher has no model; "
                               "pass the pairs explicitly")
    s_feats, t_feats = _features(teacher, student, x)
    depth = {"student": {n: (i, len(s_feats)) for i, n in enumerate(s_feats)},
             "teacher": {n: (i, len(t_feats)) for i, n in enumerate(t_feats)}}
    left_out = []
    if _channel_free(loss):  # one position: the normalised map is constant, the loss always 0 (the plan refuses it)
        name = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
        flat = {side: [n for n, f in feats.items() if _positions(f) == 1]
                for side, feats in (("student", s_feats), ("teacher", t_feats))}
        for side, feats in (("student", s_feats), ("teacher", t_feats)):
            if len(flat[side]) == len(feats):
                shapes = ", ".join(f"{n} {list(f.shape[1:])}" for n, f in feats.items())
                raise FeatdistillError(
                    f"pairs='cka' with loss={name!r}: every {side} candidate layer has a single position ({shapes}), "
                    f"but {name} compares positions, so its loss would always be 0; use another loss (e.g. "
                    "loss='mse' with normalize='teacher') or pass the pairs explicitly")
        s_feats = {n: f for n, f in s_feats.items() if n not in flat["student"]}
        t_feats = {n: f for n, f in t_feats.items() if n not in flat["teacher"]}
        if flat["student"] or flat["teacher"]:
            left_out.append(f"left out (one position: {name} compares positions): " + ", ".join(
                [f"student {n}" for n in flat["student"]] + [f"teacher {n}" for n in flat["teacher"]]))
    s_layers, t_layers, cka = list(s_feats), list(t_feats), cka_matrix(s_feats, t_feats).cpu()
    ns, nt = len(s_layers), len(t_layers)
    rows = list(range(ns))
    if n_pairs is not None:
        if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 1 <= n_pairs <= ns:
            raise FeatdistillError(f"n_pairs={n_pairs!r}, but the CKA pairing has {ns} student layers to choose from "
                                   f"({', '.join(s_layers)}); use 1 <= n_pairs <= {ns} or None")
        rows = [s for _, s in uniform_mapping(n_pairs, ns)]
    pairing = [(rows[r], j) for r, j in best_pairing(cka[rows])]
    uniform = [(i, j) for i, j in uniform_mapping(ns, nt) if i in rows]
    pairs, notes = [], []
    for i, j in pairing:
        pairs.append(Pair(student=s_layers[i], teacher=t_layers[j], loss=loss, adapter=adapter, weight=weight,
                          **pair_kwargs))
        (si, sn), (ti, tn) = depth["student"][s_layers[i]], depth["teacher"][t_layers[j]]
        notes.append(f"student {s_layers[i]} ({si + 1}/{sn}) <-> teacher {t_layers[j]} ({ti + 1}/{tn}): "
                     f"CKA {float(cka[i, j]):.2f}")
    k = len(pairing)
    notes.append(f"mean CKA {pairing_score(cka, pairing) / k:.2f} on a fixed batch of {_size(_inputs(x))} inputs "
                 f"(uniform-depth pairing of the same layers: {pairing_score(cka, uniform) / k:.2f})")
    notes += left_out
    notes.append(CKA_WHY)
    return pairs, notes


def pair_cka(pairs: Sequence[Pair], teacher: nn.Module, student: nn.Module, x: torch.Tensor,
             t_feats: list[torch.Tensor] | None = None) -> tuple[dict[str, float], list[torch.Tensor]]:
    """``{label: CKA}`` of what each pair reads on ``x [N, ...]`` (one entry per level of a multi-layer pair, the
    capture kind in brackets when not the output), and the teacher's features (reusable for another student)."""
    t_feats = pair_features(teacher, pairs, "teacher", x) if t_feats is None else t_feats
    s_feats = pair_features(student, pairs, "student", x)
    labels = []
    for p in pairs:
        kind = "" if p.capture == "output" else f" ({p.capture})"
        levels = min(len(p.layers("student")), len(p.layers("teacher")))
        labels += [f"{p.key}{f'[{i}]' if p.multi_layer else ''}{kind}" for i in range(levels)]
    return {label: linear_cka(s, t) for label, s, t in zip(labels, s_feats, t_feats)}, t_feats
