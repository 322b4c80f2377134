"""Torch-free checks behind the ``problems()`` of :mod:`featdistill.config`: finite numbers, registered names, and
the layers a ``Pair`` names (one per side, or a tuple per side for a multi-layer loss such as ReviewKD).

Names of losses and adapters are checked against their registries, which live with the torch code that fills them;
they are imported on first use, so importing this module (and ``featdistill.config``) needs no torch.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from .errors import did_you_mean


def registry(kind: str):
    """The registry of ``'loss'``, ``'logit loss'`` or ``'adapter'`` names (imports torch, so only when asked)."""
    if kind == "adapter":
        from .adapters import ADAPTERS

        return ADAPTERS
    from .losses import LOGIT_LOSSES, LOSSES

    return LOGIT_LOSSES if kind == "logit loss" else LOSSES


def unknown(where: str, kind: str, name: str, extra: tuple[str, ...] = ()) -> list[str]:
    """A problem when ``name`` is not in the ``kind`` registry (nor in ``extra``), with the closest match."""
    names = registry(kind)
    if name in names or name in extra:
        return []
    known = ", ".join([*extra, *names])
    return [f"{where}: unknown {kind} {name!r}.{did_you_mean(name, [*extra, *names], 1)} Known: {known}"]


def number(value: Any) -> bool:
    """A finite int or float (``inf`` and ``nan`` are never a sensible setting here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the layers of a Pair ---------------------------------------------------------------------------------------
def layer_names(value: Any) -> tuple:
    """``('layer1',)`` for ``'layer1'``; the names of a tuple or list, in their order (shallow -> deep)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def spans_layers(loss: Any) -> bool | None:
    """Whether a loss (a name, a ``Loss`` class or instance, or a function) compares several layers at once
    (its ``multi_layer`` attribute); ``None`` for a name that is not registered (reported on its own)."""
    if not isinstance(loss, str) and not callable(loss):
        return None  # reported on its own: not a loss
    if isinstance(loss, str):
        losses = registry("loss")
        if loss not in losses:
            return None
        loss = losses.get(loss)
    return bool(getattr(loss, "multi_layer", False))


def _side_problems(where: str, side: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [] if value else [f"{where}: {side} must be a non-empty module name, got ''"]
    if not isinstance(value, (tuple, list)) or not value:
        return [f"{where}: {side} must be a non-empty module name (or, for a multi-layer loss such as review_kd, a "
                f"non-empty tuple of names ordered shallow -> deep), got {value!r}"]
    return [f"{where}: {side}[{i}] must be a non-empty module name, got {name!r}"
            for i, name in enumerate(value) if not isinstance(name, str) or not name]


def layer_problems(where: str, pair: Any) -> list[str]:
    """Every problem with the layer names of ``pair`` and with how they fit its loss: a single-layer loss on tuples
    of names, a multi-layer loss on single names, sides of different lengths, options a multi-layer term refuses."""
    found = _side_problems(where, "student", pair.student) + _side_problems(where, "teacher", pair.teacher)
    multi = not (isinstance(pair.student, str) and isinstance(pair.teacher, str))
    s, t = layer_names(pair.student), layer_names(pair.teacher)
    if multi and s and t and (len(s) != len(t) or isinstance(pair.student, str) or isinstance(pair.teacher, str)):
        found.append(f"{where}: student names {len(s)} layer(s) {list(s)} but teacher names {len(t)} {list(t)}; a "
                     "multi-layer term pairs level i of one side with level i of the other (shallow -> deep), so "
                     "give both sides as tuples of the same length")
    spans = spans_layers(pair.loss)
    label = pair.loss if isinstance(pair.loss, str) else getattr(pair.loss, "__name__", type(pair.loss).__name__)
    if spans and not multi:
        found.append(f"{where}: loss {label!r} compares several layers at once; give student and teacher as tuples "
                     "of module names ordered shallow -> deep, e.g. Pair(student=('layer1', 'layer2', 'layer3'), "
                     f"teacher=('layer1', 'layer2', 'layer3'), loss={label!r})")
    if spans is False and multi:
        losses = registry("loss")
        several = [n for n in losses if getattr(losses.get(n), "multi_layer", False)]
        found.append(f"{where}: loss {label!r} compares one student layer with one teacher layer, but this pair names "
                     f"{len(s)} student and {len(t)} teacher layers; use one Pair per layer, or a multi-layer loss "
                     f"({', '.join(several) or 'none registered'})")
    if multi:
        if not (pair.adapter is None or pair.adapter in ("auto", "identity")):
            found.append(f"{where}: a multi-layer term has no per-layer adapter (its loss holds the modules that map "
                         f"the student's levels); leave adapter='auto' (or 'identity'), got {pair.adapter!r}")
        if pair.normalize is not None:
            found.append(f"{where}: normalize={pair.normalize!r} is not supported on a multi-layer term (its loss "
                         "sees every level's raw features); drop normalize=")
    return found


def log_problems(where: str, log: Any, loggers: tuple[str, ...]) -> list[str]:
    """``Train.log``: a tuple of names in ``loggers``, each one's package installed; only the student's run
    (``where == 'train'``) writes logs."""
    if not isinstance(log, tuple) or not all(isinstance(v, str) for v in log):
        return [f"{where}.log must be a list of logger names ({', '.join(loggers)}), got {log!r}; "
                "e.g. --set train.log=['tensorboard']"]
    found = [f"{where}.log: unknown logger {v!r}.{did_you_mean(v, loggers, 1)} Valid: {', '.join(loggers)}"
             for v in log if v not in loggers]
    if log and where != "train":
        found.append(f"{where}.log: only the student's run writes logs (train.log); remove it here")
    if "tensorboard" in log and importlib.util.find_spec("tensorboard") is None:
        found.append(f"{where}.log=['tensorboard'] needs the tensorboard package, which is not installed: "
                     "pip install tensorboard (or drop it from the log)")
    return found
