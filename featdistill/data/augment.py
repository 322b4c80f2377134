"""Training-time augmentation as a pure function of ``(seed, epoch, index)``: a run resumed at epoch ``k``, and
every worker process and rank, sees exactly the images an uninterrupted single process would."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def mix_seed(seed: int, epoch: int, index: int) -> int:
    """A stable 63-bit seed per (seed, epoch, index); plain arithmetic, so it is the same in every process."""
    h = 0
    for v in (seed, epoch, index):
        h = (h * 0x9E3779B97F4A7C15 + v + 1) % (1 << 63)
    return h


@dataclass(frozen=True)
class Augment:
    """Random translation by up to ``pad`` pixels (pad, then crop back) and an optional horizontal flip."""

    pad: int
    mode: str = "reflect"  # 'reflect' continues the background; 'constant' is CIFAR's usual zero padding
    flip: bool = False  # right for natural images, wrong for digits (a mirrored 2 is no 2)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``x [C, S, S]`` -> ``[C, S, S]``, same dtype; all randomness drawn from ``g``."""
        p, (_, h, w) = self.pad, x.shape
        dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=g).tolist()
        x = F.pad(x.unsqueeze(0), (p, p, p, p), mode=self.mode)[0, :, dy:dy + h, dx:dx + w]
        if self.flip and torch.randint(0, 2, (1,), generator=g).item():
            x = x.flip(-1)
        return x


