"""Contrastive losses: CRD (Tian, Krishnan & Isola, ICLR 2020, "Contrastive Representation Distillation").

CRD maps both sides into one small space through its own projection heads and contrasts each sample against
thousands of other training samples kept in two memory banks (one per side), so it needs every batch's sample
indices (``needs_index``) and the size of the training set (``num_samples``, filled in by the runner).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatdistillError, ShapeError
from .base import LOSSES, Loss

_EPS = 1e-7  # added to the NCE denominators, as in the reference code


def _width(shape: Sequence[int]) -> int:
    """Features per sample once ``[...]`` (no batch dim) is flattened."""
    return math.prod(int(d) for d in shape)


def _unit_rows(n: int, dim: int) -> torch.Tensor:
    """``[n, dim]`` bank initialisation: uniform in ``[-stdv, stdv]``, ``stdv = 1 / sqrt(dim / 3)`` (so each
    entry has variance ``1 / dim`` and each row a norm near 1)."""
    stdv = 1.0 / math.sqrt(dim / 3)
    return torch.rand(n, dim).mul_(2 * stdv).sub_(stdv)


@LOSSES.register("crd")
class CRD(Loss):
    """Contrastive representation distillation for student ``[B, ...]`` and teacher ``[B, ...]`` features of any
    widths (flattened to ``[B, D_s]`` and ``[B, D_t]``), with ``index`` ``[B]`` their dataset indices.

    Embeddings: ``s = n(W_s f_s + b_s)``, ``t = n(W_t f_t + b_t)`` ``[B, F]`` (``F = feat_dim``, ``n`` the L2
    normalisation); both heads train with the student, the teacher features are detached. Two banks of
    ``N = num_samples`` rows of ``F`` hold a running embedding of every training sample: ``M_s`` the student's,
    ``M_t`` the teacher's. For sample ``i`` let ``j_0 = index[i]`` (the positive) and ``j_1..j_K`` its ``K``
    negatives; with temperature ``T``:

        h_s[i, k] = exp(<s_i, M_t[j_k]> / T) / Z_s        (student anchor, teacher bank)
        h_t[i, k] = exp(<t_i, M_s[j_k]> / T) / Z_t        (teacher anchor, student bank)
        L(h) = -1/B sum_i [ log(h[i, 0] / (h[i, 0] + K/N + eps))
                            + sum_{k=1..K} log((K/N) / (h[i, k] + K/N + eps)) ]
        loss = L(h_s) + L(h_t)

    the NCE objective of the paper with noise distribution ``P_n = 1/N`` (eps ``1e-7``). Each ``Z`` is estimated
    once, from the first training batch, as ``N * mean(exp(<., .> / T))`` over its ``B x (K + 1)`` scores, then
    fixed. After the scores, the rows of the batch are updated without gradient:
    ``M_s[index] = n(m * M_s[index] + (1 - m) * s)`` and likewise ``M_t`` with ``t`` (``m = nce_mom``). Banks
    start uniform in ``[-stdv, stdv]``, ``stdv = 1 / sqrt(F / 3)``.

    Defaults are the paper's: ``feat_dim=128``, ``nce_k=16384`` negatives (capped at ``num_samples - 1``),
    ``nce_t=0.07``, ``nce_mom=0.5``. RepDistiller pairs the penultimate (pooled) features with ``-b 0.8``
    beside the task term (plus ``-a 1`` logit KD for CRD+KD); the ``Pair``'s ``weight`` is yours to set.

    Declared needs: ``needs_index``; and ``relational``, which here means what the Distiller draws from it: widths
    and positions may differ, the ``'auto'`` adapter is the identity (the projection heads are the adapter) and
    shapes need not match. The banks and both ``Z`` (``z``: ``[Z_s, Z_t]``, ``-1`` until estimated) are buffers,
    so ``state_dict`` and checkpoints carry them and a resumed run continues exactly; negatives are drawn from the
    global torch RNG of the banks' device, which the trainer's checkpoints save too.

    Follows the authors' code (HobbitLong/RepDistiller ``crd/criterion.py``, ``crd/memory.py``), except:

    - Negatives are drawn uniformly with replacement from the ``N - 1`` other samples: never the positive
      itself (the reference's uniform draw may hit it by chance). Its CIFAR-100 loader instead draws negatives
      from other classes (``--mode exact``); pass ``negatives=`` ``[B, K]`` to ``forward`` for such a scheme.
    - The banks and ``Z`` change only in training mode; in eval mode the loss reads them (an unset ``Z`` is
      estimated for that batch alone), so evaluating never moves the memory.
    - L2 normalisation clamps the norm at ``1e-12`` (``F.normalize``); an index outside ``[0, N)`` is an error
      naming ``num_samples``.
    - Under ``DistributedDataParallel`` each rank updates its bank rows from its own batch only (and DDP's buffer
      broadcast keeps rank 0's banks); the reference is single-GPU.

    The indices of one batch should be distinct (an epoch's loader gives each sample once): a repeated index
    updates its bank row from one of its copies, unspecified which.

    Memory: two ``N x F`` float32 banks (50k samples: 51 MB) and ``[B, K + 1, F]`` gathered rows per step.
    """

    relational = True  # any widths, identity adapter: see the docstring
    needs_index = True

    def __init__(self, student_dim: int, teacher_dim: int, num_samples: int, feat_dim: int = 128,
                 nce_k: int = 16384, nce_t: float = 0.07, nce_mom: float = 0.5):
        super().__init__()
        problems = []
        if not isinstance(num_samples, int) or num_samples < 2:
            problems.append(f"num_samples must be the number of training samples (an integer >= 2), got "
                            f"{num_samples!r}")
        for name, value in (("feat_dim", feat_dim), ("nce_k", nce_k), ("student_dim", student_dim),
                            ("teacher_dim", teacher_dim)):
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not nce_t > 0:
            problems.append(f"nce_t (the temperature) must be > 0, got {nce_t!r}")
        if not 0 <= nce_mom < 1:
            problems.append(f"nce_mom (the bank momentum) must be in [0, 1), got {nce_mom!r}")
        if problems:
            raise FeatdistillError("crd: " + "; ".join(problems))
        self.num_samples, self.feat_dim, self.nce_t, self.nce_mom = num_samples, feat_dim, float(nce_t), nce_mom
        self.nce_k = min(nce_k, num_samples - 1)
        self.embed_s = nn.Linear(student_dim, feat_dim)
        self.embed_t = nn.Linear(teacher_dim, feat_dim)
        self.register_buffer("bank_s", _unit_rows(num_samples, feat_dim))
        self.register_buffer("bank_t", _unit_rows(num_samples, feat_dim))
        self.register_buffer("z", torch.full((2,), -1.0))

    @classmethod
    def build(cls, student_shape: Sequence[int], teacher_shape: Sequence[int], num_samples: int | None = None,
              **kwargs: Any) -> CRD:
        if num_samples is None:
            raise FeatdistillError(
                "crd keeps a memory bank row for every training sample, so it needs their number: "
                "Pair(..., loss='crd', loss_kwargs=dict(num_samples=len(train_dataset))) (the runner, "
                "python -m featdistill.run, fills it in from the training split)")
        return cls(_width(student_shape), _width(teacher_shape), num_samples, **kwargs)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, feat_dim={self.feat_dim}, nce_k={self.nce_k}, "
                f"nce_t={self.nce_t:g}, nce_mom={self.nce_mom:g}")

    # -- pieces -------------------------------------------------------------------------------------------------
    def embed(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, ...]`` features -> unit ``[B, F]`` embeddings ``(s, t)`` (teacher features detached)."""
        s = self.embed_s(student.reshape(len(student), -1).float())
        t = self.embed_t(teacher.detach().reshape(len(teacher), -1).float())
        return F.normalize(s, dim=1), F.normalize(t, dim=1)

    def sample_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` indices drawn uniformly with replacement from ``[0, N)`` minus each row's own ``index``."""
        draw = torch.randint(0, self.num_samples - 1, (len(index), self.nce_k), device=index.device)
        return draw + (draw >= index[:, None]).long()  # skip the positive: uniform over the N - 1 others

    def _check_index(self, index: Any, batch: int) -> torch.Tensor:
        if index is None:
            raise FeatdistillError("crd needs each sample's dataset index: call loss(student, teacher, index=...) "
                                   "or have the loader yield (x, y, index) (make_loaders(..., with_index=True))")
        index = torch.as_tensor(index, device=self.bank_s.device)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.shape != (batch,):
            raise ShapeError(f"crd: index must be {batch} integer dataset indices [B], got "
                             f"{index.dtype} {list(index.shape)}")
        index = index.long()
        if bool(((index < 0) | (index >= self.num_samples)).any()):
            bad = index[(index < 0) | (index >= self.num_samples)]
            raise FeatdistillError(
                f"crd: sample index {int(bad[0])} is outside the memory bank [0, num_samples={self.num_samples}). "
                "Set loss_kwargs num_samples to the size of the training split the indices come from (the runner "
                "does this), and index samples by their position in it")
        return index

    def _scores(self, anchor: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, side: int) -> torch.Tensor:
        """``[B, K + 1]`` ``exp(<anchor_i, bank[rows[i, k]]> / T) / Z``, estimating ``Z`` if it is unset."""
        weights = bank[rows.reshape(-1)].view(*rows.shape, -1).float()  # [B, K + 1, F], no gradient (a buffer)
        scores = torch.exp(torch.einsum("bkf,bf->bk", weights, anchor) / self.nce_t)
        z = self.z[side]
        if z < 0:
            z = scores.detach().mean() * self.num_samples
            if self.training:
                self.z[side] = z
        return scores / z

    def nce(self, h: torch.Tensor) -> torch.Tensor:
        """The NCE loss of ``[B, K + 1]`` normalised scores (column 0 the positive), noise ``P_n = 1/N``."""
        noise = (h.shape[1] - 1) / self.num_samples  # K * P_n
        positive = torch.log(h[:, 0] / (h[:, 0] + noise + _EPS))
        negative = torch.log(noise / (h[:, 1:] + noise + _EPS))
        return -(positive.sum() + negative.sum()) / len(h)

    @torch.no_grad()
    def _update(self, bank: torch.Tensor, index: torch.Tensor, embedding: torch.Tensor) -> None:
        mixed = bank[index] * self.nce_mom + embedding.detach() * (1 - self.nce_mom)
        bank.index_copy_(0, index, F.normalize(mixed, dim=1).to(bank.dtype))

    # -- the loss -----------------------------------------------------------------------------------------------
    def forward(self, student: torch.Tensor, teacher: torch.Tensor, index: torch.Tensor | None = None,
                negatives: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar CRD loss of student ``[B, ...]`` vs teacher ``[B, ...]``; ``index`` ``[B]`` their dataset
        indices; ``negatives`` optional ``[B, K]`` bank rows to contrast with (default: drawn uniformly)."""
        if student.dim() < 1 or teacher.dim() < 1 or len(student) != len(teacher):
            raise ShapeError(f"crd contrasts the same samples on both sides: the student gives {list(student.shape)}"
                             f" and the teacher {list(teacher.shape)}, whose batch sizes differ")
        index = self._check_index(index, len(student))
        if negatives is None:
            negatives = self.sample_negatives(index)
        else:
            negatives = torch.as_tensor(negatives)
            if negatives.dim() != 2 or len(negatives) != len(index):
                raise ShapeError(f"crd: negatives must be [B={len(index)}, K] bank rows, got {list(negatives.shape)}")
            negatives = self._check_index(negatives.reshape(-1), negatives.numel()).view(negatives.shape)
        rows = torch.cat([index[:, None], negatives], dim=1)  # [B, K + 1], column 0 the positive
        device = student.device.type
        no_autocast = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) \
            else contextlib.nullcontext()
        with no_autocast:  # float32 embeddings and scores: exp(1 / 0.07) overflows float16
            s, t = self.embed(student, teacher)
            loss = self.nce(self._scores(s, self.bank_t, rows, 0)) + self.nce(self._scores(t, self.bank_s, rows, 1))
        if self.training:
            self._update(self.bank_s, index, s)
            self._update(self.bank_t, index, t)
        return loss

