"""Early exit: stop a model's forward once every tap of a :class:`~.taps.TapSet` has fired, when its output is not
needed (a teacher in feature-only KD), so the layers after the deepest hooked one never run.

The first run that asks to stop early runs in full and counts the fires of the hooked layers (a layer may run
several times in one forward, e.g. under ``repeat='last'``): ``N`` fires, the last one at layer ``L``. From then
on the ``N``-th fire, if it is ``L``'s, raises a private exception from a hook that sits after the capture hooks
of ``L``, and :meth:`.taps.TapSet.run` catches it. Every capture is taken in a forward hook, once its layer has
finished ('output', 'input', and the 'attention' / 'value_relation' maps computed from a ``qkv`` or Hugging Face
attention output), so the captured features are exactly those of a full forward. The model is never patched.

Anything uncertain runs the full forward instead: a compiled model or a forward being traced (an exception in a
hook would break the graph), ``nn.DataParallel`` (hooks run in replica threads), and, for good, a model whose
hooked layers fire fewer times (or end at another layer) in a later forward, or whose forward swallowed the
exception. A hooked layer that runs *more* times than learned cannot be seen without running the rest: a model
whose loops depend on the input (e.g. adaptive computation) needs ``LiveTeacher(early_exit=False)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .hooks import resolve_module


class _StopForward(Exception):
    """Raised by the hook of the last expected fire; only the :class:`_Trip` that raised it may catch it.
    An ``Exception`` (not ``BaseException``), so ``always_call`` hooks of the modules it passes through still run."""

    def __init__(self, trip: _Trip):
        super().__init__("featdistill early exit (caught by TapSet.run)")
        self.trip = trip


def _compiled(module: nn.Module) -> bool:
    # by name: importing torch._dynamo for an isinstance check would cost every eager user its import time
    return type(module).__name__ == "OptimizedModule" or getattr(module, "_compiled_call_impl", None) is not None


def is_compiled(model: nn.Module) -> bool:
    """``model`` is, or holds, a ``torch.compile`` wrapper (``OptimizedModule``) or a module compiled in place
    (``nn.Module.compile``, as ``train.compile`` does)."""
    return any(_compiled(m) for m in model.modules())


class _Trip:
    """The counting hooks of one run, registered for that run only (after the capture hooks of each layer, so
    they see the layer's captures done) and removed by :meth:`disarm`."""

    def __init__(self, owner: EarlyExit, stop: bool):
        self.owner, self.stop = owner, stop
        self.fires, self.last, self.raised = 0, None, False
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in owner.modules]

    def _hook(self, name: str):
        def fired(_module: nn.Module, _args: tuple, _output: object) -> None:
            self.fires, self.last = self.fires + 1, name
            if self.stop and self.fires == self.owner.fires and name == self.owner.after:
                self.raised = True
                raise _StopForward(self)

        return fired

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def finished(self, stopped: bool) -> None:
        """Learn from a full run (``N`` fires, the last one's layer), or give up for good on a surprise."""
        owner = self.owner
        if not self.stop:
            owner.fires, owner.after = self.fires, self.last
        elif self.raised and not stopped:
            owner.off = "the model's forward caught the early-exit exception"
        elif not stopped:
            owner.off = (f"the hooked layers fired {self.fires} times in a forward, not {owner.fires} as in the first "
                         "one: their count depends on the input")


class EarlyExit:
    """Where a model's forward may stop once the hooked ``layers`` (names as ``named_modules()`` gives them) have
    all fired. :meth:`arm` gives the counting hooks of one run, or None when that run must go in full.

    ``after``: the layer whose fire ends the captures (learned in the first run that asked to stop; None before);
    ``fires``: how many fires of the hooked layers that is; ``off``: why early exit stopped for good, or None.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str]):
        self.model = model
        modules: dict[int, tuple[str, nn.Module]] = {}
        for name in dict.fromkeys(layers):  # a module hooked under two names must count its fires once
            module = resolve_module(model, name)
            modules.setdefault(id(module), (name, module))
        self.modules = list(modules.values())
        self.fires, self.after, self.off = 0, None, None

    def unavailable(self) -> str | None:
        """Why a run cannot stop early now (None: it can; it may still have to learn where, in full)."""
        if self.off is not None:
            return self.off
        if not self.modules:
            return "no layer is hooked"
        if torch.compiler.is_compiling():
            return "the forward is being compiled (an exception in a hook would break the graph)"
        for m in self.model.modules():  # checked on every call: a model may be compiled after the first one
            if _compiled(m):
                return "the model is compiled (torch.compile): an exception in a hook would break its graph"
            if isinstance(m, nn.DataParallel):
                return "nn.DataParallel runs the hooks in its replicas' threads"
        return None

    def arm(self, stop: bool) -> _Trip | None:
        """The counting hooks of a run that asked to ``stop`` early: they raise at the learned last fire, or, in the
        first such run, learn it in full. None (a plain full forward) when ``stop`` is False or it cannot stop."""
        if not stop or self.unavailable() is not None:
            return None
        return _Trip(self, stop=self.fires > 0)

    @staticmethod
    def caught(trip: _Trip | None, exc: BaseException) -> bool:
        """``exc`` is the stop that ``trip`` raised (and not one of another run's, or another error)."""
        return trip is not None and isinstance(exc, _StopForward) and exc.trip is trip
