"""Checkpoints that resume exactly: atomic writes, the RNG state of every generator a run draws from, and the
position in training (epoch and batch), so a run stopped mid-epoch continues with the very next batch."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from ..errors import FeatdistillError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no half file behind


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (``weights_only``: tensors and plain containers, never code), its position as
    ``(epoch, batches done)`` under ``'position'`` (older checkpoints held only the last finished epoch)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatdistillError(f"cannot read checkpoint {str(path)!r} ({exc}); it may be damaged or cut off. "
                               "Start a new run with another --out (this directory is left as it is).") from None
    missing = [k for k in ("module", "optimizer", "scheduler", "scaler", "rng", "history") if k not in state]
    if missing or not ("position" in state or "epoch" in state):
        raise FeatdistillError(f"checkpoint {str(path)!r} lacks {missing or ['position']}; it was not written by "
                               "this version of featdistill. Start a new run with another --out.")
    state.setdefault("position", [state.get("epoch", -1) + 1, 0])
    return state


def trim_metrics(path: Path, epoch: int, step: int) -> None:
    """Keep the metric lines a checkpoint at ``(epoch, global step)`` covers; drop what the stopped run wrote after
    it, and a line cut off mid-write."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run killed while writing it
        if (record.get("kind") == "epoch" and record["epoch"] < epoch) or \
                (record.get("kind") == "step" and record["step"] < step):
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))
