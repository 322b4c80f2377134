"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (schedulers, ``kill``) become a request that the training
loop honours after the step in flight, so it can write a checkpoint at that exact position first."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The loop stopped on a signal. ``position`` is ``(epoch, batches done in it)``; ``saved`` says whether a
    checkpoint at that position was written. The command exits ``128 + signum`` (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, position: tuple[int, int], saved: bool, run_dir: Path | None = None):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.position, self.saved, self.run_dir = signum, position, saved, run_dir


class StopRequest:
    """While entered, SIGINT/SIGTERM set ``signum`` instead of killing the process; a second signal of either kind
    stops at once (``KeyboardInterrupt``), for a step that never ends. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
