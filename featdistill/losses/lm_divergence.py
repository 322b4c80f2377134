"""Per-token divergences between a teacher's and a student's next-token distributions, with their gradients in
closed form, for the chunked language-model losses of :mod:`.lm`.

Every function takes one chunk of rows ``s, t [C, V]``: student and teacher logits already divided by the
temperature, in the compute dtype (fp32 or fp64). With ``p = softmax(s)`` (student), ``q = softmax(t)`` (teacher)
and ``KL(a || b) = sum_v a_v (log a_v - log b_v)``, each returns ``(loss [C], grad [C, V] or None)``, where
``grad = d loss_i / d s_i`` row by row (the caller scales it by ``T / N`` and by the upstream gradient).

The gradients follow from ``d/ds_j f(p) = p_j (g_j - sum_k p_k g_k)`` with ``g = df/dp`` (softmax's Jacobian):

- forward KL ``KL(q || p)``: ``p - q``;
- reverse KL ``KL(p || q)``: ``p * (log p - log q - KL)``;
- generalised JSD, ``m = beta q + (1 - beta) p``: ``(1 - beta) * p * (log(p/m) - KL(p || m))``;
- skew KL ``KL(q || m)``, ``m = a q + (1 - a) p``: ``(1 - a) * (p * sum_v(pq/m) - pq/m)``;
- skew reverse KL ``KL(p || m)``, ``m = a p + (1 - a) q``:
  ``p * (log(p/m) - KL(p || m)) - a * p * (p/m - sum_v(p^2/m))``.

Terms ``a * log(a / b)`` with ``a = 0`` count 0 (a class that is ``-inf`` in the logits, e.g. a padded vocabulary
column), so such columns never turn the loss into ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Rows = tuple[torch.Tensor, "torch.Tensor | None"]


def _plog(a: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``a * (log a - log b)`` elementwise, 0 where ``a == 0`` (``0 log 0 = 0``)."""
    return torch.where(a > 0, a * (log_a - log_b), 0.0)


def _mix(log_x: torch.Tensor, log_y: torch.Tensor, w: float) -> torch.Tensor:
    """``log(w x + (1 - w) y)`` from ``log x``, ``log y``, without leaving log space."""
    log_w = math.log(w) if w > 0 else -math.inf
    log_rest = math.log1p(-w) if w < 1 else -math.inf
    return torch.logaddexp(log_x + log_w, log_y + log_rest)


def forward_kl(s: torch.Tensor, t: torch.Tensor, with_grad: bool = True) -> Rows:
    """``KL(q || p)`` per row (Hinton's soft term, teacher first); grad ``p - q``."""
    log_p, log_q = s.log_softmax(-1), t.log_softmax(-1)
    q = log_q.exp()
    loss = _plog(q, log_q, log_p).sum(-1)
    return loss, (log_p.exp_().sub_(q) if with_grad else None)


def reverse_kl(s: torch.Tensor, t: torch.Tensor, with_grad: bool = True) -> Rows:
    """``KL(p || q)`` per row (student first, mode-seeking); grad ``p * (log p - log q - KL)``."""
    log_p, log_q = s.log_softmax(-1), t.log_softmax(-1)
    p = log_p.exp()
    terms = _plog(p, log_p, log_q)
    loss = terms.sum(-1)
    # p (log p - log q) is `terms`, so the gradient reuses it: terms - p * KL
    return loss, (terms.sub_(p * loss[:, None]) if with_grad else None)


def generalized_jsd(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5, with_grad: bool = True) -> Rows:
    """``beta KL(q || m) + (1 - beta) KL(p || m)``, ``m = beta q + (1 - beta) p``; ``beta = 0`` is the forward
    KL ``KL(q || p)`` and ``beta = 1`` the reverse KL ``KL(p || q)`` (TRL's convention; the divergence itself
    vanishes there, while ``JSD / beta -> KL(q || p)`` as ``beta -> 0`` and ``JSD / (1 - beta) -> KL(p || q)``
    as ``beta -> 1``)."""
    if beta == 0:
        return forward_kl(s, t, with_grad)
    if beta == 1:
        return reverse_kl(s, t, with_grad)
    log_p, log_q = s.log_softmax(-1), t.log_softmax(-1)
    log_m = _mix(log_q, log_p, beta)
    loss = beta * _plog(log_q.exp(), log_q, log_m).sum(-1)
    p = log_p.exp()
    terms = _plog(p, log_p, log_m)  # p log(p/m)
    kl_pm = terms.sum(-1)
    loss += (1 - beta) * kl_pm
    if not with_grad:
        return loss, None
    return loss, terms.sub_(p * kl_pm[:, None]).mul_(1 - beta)


def skew_kl(s: torch.Tensor, t: torch.Tensor, skew: float = 0.1, with_grad: bool = True) -> Rows:
    """DistiLLM's skew KL ``KL(q || a q + (1 - a) p)`` per row; ``a = 0`` is the forward KL."""
    log_p, log_q = s.log_softmax(-1), t.log_softmax(-1)
    log_m = _mix(log_q, log_p, skew)
    q = log_q.exp()
    loss = _plog(q, log_q, log_m).sum(-1)
    if not with_grad:
        return loss, None
    pq_m = torch.where(q > 0, (log_p + log_q - log_m).exp_(), 0.0)  # p q / m
    p = log_p.exp_()
    return loss, p.mul_(pq_m.sum(-1, keepdim=True)).sub_(pq_m).mul_(1 - skew)


def skew_reverse_kl(s: torch.Tensor, t: torch.Tensor, skew: float = 0.1, with_grad: bool = True) -> Rows:
    """DistiLLM's skew reverse KL ``KL(p || a p + (1 - a) q)`` per row; ``a = 0`` is the reverse KL."""
    log_p, log_q = s.log_softmax(-1), t.log_softmax(-1)
    log_m = _mix(log_p, log_q, skew)
    p = log_p.exp()
    terms = _plog(p, log_p, log_m)  # p log(p/m)
    loss = terms.sum(-1)
    if not with_grad:
        return loss, None
    p2_m = torch.where(p > 0, (2 * log_p - log_m).exp_(), 0.0)  # p^2 / m
    correction = p2_m.sub_(p * p2_m.sum(-1, keepdim=True)).mul_(skew)  # a p (p/m - sum p^2/m)
    return loss, terms.sub_(p.mul_(loss[:, None])).sub_(correction)


DIVERGENCES: dict[str, Callable[..., Rows]] = {
    "forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": generalized_jsd, "skew_kl": skew_kl,
    "skew_rkl": skew_reverse_kl,
}
