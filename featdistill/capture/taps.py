"""Taps: where one side of a pair reads its feature, and the hooks that read a model's taps in one forward.

One tap builder per capture kind in :data:`featdistill.config.CAPTURES`: a layer's ``'output'`` or ``'input'``,
or, for an attention module, ``'attention'`` probabilities / ``'value_relation'`` maps ``[B, heads, N, N]``:
recomputed from a timm-style fused ``qkv`` output (the hook sits on ``<module>.qkv``), or read from a Hugging Face
module's own eager attention weights / value projection (:mod:`.hf_attention`). The model is never patched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import FeatdistillError
from .early_exit import EarlyExit
from .hooks import FeatureHooks
from .qkv import attention_hook


@dataclass(frozen=True)
class Tap:
    """One side of a pair: the hook on ``layer`` sees its ``hook_on`` (``'output'`` or ``'input'``) and ``select``
    picks (index, key) or computes (callable) the feature. Taps of one ``group`` (kind, repeat policy) share one
    ``FeatureHooks``, so attention and value-relation maps of one module keep separate hooks."""

    kind: str
    layer: str
    select: Any
    repeat: str
    hook_on: str

    @property
    def group(self) -> tuple[str, str]:
        return self.kind, self.repeat

    @property
    def computed(self) -> bool:
        """The feature is computed from the layer's output (a fresh callable per tap), not picked from it."""
        return self.kind in QKV_KINDS


def _plain(hook_on: str) -> Callable[..., Tap]:
    def build(model: nn.Module, name: str, select: Any, repeat: str) -> Tap:
        return Tap(hook_on, name, select, repeat, hook_on)

    return build


def _qkv(kind: str) -> Callable[..., Tap]:
    def build(model: nn.Module, name: str, select: Any, repeat: str) -> Tap:
        layer, transform = attention_hook(model, name, kind)
        return Tap(kind, layer, transform, repeat, "output")

    return build


QKV_KINDS = ("attention", "value_relation")
TAPS: dict[str, Callable[..., Tap]] = {"output": _plain("output"), "input": _plain("input"),
                                       **{kind: _qkv(kind) for kind in QKV_KINDS}}


def make_tap(model: nn.Module, name: str, kind: str = "output", select: Any = None, repeat: str = "error") -> Tap:
    """The tap reading ``kind`` (one of ``config.CAPTURES``) at module ``name`` of ``model``."""
    return TAPS[kind](model, name, select, repeat)


class TapSet:
    """The hooks reading ``taps`` on ``model``: one ``FeatureHooks`` per tap group, armed only inside :meth:`run`
    (evaluating the model elsewhere captures nothing). Captures copy only layers later found to be modified in
    place (``clone='auto'``); the first :meth:`run` (the Distiller's dry run) finds them, so warnings start after it.
    ``early_exit`` (:mod:`.early_exit`) says where a :meth:`run` asked to ``stop_early`` ends the forward.
    """

    def __init__(self, model: nn.Module, taps: Sequence[Tap], detach: bool, side: str = "model"):
        self.model, self.taps = model, list(taps)
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for tap in self.taps:
            layers = groups.setdefault(tap.group, {})
            if tap.layer in layers and layers[tap.layer] is not tap.select and not tap.computed:
                raise FeatdistillError(f"{side} layer {tap.layer!r} is paired twice with different select=; use one")
            layers[tap.layer] = tap.select
        self.hooks: dict[tuple[str, str], FeatureHooks] = {}
        try:
            for (kind, repeat), layers in groups.items():
                hook_on = "input" if kind == "input" else "output"
                hooks = FeatureHooks(model, list(layers), capture=hook_on, select=layers, repeat=repeat,
                                     detach=detach, clone="auto")
                hooks.active = False
                hooks.warn_inplace = False
                self.hooks[(kind, repeat)] = hooks
        except BaseException:
            self.close()
            raise
        self._dry = True
        self.early_exit = EarlyExit(model, [tap.layer for tap in self.taps])

    def run(self, call: Callable[[], Any], stop_early: bool = False) -> tuple[Any, list[torch.Tensor]]:
        """``call()`` (a forward of the model) with the hooks armed: ``(its output, one feature per tap)``.

        ``stop_early``: the output is not needed, so the forward may stop once every tap has fired (the output is
        then None; the features are those of a full forward). The first such run goes in full to learn where."""
        hooks = self.hooks.values()
        for h in hooks:
            h.active = True
        trip = self.early_exit.arm(stop_early)
        try:
            out = call()
            stopped = False
        except BaseException as exc:
            if not EarlyExit.caught(trip, exc):
                for h in hooks:
                    h.clear()
                raise
            out, stopped = None, True
        finally:
            for h in hooks:
                h.active = False
            if trip is not None:
                trip.disarm()
        if trip is not None:
            trip.finished(stopped)
        captured = {group: h.pop() for group, h in self.hooks.items()}
        if self._dry:  # in-place modified layers are known now: from here on, say when it happens
            self._dry = False
            for h in hooks:
                h.warn_inplace = True
        return out, [captured[tap.group][tap.layer] for tap in self.taps]

    def close(self) -> None:
        for h in self.hooks.values():
            h.remove()
