"""Layer pairs chosen by linear CKA (``pairs='cka'``, ``AutoPairs(by='cka')``): the pairing ``inspect`` shows.

On one fixed batch ``x [N, ...]`` both models run once (eval, no grad); the candidate layers of each
(:func:`~featdistill.analysis.layers.candidate_layers`: stages, else blocks) give the CKA matrix ``[S, T]``, and
:func:`~featdistill.analysis.cka.best_pairing` pairs every student layer with a teacher layer, in order, for the
highest total CKA. Each pair comes with its CKA for the plan, and one sentence says why. :func:`pair_cka` measures
what given pairs read (``inspect``, ``report.html``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..capture import uniform_mapping
from ..config import Pair
from ..errors import FeatdistillError
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
    x = _inputs(x)
    if _size(x) < MIN_SAMPLES:
        raise FeatdistillError(f"the CKA pairing needs a batch of at least {MIN_SAMPLES} samples to compare layers "
                               f"on, got {_size(x)}; pass a batch of training inputs (pairing_input=) or pair the "
                               "layers by depth (pairs='auto')")
    s_layers = list(student_layers or candidate_layers(student))
    t_layers = list(teacher_layers or candidate_layers(teacher))
    t_feats = layer_features(teacher, t_layers, x)
    s_feats = layer_features(student, s_layers, x)
    return s_layers, t_layers, cka_matrix(s_feats, t_feats).cpu()


def cka_pairs(teacher: nn.Module | None, student: nn.Module, x: Any, n_pairs: int | None = None, loss="mse",
              adapter="auto", weight: float = 1.0, **pair_kwargs) -> tuple[list[Pair], list[str]]:
    """Pair the student's candidate layers with the teacher's by linear CKA on ``x [N, ...]``.

    Args:
        teacher, student: the models (the teacher as trained, the student as it starts).
        x: the fixed batch both run on (a tensor, a dict of model inputs or a ``Batch``; at least ``MIN_SAMPLES``).
        n_pairs: keep this many student layers, evenly spaced and always including the last (as ``auto_pairs``),
            and pair those by CKA.
        loss, adapter, weight, **pair_kwargs: given to every ``Pair``.

    Returns:
        ``(pairs, notes)``: one note per pair (``"student blocks.1 (2/3) <-> teacher blocks.2 (3/3): CKA 0.81"``),
        then the mean CKA beside the uniform-depth pairing's, then why (``CKA_WHY``).
    """
    clash = sorted({"student", "teacher", "name"} & set(pair_kwargs))
    if clash:
        raise FeatdistillError(f"cka_pairs() sets {', '.join(clash)} itself; remove it from the arguments")
    if teacher is None:
        raise FeatdistillError("pairs='cka' measures the teacher's layers, but this teacher has no model; "
                               "pass the pairs explicitly")
    s_layers, t_layers, cka = measure_cka(teacher, student, x)
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
        notes.append(f"student {s_layers[i]} ({i + 1}/{ns}) <-> teacher {t_layers[j]} ({j + 1}/{nt}): "
                     f"CKA {float(cka[i, j]):.2f}")
    k = len(pairing)
    notes.append(f"mean CKA {pairing_score(cka, pairing) / k:.2f} on a fixed batch of {_size(_inputs(x))} inputs "
                 f"(uniform-depth pairing of the same layers: {pairing_score(cka, uniform) / k:.2f})")
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
