"""Relational losses: they compare relations among the batch's samples (``[B, B]`` similarities and distances,
``[B, B, B]`` angles), so student and teacher widths and positions may differ and no adapter is needed (the
``'auto'`` adapter is the identity).

Each takes student ``[B, ...]`` and teacher ``[B, ...]`` features (any trailing shapes, e.g. maps
``[B, C, H, W]``, tokens ``[B, N, C]`` or vectors ``[B, C]``), flattens them to ``[B, D_s]`` and ``[B, D_t]``
and returns a scalar. The math runs in float32 with autocast off, so half-precision Gram matrices cannot
overflow. The teacher side is a fixed target (detached, as the references compute it under ``no_grad``). A batch
of one sample has no relations: every loss is then 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from .base import LOSSES, declares


def _float32(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``fn`` with autocast disabled on the inputs' device, so its matmuls stay in float32."""

    @functools.wraps(fn)
    def run(student: torch.Tensor, teacher: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        device = student.device.type
        if not torch.amp.is_autocast_available(device):
            return fn(student, teacher, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(student, teacher, *args, **kwargs)

    return run


def _vectors(student: torch.Tensor, teacher: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, ...]`` features as float32 ``[B, D]`` rows; the teacher detached."""
    if student.dim() < 1 or teacher.dim() < 1 or student.shape[0] != teacher.shape[0]:
        raise ShapeError(f"{loss} compares relations among the same batch's samples: the student gives "
                         f"{list(student.shape)} and the teacher {list(teacher.shape)}, whose batch sizes differ.")
    return student.reshape(len(student), -1).float(), teacher.detach().reshape(len(teacher), -1).float()


@LOSSES.register("sp", "similarity_preserving")
@declares(relational=True)
@_float32
def similarity_preserving(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019) for ``[B, ...]`` vs ``[B, ...]``, any widths.

    With ``f`` the ``[B, D]`` flattened features, ``G = f f^T`` ``[B, B]`` is L2-normalised row by row and
    ``loss = ||G_s - G_t||_F^2 / B^2``, the mean over the ``B*B`` entries of the squared differences (the paper's
    Eq. and RepDistiller's ``Similarity``, whose reimplementation the first author verified; mdistiller's ``SP`` is
    the same. torchdistill 1.1.5's ``SPKDLoss`` calls ``normalize(G, 1)``, whose ``1`` is the norm's order: it
    L1-normalises the rows; with L2 rows and ``reduction='batchmean'`` it agrees, see
    ``benchmarks/losses_vs_torchdistill.py``).

    Invariant to a global positive scale and to orthogonal maps of the features, not to per-sample scales.
    RepDistiller trains it with weight ``-b 3000`` on the last block's map; the ``Pair``'s ``weight`` is yours to
    set.
    """
    s, t = _vectors(student, teacher, "sp")
    g_s = F.normalize(s @ s.T, dim=1)
    g_t = F.normalize(t @ t.T, dim=1)
    return (g_s - g_t).pow(2).mean()


def _distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``[B, B]`` Euclidean distances, squared distances clamped at ``eps`` before the sqrt, diagonal 0,
    divided by their mean over the ``B*(B-1)`` non-diagonal pairs."""
    sq = x.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(eps).sqrt()
    d = d.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
    n_pairs = max(len(x) * (len(x) - 1), 1)
    return d / (d.sum() / n_pairs).clamp_min(eps)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """``[B, B, B]``: entry ``[i, j, k]`` is the cosine of the angle at ``x_i`` between ``x_j`` and ``x_k``,
    ``<n(x_j - x_i), n(x_k - x_i)>`` with ``n(v) = v / max(||v||, 1e-12)`` (0 when ``j == i`` or ``k == i``)."""
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # e[i, j] = n(x_j - x_i)
    return e @ e.transpose(1, 2)


@LOSSES.register("rkd", "relational_kd")
@declares(relational=True)
@_float32
def relational_kd(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
                  angle_weight: float = 50.0, eps: float = 1e-12) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019), distance and angle terms, for ``[B, ...]`` vs ``[B, ...]``.

    ``loss = distance_weight * huber(psi_D(s), psi_D(t)) + angle_weight * huber(psi_A(s), psi_A(t))``:

    - ``psi_D`` ``[B, B]``: pairwise Euclidean distances (squared distances clamped at ``eps`` before the
      sqrt, diagonal 0) divided by their mean over the non-diagonal pairs.
    - ``psi_A`` ``[B, B, B]``: cosines of the angles formed by every triplet (see :func:`_angles`).
    - ``huber`` is smooth-L1 (Huber, delta 1) averaged over all ``B*B`` resp. ``B*B*B`` entries, the diagonal
      and degenerate triplets (repeated index, cosine 0 or 1 on both sides) included, as in the authors' code.

    Follows the authors' code (``lenscloth/RKD`` ``RkdDistance`` / ``RKdAngle``, ``pdist`` eps 1e-12) and its
    RepDistiller / mdistiller ports, whose weights 25 and 50 are the defaults here (the authors' metric-learning
    runs use 1 and 2). A term with weight 0 is skipped. Invariant to translation, rotation and a global scale.
    The angle term holds ``[B, B, D]`` differences: memory grows as ``B^2 * D``.
    """
    s, t = _vectors(student, teacher, "rkd")
    loss = s.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * F.smooth_l1_loss(_distances(s, eps), _distances(t, eps))
    if angle_weight:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


def _conditional_probabilities(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``[B, B]`` rows ``P[i, j] = K[i, j] / sum_k K[i, k]`` of the cosine kernel ``K = (x^ x^T + 1) / 2``,
    ``x^ = x / (||x|| + eps)``."""
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    k = (x @ x.T + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


@LOSSES.register("pkt", "probabilistic_kt")
@declares(relational=True)
@_float32
def probabilistic_kt(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) for ``[B, ...]`` vs ``[B, ...]``.

    Rows are L2-normalised (``x / (||x|| + eps)``), the cosine kernel is mapped to ``[0, 1]`` by ``(K + 1) / 2``
    and each row is divided by its sum: conditional probabilities ``P[i, j]`` ``[B, B]`` (diagonal included).
    ``loss = sum_ij P_t[i, j] * log((P_t[i, j] + eps) / (P_s[i, j] + eps)) / B^2``: KL(teacher || student) of
    each row, summed, averaged over the ``B`` rows and divided by ``B`` once more, i.e. the mean over the
    ``B*B`` entries, exactly the reduction of the authors' code (``passalis/probabilistic_kt``
    ``cosine_similarity_loss``, eps 1e-7), which RepDistiller, torchdistill and mdistiller copy.

    Invariant to per-sample positive scales and orthogonal maps. RepDistiller trains it with weight
    ``-b 30000`` on the penultimate (pooled) features; the ``Pair``'s ``weight`` is yours to set.
    """
    s, t = _vectors(student, teacher, "pkt")
    p_s, p_t = _conditional_probabilities(s, eps), _conditional_probabilities(t, eps)
    return (p_t * ((p_t + eps) / (p_s + eps)).log()).mean()


def _taylor_rbf(x: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """``[B, B]`` Gaussian RBF ``exp(-gamma ||x^_i - x^_j||^2)`` of the L2-normalised rows ``x^``, as its
    ``order``-order Taylor expansion ``sum_p exp(-2 gamma) (2 gamma)^p / p! (x^_i . x^_j)^p``."""
    c = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    k = sum((2 * gamma) ** p / math.factorial(p) * c.pow(p) for p in range(order + 1))
    return math.exp(-2 * gamma) * k


@LOSSES.register("cc", "correlation_congruence")
@declares(relational=True)
@_float32
def correlation_congruence(student: torch.Tensor, teacher: torch.Tensor, gamma: float = 0.4,
                           order: int = 2) -> torch.Tensor:
    """Correlation congruence (Peng et al., ICCV 2019) for ``[B, ...]`` vs ``[B, ...]``, any widths.

    ``K[i, j] = sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (f_i . f_j)^p`` ``[B, B]``, the P-order Taylor
    expansion of the Gaussian RBF ``exp(-gamma ||f_i - f_j||^2)`` over L2-normalised embeddings ``f`` (the
    expansion equals the RBF only for unit vectors); ``loss = ||K_s - K_t||_F^2 / B^2``, the mean over the
    ``B*B`` entries of the squared differences. Paper defaults: ``gamma=0.4``, ``order`` (P) ``=2``.

    Follows the paper's L_CC (squared Frobenius norm over n^2) with normalised embeddings, as the widely used
    ``CC(gamma, P_order)`` modules do (e.g. FaceX-Zoo ``KDF/loss/cc.py``). torchdistill's ``CCKDLoss`` differs:
    it expands over unnormalised projected features and divides the plain (not squared) Frobenius distance by
    ``B^2``; RepDistiller's ``Correlation`` is another, equal-width form the authors emailed (no kernel).
    Invariant to per-sample positive scales and orthogonal maps.
    """
    if order < 0:
        raise ValueError(f"cc: the Taylor order must be >= 0, got {order}")
    s, t = _vectors(student, teacher, "cc")
    return (_taylor_rbf(s, gamma, order) - _taylor_rbf(t, gamma, order)).pow(2).mean()
