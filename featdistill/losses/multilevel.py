"""Multi-level losses: one term over several layers of each network (``Loss.multi_layer``), declared as
``Pair(student=("layer1", "layer2", "layer3"), teacher=("layer1", "layer2", "layer3"), loss="review_kd")``.

- ``review_kd`` (``reviewkd``, :class:`ReviewKD`): knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021): attention-
  based fusion of the student's levels from deep to shallow, then the hierarchical context loss
  (:func:`hierarchical_context_loss`) against the teacher's levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatdistillError, ShapeError
from .base import LOSSES, Loss

PYRAMID = (4, 2, 1)  # the reference's pooled sizes


def hcl_level(student: torch.Tensor, teacher: torch.Tensor, pyramid: Sequence[int] = PYRAMID) -> torch.Tensor:
    """The hierarchical context loss of one level: maps ``[B, C, H, W]`` of equal shapes -> scalar.

    ``(mse(s, t) + sum_k w_k * mse(pool_k(s), pool_k(t))) / (1 + sum_k w_k)``, with ``pool_k`` the adaptive
    average pool to ``l_k x l_k`` for each ``l_k`` in ``pyramid`` smaller than the map (``l < min(H, W)``) and
    ``w_k = 1/2, 1/4, 1/8`` for the first, second, third size kept: the weights ``1, 0.5, 0.25, 0.125`` normalised
    by their sum (on a 2x2 map only ``1x1`` is kept: ``(mse + 0.5 * mse_1x1) / 1.5``). ``mse`` is the mean over
    every element; float32.
    """
    if student.shape != teacher.shape or student.dim() != 4:
        raise ShapeError(f"the hierarchical context loss compares maps [B, C, H, W] of equal shapes; got student "
                         f"{list(student.shape)} and teacher {list(teacher.shape)}")
    s, t = student.float(), teacher.float()
    loss, weight, total = F.mse_loss(s, t), 1.0, 1.0
    for size in pyramid:
        if size >= min(s.shape[-2:]):
            continue
        weight /= 2
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
        total += weight
    return loss / total


def hierarchical_context_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor],
                              pyramid: Sequence[int] = PYRAMID) -> torch.Tensor:
    """ReviewKD's HCL: the sum over levels of :func:`hcl_level` (lists of equal-shaped maps ``[B, C_i, H_i, W_i]``)."""
    if len(students) != len(teachers) or not students:
        raise ShapeError(f"the hierarchical context loss needs one teacher map per student map; got {len(students)} "
                         f"and {len(teachers)}")
    return sum(hcl_level(s, t, pyramid) for s, t in zip(students, teachers))


