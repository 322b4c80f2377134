"""Token-level logit distillation for language models: forward KL, reverse KL, generalised JSD and DistiLLM's skew
KLs between the next-token distributions of a student and a teacher, normalised per kept token.

Inputs are logits ``[B, T, V]`` (or rows ``[N, V]``) already aligned position by position (the caller shifts them
for next-token prediction), and which positions count: a keep ``mask [B, T]`` (true / 1 = a real token) and/or
``labels [B, T]`` (``-100`` = ignore). With ``p = softmax(s / T)`` (student), ``q = softmax(t / T)`` (teacher) and
``N`` the number of kept positions, every loss is ``T^2 / N * sum_kept D(q, p)``, so padding changes nothing.

``token_kd_loss`` computes it in chunks of ``chunk_tokens`` kept positions: each chunk's fp32 softmax intermediates
exist only while that chunk is computed, and the gradient w.r.t. the student logits is written chunk by chunk in
closed form (:mod:`.lm_divergence`) into one tensor of the student's dtype, which backward scales by the upstream
gradient. A 32K-vocabulary batch thus never holds an fp32 ``[B, T, V]`` copy, in forward or backward (the naive
autograd path, ``naive_token_kd_loss``, holds several). The teacher's logits get no gradient.

Registered in ``LOGIT_LOSSES`` for ``LogitKD(loss=...)``: ``forward_kl``, ``reverse_kl``, ``jsd`` (``gkd``),
``skew_kl``, ``skew_rkl``. Their temperature is ``LogitKD.temperature`` (default 4); the papers below use 1, so
``--set kd.temperature=1`` reproduces them.
"""

from __future__ import annotations

import torch

from ..errors import FeatdistillError
from .lm_divergence import DIVERGENCES
from .logit import LOGIT_LOSSES, LogitLoss

IGNORE_INDEX = -100  # a label nothing is predicted at (as PyTorch and Hugging Face); losses/ is a leaf room
CHUNK_ELEMENTS = 2**23  # default chunk: about 32 MB per fp32 intermediate, whatever the vocabulary


def kept_rows(shape: torch.Size, mask: torch.Tensor | None, labels: torch.Tensor | None,
              device: torch.device) -> torch.Tensor | None:
    """Indices ``[N]`` of the kept positions of logits ``shape = [..., V]`` flattened to rows (``mask`` true and
    ``labels != -100``), or None when every position counts (no mask, no labels)."""
    if mask is None and labels is None:
        return None
    keep = torch.ones(shape[:-1], dtype=torch.bool, device=device)
    if mask is not None:
        keep &= mask.to(device).bool().reshape(shape[:-1])
    if labels is not None:
        keep &= labels.to(device).reshape(shape[:-1]) != IGNORE_INDEX
    return keep.flatten().nonzero().squeeze(1)


