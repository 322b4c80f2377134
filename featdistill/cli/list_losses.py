"""``python -m featdistill.run --list-losses``: every registered loss, read from the registries themselves.

Nothing here names a loss: the rows come from ``LOSSES`` and ``LOGIT_LOSSES``, so a loss added later lands in the
listing by registering. Its group is the module it is defined in (``featdistill.losses.relational`` ->
``relational``), its description the first sentence of its docstring, its defaults the keyword defaults of the
function (after ``student, teacher``) or of the ``Loss`` class's constructor (and ``build``), and its needs the
boolean class attributes a ``Loss`` declares (``channel_free``, ``relational``, ``needs_index``, any new one).
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..losses import LOGIT_LOSSES, LOSSES, LogitLoss, Loss

# module name -> group label; the order of the groups in the listing; a module not listed keeps its own name
GROUPS = {"logit": "logit", "feature": "feature", "attention": "attention", "relational": "relational",
          "contrastive": "contrastive", "multilevel": "multi-level", "multi_level": "multi-level",
          "lm": "language-model logit"}
ORDER = ("logit", "language-model logit", "feature", "attention", "relational", "contrastive", "multi-level")
PACKAGE = "featdistill.losses."
FEATURE_USE = "Pair(loss=NAME, loss_kwargs={...})"
LOGIT_USE = "LogitKD(loss=NAME, loss_kwargs={...}) or --set kd.loss=NAME; T is always kd.temperature"
SKIP = {"self", "student", "teacher", "student_shape", "teacher_shape", "index", "labels", "mask"}  # not settings


@dataclass
class LossInfo:
    """One registered loss: its names (the first registered first), where it is used (``'feature'`` for
    ``Pair(loss=...)``, ``'logit'`` for ``LogitKD(loss=...)``), its group, description, defaults and needs."""

    names: list[str]
    registry: str
    group: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    temperature: float | None = None  # a logit loss's own default T (the run uses kd.temperature)


def group_of(obj: Any) -> str:
    """``featdistill.losses.relational`` -> ``'relational'``; a loss registered from outside featdistill:
    ``'custom'``."""
    module = getattr(obj, "__module__", "") or ""
    if not module.startswith(PACKAGE):
        return "custom"
    last = module[len(PACKAGE):].split(".")[0]
    return GROUPS.get(last, last.replace("_", "-"))


def _own_doc(obj: Any) -> str:
    if isinstance(obj, type):
        return obj.__dict__.get("__doc__") or ""
    return getattr(obj, "__doc__", None) or ""


def first_sentence(doc: str, width: int = 96) -> str:
    """The first sentence of a docstring's first paragraph, inline markup dropped, shortened to ``width``."""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    if not paragraph:
        return "(no description)"
    sentence = re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)(?<!\bvs)\.\s+(?=[A-Z(])", paragraph.replace("``", ""))[0]
    sentence = sentence.rstrip(":;,") + ("" if sentence.endswith((".", ":")) else ".")
    return textwrap.shorten(sentence, width, placeholder=" ...")


def _keyword_defaults(fn: Callable) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in SKIP}


def need_names(base: type) -> list[str]:
    """The needs a loss class can declare: the public boolean class attributes of ``base`` and of its bases up to
    ``nn.Module`` (for ``Loss``: ``channel_free``, ``relational``, ``needs_index``, and any added later)."""
    found: list[str] = []
    for klass in base.__mro__:
        if klass is nn.Module or not issubclass(klass, nn.Module):
            break
        found += [k for k, v in vars(klass).items() if isinstance(v, bool) and not k.startswith("_")
                  and k not in found]
    return found


def describe_entry(names: list[str], obj: Any, registry: str) -> LossInfo:
    """What the listing shows for one registry entry (a function, a ``Loss``/``LogitLoss`` class or instance)."""
    target = type(obj) if isinstance(obj, nn.Module) else obj
    base = LogitLoss if registry == "logit" else Loss
    info = LossInfo(list(names), registry, group_of(target), first_sentence(_own_doc(target)))
    if isinstance(target, type):
        info.defaults = _keyword_defaults(target)
        if issubclass(target, Loss) and getattr(target.build, "__func__", None) is not Loss.build.__func__:
            for name, value in _keyword_defaults(target.build).items():
                info.defaults.setdefault(name, value)
        info.needs = [n for n in need_names(target) if getattr(target, n, False)]
    else:
        info.defaults = _keyword_defaults(target)
        info.needs = [n for n in need_names(base) if getattr(target, n, False)]
    if registry == "logit":
        info.temperature = info.defaults.pop("temperature", None)
        if "{T}" not in getattr(target, "formula", "{T}"):  # a formula without T: the loss ignores it
            info.temperature = None
    return info


def catalog() -> list[LossInfo]:
    """Every registered loss, grouped as the listing prints them (known groups first, in ``ORDER``)."""
    rows = [describe_entry(n, o, "logit") for n, o in LOGIT_LOSSES.entries()]
    rows += [describe_entry(n, o, "feature") for n, o in LOSSES.entries()]
    rank = {g: i for i, g in enumerate(ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r.group, len(ORDER)), r.group))  # stable: registration order


def need_help() -> dict[str, str]:
    """Each need's meaning, from the bullets of ``Loss``'s docstring (``- ``name``: text``)."""
    doc = inspect.cleandoc(Loss.__doc__ or "")
    found = re.findall(r"^- ``(\w+)``: (.*?)(?=^- ``|^\s*$|\Z)", doc, flags=re.M | re.S)
    return {name: textwrap.shorten(" ".join(text.replace("``", "").split()), 92, placeholder=" ...")
            for name, text in found}


def format_catalog(rows: list[LossInfo], name_width: int = 30) -> str:
    feature, logit = (sum(r.registry == k for r in rows) for k in ("feature", "logit"))
    lines = [f"{feature + logit} losses: {feature} feature losses (featdistill.LOSSES) and {logit} logit losses "
             "(featdistill.LOGIT_LOSSES),", "grouped by the module that defines them; aliases follow the first name."]
    group = None
    for row in rows:
        if row.group != group:
            group = row.group
            use = LOGIT_USE if row.registry == "logit" else FEATURE_USE
            lines += ["", f"{group} ({use})"]
        names = ", ".join(row.names)
        head = f"  {names:<{name_width}} " if len(names) < name_width else f"  {names}\n  {'':<{name_width}} "
        lines.append(head + row.description)
        details = ", ".join(f"{k}={v!r}" for k, v in row.defaults.items()) or "none"
        extra = f"defaults: {details}"
        if row.temperature is not None:
            extra += f"; T from kd.temperature (the class's own default {row.temperature!r})"
        if row.needs:
            extra += f"; needs: {', '.join(row.needs)}"
        lines.append(f"  {'':<{name_width}} {extra}")
    declared = sorted({n for r in rows for n in r.needs})
    if declared:
        meaning = need_help()
        lines += ["", "needs (declared by the loss; the Distiller prepares them):"]
        lines += [f"  {n}: {meaning.get(n, 'see featdistill.Loss')}" for n in declared]
    return "\n".join(lines)


def list_losses_cmd() -> int:
    print(format_catalog(catalog()))
    return 0