class ABF(nn.Module):
    """Attention-based fusion of one level. ``x`` ``[B, C_in, H, W]`` -> 1x1 conv + BN -> ``m`` ``[B, mid, H, W]``;
    unless this is the deepest level, the deeper level's fused feature ``r`` is resized (nearest) to ``H, W`` and
    ``a = sigmoid(conv1x1(concat(m, r)))`` ``[B, 2, H, W]`` mixes them: ``m = m * a[:, 0] + r * a[:, 1]``. ``m`` is
    resized (nearest) to the teacher's size when it differs, then 3x3 conv + BN gives the output ``[B, C_out, H_t,
    W_t]``. Returns ``(output, m)``: ``m`` is the residual the next, shallower level fuses."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        for conv in (self.reduce[0], self.output[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)  # as the reference code

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            att = self.attention(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.output(x), x


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """Maps ``[B, C, H, W]`` as they are; pooled vectors ``[B, C]`` as ``[B, C, 1, 1]`` (the reference's last level)."""
    return x[:, :, None, None] if x.dim() == 2 else x


@LOSSES.register("review_kd", "reviewkd")
class ReviewKD(Loss):
    """Knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021): the
    student's level ``i`` learns from the teacher's level ``i`` *and* its own deeper levels, through attention-based
    fusion (ABF) from deep to shallow, and the hierarchical context loss (HCL) compares each fused output with the
    teacher's level at several pooled scales.

    Inputs (a ``Pair`` with tuples of names, shallow -> deep): ``students`` ``[S_1..S_L]`` with ``S_i`` ``[B, C_s_i,
    H_i, W_i]`` and ``teachers`` ``[T_1..T_L]`` with ``T_i`` ``[B, C_t_i, H'_i, W'_i]``; widths may differ, pooled
    vectors ``[B, C]`` count as ``1x1`` maps. With one :class:`ABF` per level, from the deepest::

        O_L, R_L = ABF_L(S_L)                  # conv1x1+BN -> R_L; conv3x3+BN -> O_L [B, C_t_L, H'_L, W'_L]
        O_i, R_i = ABF_i(S_i, R_{i+1})         # i = L-1..1: fuse with nearest-upsampled R_{i+1} by a 2-channel
                                               # sigmoid attention map, then conv3x3+BN -> O_i [B, C_t_i, H'_i, W'_i]
        loss = min(step / warmup_steps, 1) * sum_i hcl_level(O_i, T_i)    # see hcl_level for the pyramid

    ``mid_channel`` (the fused width) defaults to ``min(512, C_s_L)``, the deepest student width capped at 512 as
    both reference implementations compute it (the paper's figure uses 256; ``mid_channel=256`` reproduces it),
    which keeps the fusion small for small students. When the student's and the teacher's level ``i`` differ in
    spatial size, the fused feature is resized (nearest) to the teacher's ``H'_i, W'_i`` before the 3x3 conv, and
    that resized feature is the residual passed on, as in the reference code. Levels must be ordered shallow ->
    deep (spatial sizes not increasing), since each residual is upsampled into the shallower level.

    ``warmup_steps``: the reference ramps the term over its first 20 epochs (CIFAR; 1 on ImageNet). A loss sees no
    epochs, so ``steps`` counts training-mode calls (a buffer: checkpoints resume the ramp); 0, the default, means
    no ramp, as for ``dkd``: the trainer already warms up the learning rate. Reference weights: 1.0 (the authors'
    CIFAR script and mdistiller's default; mdistiller's CIFAR-100 config uses 5.0 and its ResNet-50 -> MobileNet
    8.0), with CE and no logit KD; set them through the ``Pair``'s ``weight`` and ``LogitKD``.

    The fusion modules are this loss's parameters: the Distiller trains, checkpoints and syncs them with the student.
    Differences from the reference code: levels are whatever layers the ``Pair`` names (the reference also appends
    the pooled feature as a 1x1 level: pair the pooling layer last to do the same); pyramid sizes are kept when
    ``l < min(H, W)`` (the reference tests ``H``: the same for square maps); sizes come from the captured tensors,
    not a config; the teacher is detached and the HCL runs in float32.
    """

    multi_layer = True

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], mid_channel: int | None = None,
                 warmup_steps: int = 0, pyramid: Sequence[int] = PYRAMID):
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ShapeError(f"review_kd needs as many teacher levels as student levels (at least one); got "
                             f"{len(student_channels)} and {len(teacher_channels)}")
        mid = min(512, int(student_channels[-1])) if mid_channel is None else mid_channel
        if isinstance(mid, bool) or not isinstance(mid, int) or mid < 1:
            raise FeatdistillError(f"review_kd: mid_channel must be a positive int (default min(512, deepest student "
                                   f"width)), got {mid_channel!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise FeatdistillError(f"review_kd: warmup_steps must be an integer >= 0 (0: no warm-up), got "
                                   f"{warmup_steps!r}")
        last = len(student_channels) - 1
        self.abfs = nn.ModuleList(ABF(int(c_s), mid, int(c_t), fuse=i < last)
                                  for i, (c_s, c_t) in enumerate(zip(student_channels, teacher_channels)))
        self.mid_channel, self.warmup_steps, self.pyramid = mid, warmup_steps, tuple(pyramid)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @classmethod
    def build(cls, student_shapes: Sequence[Sequence[int]], teacher_shapes: Sequence[Sequence[int]],
              **kwargs: Any) -> ReviewKD:
        """Sized from the dry run's shapes (no batch dim), one per level: maps ``(C, H, W)`` or vectors ``(C,)``."""
        if len(student_shapes) != len(teacher_shapes):
            raise ShapeError(f"review_kd needs as many teacher levels as student levels; got {len(student_shapes)} "
                             f"and {len(teacher_shapes)}")
        for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes), 1):
            if len(s) not in (1, 3) or len(t) not in (1, 3):
                raise ShapeError(f"review_kd fuses feature maps [C, H, W] (or pooled vectors [C]); level {i} gives "
                                 f"student {list(s)} and teacher {list(t)}. Pair convolutional stages (tokens "
                                 "[N, C] are not maps).")
        sizes = [(s[1] * s[2]) if len(s) == 3 else 1 for s in student_shapes]
        grown = [i for i in range(1, len(sizes)) if sizes[i] > sizes[i - 1]]
        if grown:
            raise ShapeError(f"review_kd levels must be ordered shallow -> deep (spatial size not increasing), but "
                             f"student level {grown[0] + 1} {list(student_shapes[grown[0]])} is larger than level "
                             f"{grown[0]} {list(student_shapes[grown[0] - 1])}; list the layers from shallow to deep")
        return cls([s[0] for s in student_shapes], [t[0] for t in teacher_shapes], **kwargs)

    def weight(self) -> torch.Tensor | float:
        """The warm-up factor ``min(steps / warmup_steps, 1)`` (1 without warm-up)."""
        if not self.warmup_steps:
            return 1.0
        return (self.steps.double() / self.warmup_steps).clamp(max=1.0).float()

    def fuse(self, students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs ``[O_1..O_L]``, each shaped as its teacher level ``[B, C_t_i, H'_i, W'_i]``."""
        if len(students) != len(self.abfs) or len(teachers) != len(self.abfs):
            raise ShapeError(f"review_kd was built for {len(self.abfs)} levels but got {len(students)} student and "
                             f"{len(teachers)} teacher features")
        outputs, residual = [], None
        for i in reversed(range(len(self.abfs))):  # deepest first
            out, residual = self.abfs[i](_as_map(students[i]), residual, _as_map(teachers[i]).shape[-2:])
            outputs.insert(0, out)
        return outputs

    def forward(self, students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.training:
            self.steps += 1
        teachers = [_as_map(t).detach() for t in teachers]
        return self.weight() * hierarchical_context_loss(self.fuse(students, teachers), teachers, self.pyramid)

    def extra_repr(self) -> str:
        ramp = f", warmup_steps={self.warmup_steps}" if self.warmup_steps else ""
        return f"levels={len(self.abfs)}, mid_channel={self.mid_channel}, pyramid={self.pyramid}{ramp}"