def _check(loss: str, temperature: float, beta: float, skew: float, chunk_tokens: int | None) -> None:
    if loss not in DIVERGENCES:
        raise FeatdistillError(f"token_kd_loss: unknown loss {loss!r}; one of {', '.join(DIVERGENCES)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise FeatdistillError(f"{loss}: the temperature must be a number > 0, got {temperature!r}")
    for name, value in (("beta", beta), ("skew", skew)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise FeatdistillError(f"{loss}: {name} must be a number in [0, 1] (GKD: beta=0.5; DistiLLM: "
                                   f"skew=0.1), got {value!r}")
    if chunk_tokens is not None and (isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int)
                                     or chunk_tokens < 1):
        raise FeatdistillError(f"{loss}: chunk_tokens must be an integer >= 1 (None: about {CHUNK_ELEMENTS} "
                               f"logits per chunk), got {chunk_tokens!r}")


def _params(loss: str, beta: float, skew: float) -> dict:
    return {"jsd": {"beta": beta}, "skew_kl": {"skew": skew}, "skew_rkl": {"skew": skew}}.get(loss, {})


class _ChunkedTokenKD(torch.autograd.Function):
    """``T^2 / N * sum_i D(q_i, p_i)`` over the rows ``index`` of ``student, teacher [R, V]`` (all rows when
    ``index`` is None), chunk by chunk; forward also writes ``dL/d student [R, V]`` (student dtype, zero on rows
    left out), and backward returns it times the upstream gradient."""

    @staticmethod
    def forward(ctx, student, teacher, index, loss, params, temperature, chunk):
        n = student.shape[0] if index is None else index.numel()
        compute = torch.promote_types(student.dtype, torch.float32)
        want_grad = ctx.needs_input_grad[0]
        grad = None
        if want_grad:  # rows left out get 0; when every row is computed, each is overwritten
            grad = torch.empty_like(student) if index is None else torch.zeros_like(student)
        total = torch.zeros((), dtype=compute, device=student.device)
        scale = temperature / max(n, 1)  # d(T^2 D(s/T) / N) / ds = (T / N) dD/d(s/T)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk) if index is None else index[start:start + chunk]
            s = student[rows].to(compute)
            t = teacher[rows].to(compute)
            if temperature != 1:
                s, t = s / temperature, t / temperature
            values, g = DIVERGENCES[loss](s, t, with_grad=want_grad, **params)
            total += values.sum()
            if want_grad:
                grad[rows] = g.mul_(scale).to(grad.dtype)
        ctx.grad, ctx.done = grad, False
        return total * (temperature**2 / max(n, 1))

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.done:
            raise RuntimeError("token_kd_loss keeps one gradient and hands it over in backward (in place, to save "
                               "memory), so it cannot run backward twice; recompute the loss instead")
        grad, ctx.grad, ctx.done = ctx.grad, None, True
        if grad is not None:
            grad.mul_(grad_output.to(grad.dtype))  # in place: the tensor goes to autograd, nothing else holds it
        return grad, None, None, None, None, None, None


def token_kd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, loss: str = "forward_kl", temperature: float = 1.0,
                  beta: float = 0.5, skew: float = 0.1, chunk_tokens: int | None = None) -> torch.Tensor:
    """Token-level KD of ``student`` to ``teacher`` logits ``[B, T, V]`` (or ``[N, V]``), averaged over the kept
    positions (``mask [B, T]`` true and ``labels [B, T]`` not -100; all when both are None), computed in chunks
    of ``chunk_tokens`` positions (None: about ``2**23`` logits per chunk). ``loss`` is one of
    ``'forward_kl', 'reverse_kl', 'jsd', 'skew_kl', 'skew_rkl'`` (see :mod:`.lm_divergence`); ``beta`` is the
    JSD's teacher weight, ``skew`` DistiLLM's ``a``. Returns a scalar in fp32 (fp64 for fp64 inputs); 0 when no
    position is kept. Only ``student`` gets a gradient, in its own dtype."""
    _check(loss, temperature, beta, skew, chunk_tokens)
    if student.shape != teacher.shape:
        raise FeatdistillError(f"token_kd_loss: student logits {tuple(student.shape)} and teacher logits "
                               f"{tuple(teacher.shape)} must have the same shape [B, T, V]")
    index = kept_rows(student.shape, mask, labels, student.device)
    vocab = student.shape[-1]
    chunk = chunk_tokens or max(1, CHUNK_ELEMENTS // max(vocab, 1))
    rows_s, rows_t = student.reshape(-1, vocab), teacher.detach().reshape(-1, vocab)  # views when contiguous
    value = _ChunkedTokenKD.apply(rows_s, rows_t, index, loss, _params(loss, beta, skew), float(temperature), chunk)
    return value


def naive_token_kd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                        labels: torch.Tensor | None = None, loss: str = "forward_kl", temperature: float = 1.0,
                        beta: float = 0.5, skew: float = 0.1) -> torch.Tensor:
    """The same value as :func:`token_kd_loss` in one piece, differentiated by autograd: the reference for tests
    and the baseline of ``benchmarks/lm_loss_memory.py`` (it holds several fp32 ``[N, V]`` tensors)."""
    _check(loss, temperature, beta, skew, None)
    index = kept_rows(student.shape, mask, labels, student.device)
    vocab = student.shape[-1]
    s, t = student.reshape(-1, vocab), teacher.detach().reshape(-1, vocab)
    if index is not None:
        s, t = s[index], t[index]
    compute = torch.promote_types(student.dtype, torch.float32)
    values, _ = DIVERGENCES[loss](s.to(compute) / temperature, t.to(compute) / temperature, with_grad=False,
                                  **_params(loss, beta, skew))
    return values.sum() * (temperature**2 / max(values.numel(), 1))


