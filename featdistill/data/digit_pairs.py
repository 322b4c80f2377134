"""``digit_pairs``: a harder embedded benchmark made of the real digits, two side by side, 100 classes.

The digits task saturates: a teacher reaches 99% and a student a quarter of its width matches it, so nothing is
left for distillation to transfer at convergence. Here an image holds two real 8x8 digits side by side
(``[8, 16]``, padded to ``[16, 16]``) and its class is the pair ``10 * left + right``. A network must recognise
both digits *and* bind each to its position, so a narrow student stays capacity-limited while the classes keep
the digits' real structure (a "38" resembles an "88"): the soft targets carry knowledge of the kind
distillation is about. Measured (benchmarks/RESULTS.md): ``resnet_to_resnet``'s 20k-parameter student, trained
alone, plateaus at 97.1% by 120-240 epochs, 1.45 points below its 98.55% teacher; on digits, with logit KD,
it ends 0.37 points below.

No digit image is shared between splits: the train, val and test composites are drawn only from the digits
task's own train, val and test images, with a fixed generator (the split never depends on a run's seed).
Classes are drawn uniformly, so each of the 100 appears about ``TRAIN_SIZE / 100`` times in train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..config import Data
from .augment import Augment

TRAIN_SIZE, VAL_SIZE, TEST_SIZE = 4000, 1000, 2000  # composites per split
CLASSES = 100


def compose(x: torch.Tensor, y: torch.Tensor, count: int, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` pairs drawn from digits ``x`` ``[N, 1, 8, 8]`` with labels ``y`` ``[N]``.

    Returns images ``[count, 1, 16, 16]`` (left digit in columns 0-7, right in 8-15, rows 4-11, zeros around)
    and labels ``[count]`` = ``10 * left_label + right_label``.
    """
    by_class = [torch.nonzero(y == c).flatten() for c in range(10)]
    pair = torch.randint(0, CLASSES, (count,), generator=generator)
    left, right = pair // 10, pair % 10

    def pick(classes: torch.Tensor) -> torch.Tensor:
        idx = torch.empty(count, dtype=torch.int64)
        for c in range(10):
            rows = torch.nonzero(classes == c).flatten()
            choice = torch.randint(0, len(by_class[c]), (len(rows),), generator=generator)
            idx[rows] = by_class[c][choice]
        return x[idx]

    images = torch.zeros(count, 1, 16, 16)
    images[:, :, 4:12, :8], images[:, :, 4:12, 8:] = pick(left), pick(right)
    return images, pair


def digit_pairs(data: Data, digits: torch.Tensor, labels: torch.Tensor,
                splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[list[TensorDataset], Augment]:
    """The three composite splits from the digits ``[1797, 1, 8, 8]`` (pixels in [0, 1]) and their
    (train, val, test) index tensors; images ``[in_chans, S, S]`` normalised by train statistics."""
    generator = torch.Generator().manual_seed(0)
    parts = [compose(digits[idx], labels[idx], n, generator)
             for idx, n in zip(splits, (TRAIN_SIZE, VAL_SIZE, TEST_SIZE))]
    mean, std = parts[0][0].mean(), parts[0][0].std()
    out = []
    for x, y in parts:
        x = (x - mean) / std
        if data.image_size != 16:
            x = F.interpolate(x, size=(data.image_size,) * 2, mode="bilinear", align_corners=False)
        out.append(TensorDataset(x.expand(-1, data.in_chans, -1, -1).contiguous(), y))
    return out, Augment(pad=max(1, data.image_size // 8))
