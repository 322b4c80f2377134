"""TensorBoard logging for ``train.log=['tensorboard']``: the records the Trainer writes to ``metrics.jsonl``, also as
scalars in ``<run_dir>/tensorboard/`` (``tensorboard --logdir RUN_DIR/tensorboard``).

Tags: ``step/<term>`` for every step's terms (``step/loss``, ``step/task``, ``step/kd``, ``step/feat/<pair>``) and
its learning rate ``step/lr``, at the global step; ``epoch/<key>`` for every epoch's summary (``epoch/val_accuracy``,
``epoch/loss``, ``epoch/images_per_s``...) at the global step of the epoch's last batch, so both share one x-axis.
Records reach TensorBoard when they reach ``metrics.jsonl`` (once per epoch, and when a run stops), so a resumed
run purges what its checkpoint did not keep and the two never disagree.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from ..errors import FeatdistillError

TB_DIR = "tensorboard"
_NOT_SCALARS = ("kind", "epoch", "step")  # a record's position, not a value


def require_tensorboard() -> None:
    """Raise FeatdistillError naming the install command when the ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise FeatdistillError("train.log=['tensorboard'] needs the tensorboard package, which is not installed: "
                               "pip install tensorboard (or drop 'tensorboard' from train.log)")


class TensorBoardLog:
    """Writes Trainer records (dicts with ``kind`` ``'step'`` or ``'epoch'``) as scalars under ``log_dir``.

    Args:
        log_dir: the event files' folder (created).
        steps_per_epoch: batches per epoch, to place an epoch's summary at its last step.
        purge_step: when resuming, the global step the run continues from: events at or after it, written before
            the run stopped and no longer backed by the checkpoint, are hidden by TensorBoard.
    """

    def __init__(self, log_dir: Path, steps_per_epoch: int, purge_step: int | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked for

        self.steps_per_epoch = max(1, steps_per_epoch)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, records: Iterable[dict]) -> None:
        """Add every numeric value of ``records`` (non-finite ones too: TensorBoard shows a NaN), then flush."""
        for r in records:
            if r.get("kind") == "step":
                prefix, step = "step", int(r["step"])
            elif r.get("kind") == "epoch":
                prefix, step = "epoch", (int(r["epoch"]) + 1) * self.steps_per_epoch - 1
            else:
                continue
            for key, value in r.items():
                if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{prefix}/{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