class TokenKD(LogitLoss):
    """Base of the token-level losses: ``forward(student [N, V], teacher [N, V], labels=None)`` rows (the combiner
    flattens ``[B, T, V]`` and keeps the real tokens); ``masked_rows`` takes all rows and a keep mask instead, so
    the combiner can pass views rather than copies of the kept rows."""

    loss = "forward_kl"

    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None):
        super().__init__(temperature)
        self.chunk_tokens = chunk_tokens
        _check(self.loss, temperature, 0.5, 0.1, chunk_tokens)

    def options(self) -> dict:
        return {}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels=None) -> torch.Tensor:
        return self.masked_rows(student, teacher, None)

    def masked_rows(self, student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The loss over the rows of ``student, teacher [R, V]`` where ``keep [R]`` is true (all when None)."""
        return token_kd_loss(student, teacher, mask=keep, loss=self.loss, temperature=self.temperature,
                             chunk_tokens=self.chunk_tokens, **self.options())


@LOGIT_LOSSES.register("forward_kl")
class ForwardKL(TokenKD):
    """Forward KL per token, ``KL(q || p) * T^2`` (Hinton et al. 2015; the word-level KD of Kim & Rush 2016):
    ``'soft'``'s value on the same rows, computed in chunks with a closed-form gradient ``(p - q) T / N``."""

    formula = "KL(t||s; T={T})*T^2 per token"


@LOGIT_LOSSES.register("reverse_kl")
class ReverseKL(TokenKD):
    """Reverse KL per token, ``KL(p || q) * T^2``, the objective of MiniLLM (Gu et al., ICLR 2024), here exact over
    the vocabulary at each position rather than their policy-gradient estimate over sampled sequences."""

    loss = "reverse_kl"
    formula = "KL(s||t; T={T})*T^2 per token"


@LOGIT_LOSSES.register("jsd", "gkd")
class GeneralizedJSD(TokenKD):
    """Generalised JSD per token (GKD, Agarwal et al., ICLR 2024, eq. 1), in TRL's ``generalized_jsd_loss``
    convention: ``beta KL(q || m) + (1 - beta) KL(p || m)`` with ``m = beta q + (1 - beta) p``, times ``T^2``.

    ``beta`` weights the teacher: ``beta = 0`` is the forward KL ``KL(q || p)`` and ``beta = 1`` the reverse KL
    ``KL(p || q)`` (special cases, as in TRL: the JSD itself vanishes at both ends; ``JSD / beta -> KL(q || p)``).
    TRL divides by T but does not multiply by ``T^2``; at T = 1 (GKD's setting) the two agree.
    """

    loss = "jsd"
    formula = "JSD_beta(t, s; T={T})*T^2 per token"

    def __init__(self, temperature: float = 1.0, beta: float = 0.5, chunk_tokens: int | None = None):
        super().__init__(temperature, chunk_tokens)
        _check(self.loss, temperature, beta, 0.1, chunk_tokens)
        self.beta = float(beta)

    def options(self) -> dict:
        return {"beta": self.beta}

    def describe(self) -> str:
        return f"JSD_{self.beta:g}(t, s; T={self.temperature:g})*T^2 per token"


class _Skewed(TokenKD):
    """A DistiLLM skew divergence with its mixing weight ``skew`` (the paper's alpha, 0.1 by default)."""

    def __init__(self, temperature: float = 1.0, skew: float = 0.1, chunk_tokens: int | None = None):
        super().__init__(temperature, chunk_tokens)
        _check(self.loss, temperature, 0.5, skew, chunk_tokens)
        self.skew = float(skew)

    def options(self) -> dict:
        return {"skew": self.skew}

    def describe(self) -> str:
        mixed = self.formula.replace("(1-a)*", f"{1 - self.skew:g}*").replace("a*", f"{self.skew:g}*")
        return mixed.format(T=f"{self.temperature:g}")


@LOGIT_LOSSES.register("skew_kl")
class SkewKL(_Skewed):
    """Skew forward KL per token, ``KL(q || a q + (1 - a) p) * T^2`` (DistiLLM, Ko et al., ICML 2024; ``a = 0.1``);
    ``a = 0`` is the forward KL. Bounded by ``log(1/a)``, so rare teacher tokens cannot blow it up."""

    loss = "skew_kl"
    formula = "KL(t||a*t+(1-a)*s; T={T})*T^2 per token"


@LOGIT_LOSSES.register("skew_rkl")
class SkewReverseKL(_Skewed):
    """Skew reverse KL per token, ``KL(p || a p + (1 - a) q) * T^2`` (DistiLLM, Ko et al., ICML 2024; ``a = 0.1``);
    ``a = 0`` is the reverse KL."""

    loss = "skew_rkl"
    formula = "KL(s||a*s+(1-a)*t; T={T})*T^2 per token"


__all__ = ["ForwardKL", "GeneralizedJSD", "ReverseKL", "SkewKL", "SkewReverseKL", "TokenKD", "naive_token_kd_loss",
           "token_kd_loss", "kept_rows"]
