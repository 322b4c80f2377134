"""Linear CKA (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited") between layers,
and layer pairings chosen by it.

For features ``X [N, Dx]`` and ``Y [N, Dy]`` of the same N inputs (any ``[N, ...]`` is flattened per sample, so a
map ``[N, C, H, W]`` becomes ``[N, C*H*W]`` and tokens ``[N, L, C]`` become ``[N, L*C]``), with columns centred
(``X <- X - mean_n X``)::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)          (feature space, D x D products)
              = <K, L>_F / (||K||_F * ||L||_F),  K = X X^T, L = Y Y^T  (Gram form, N x N products)

The two are equal (``||Y^T X||_F^2 = tr(X^T Y Y^T X) = tr(K L)``); centring the columns of X is centring K as
``H K H`` with ``H = I - 11^T / N``. CKA lies in [0, 1], is 1 for identical inputs and is unchanged by an
orthogonal transform or an isotropic scaling of either side (not by a general invertible linear map). Products
run in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..capture import uniform_mapping

__all__ = ["best_pairing", "centered_gram", "cka_matrix", "flatten", "linear_cka", "pairing_score", "uniform_pairing"]


def flatten(x: torch.Tensor) -> torch.Tensor:
    """``[N, ...] -> [N, D]`` float64, one row per sample (a map ``'n c h w -> n (c h w)'``)."""
    if x.dim() < 1 or x.shape[0] < 2:
        raise ValueError(f"CKA needs features [N, ...] of at least 2 samples, got shape {list(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _centered(x: torch.Tensor) -> torch.Tensor:
    x = flatten(x)
    return x - x.mean(dim=0, keepdim=True)


def centered_gram(x: torch.Tensor) -> torch.Tensor:
    """``H K H`` for the linear kernel ``K = X X^T`` of ``x [N, ...]``: an ``[N, N]`` float64 matrix."""
    xc = _centered(x)
    return xc @ xc.T


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``x [N, ...]`` and ``y [N, ...]`` (same N); the Gram form when a feature dimension exceeds N
    (cheaper: ``N x N`` products), else the feature-space form. 0 when either side is constant over the batch."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same inputs: got {x.shape[0]} and {y.shape[0]} samples")
    xc, yc = _centered(x), _centered(y)
    n, dx, dy = xc.shape[0], xc.shape[1], yc.shape[1]
    if max(dx, dy) > n:
        k, l_ = xc @ xc.T, yc @ yc.T
        num, den = (k * l_).sum(), k.norm() * l_.norm()
    else:
        num = (yc.T @ xc).pow(2).sum()
        den = (xc.T @ xc).norm() * (yc.T @ yc).norm()
    return min(1.0, float(num / den)) if den > 0 else 0.0  # rounding can pass 1 by an ulp


def cka_matrix(student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[S, T]`` float64 CKA of every student layer (rows, in mapping order) with every teacher layer (columns).

    Each layer's centred Gram matrix ``[N, N]`` is computed once and normalised to unit Frobenius norm, so the
    whole matrix is one ``[S, N*N] @ [N*N, T]`` product. All features must share N."""
    def unit_grams(feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        grams = []
        for g in (centered_gram(f) for f in feats.values()):
            norm = g.norm()
            grams.append((g / norm if norm > 0 else g).flatten())
        return torch.stack(grams)

    if not student_feats or not teacher_feats:
        raise ValueError("cka_matrix needs at least one student and one teacher feature")
    sizes = {int(f.shape[0]) for f in [*student_feats.values(), *teacher_feats.values()]}
    if len(sizes) != 1:
        raise ValueError(f"all features must hold the same samples; got batch sizes {sorted(sizes)}")
    return (unit_grams(student_feats) @ unit_grams(teacher_feats).T).clamp_(0.0, 1.0)


def pairing_score(cka: torch.Tensor, pairing: Sequence[tuple[int, int]]) -> float:
    """The total CKA of ``pairing`` (``[(student_row, teacher_col), ...]``) on ``cka [S, T]``."""
    return float(sum(float(cka[i, j]) for i, j in pairing))


def uniform_pairing(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student layer ``i`` with the teacher layer at the same relative depth (TinyBERT's uniform mapping,
    :func:`featdistill.capture.uniform_mapping`: the last layers are always paired)."""
    return uniform_mapping(n_student, n_teacher)


def best_pairing(cka: torch.Tensor, strict: bool | None = None) -> list[tuple[int, int]]:
    """The order-preserving pairing of every student layer (rows of ``cka [S, T]``) to a teacher layer that
    maximises the total CKA: ``[(0, j_0), (1, j_1), ...]`` with ``j_0 < j_1 < ...`` (``strict``) or
    ``j_0 <= j_1 <= ...`` (two student layers may share a teacher layer). ``strict=None``: strict when
    ``S <= T``, where it is possible.

    Dynamic programming, O(S*T): ``best[i, j] = cka[i, j] + max_{j' < j (or <=)} best[i-1, j']``, then the path back
    from the best last cell. Ties go to the shallower teacher layer."""
    s, t = cka.shape
    if strict is None:
        strict = s <= t
    if strict and s > t:
        raise ValueError(f"a strictly increasing pairing of {s} student layers needs at least {s} teacher layers, "
                         f"got {t}")
    c = cka.detach().to(torch.float64).cpu()
    neg = float("-inf")
    best = torch.full((s, t), neg, dtype=torch.float64)
    back = torch.zeros((s, t), dtype=torch.long)
    best[0] = c[0]
    for i in range(1, s):
        run_max, run_arg = neg, -1  # max of best[i-1, :j] (strict) or best[i-1, :j+1], and where it is
        for j in range(t):
            if not strict and best[i - 1, j] > run_max:
                run_max, run_arg = float(best[i - 1, j]), j
            if run_arg >= 0 and run_max > neg:
                best[i, j], back[i, j] = c[i, j] + run_max, run_arg
            if strict and best[i - 1, j] > run_max:
                run_max, run_arg = float(best[i - 1, j]), j
    j = int(torch.argmax(best[s - 1]))  # argmax returns the first maximum: the shallower layer on ties
    path = [j]
    for i in range(s - 1, 0, -1):
        j = int(back[i, j])
        path.append(j)
    return list(enumerate(reversed(path)))
