"""What keys a cached teacher: all a trained teacher depends on. Its spec (a factory by its code: the source of
the factory and of what it uses from its own file), its training settings and seed, and the data."""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import linecache
import os
import types
from pathlib import Path
from typing import Any

from ..config import TEXT_DATASETS, Data, Recipe
from ..data.text_split import SPLIT_VERSION as TEXT_SPLIT_VERSION
from ..recipe import to_dict

SPEED_ONLY = {f.name for f in dataclasses.fields(Data) if f.metadata.get("speed_only")}  # e.g. data.num_workers


class Uncacheable(Exception):
    """A factory whose code cannot be read, so it cannot key a cache entry; the message says why."""


def cache_dir() -> Path:
    """``$FEATDISTILL_CACHE`` or ``~/.cache/featdistill``."""
    return Path(os.environ.get("FEATDISTILL_CACHE", Path.home() / ".cache" / "featdistill"))


def _plain(value: Any) -> bool:
    """A value whose repr is its content, the same in every process (a module-level constant such as WIDTH = 32)."""
    if isinstance(value, (int, float, str, bytes, bool, type(None))):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(_plain(k) and _plain(v) for k, v in value.items())


def _names(code: types.CodeType) -> list[str]:
    """The global (and attribute) names ``code`` uses, nested functions and comprehensions included."""
    return list(code.co_names) + [n for c in code.co_consts if isinstance(c, types.CodeType) for n in _names(c)]


def _methods(cls: type) -> list[types.FunctionType]:
    found = []
    for value in vars(cls).values():
        value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        parts = (value.fget, value.fset, value.fdel) if isinstance(value, property) else (value,)
        found += [inspect.unwrap(f) for f in parts if isinstance(f, types.FunctionType)]
    return found


def _class_source(cls: type, near: str | None) -> str:
    """``inspect.getsource(cls)``; for a class of a recipe file (run by runpy, so absent from ``sys.modules``, where
    inspect looks) its ``class`` block, found by qualified name in the file its methods (or ``near``) come from."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        pass
    methods = _methods(cls)
    files = {f.__code__.co_filename for f in methods} or {near}
    file = files.pop()
    if files or file is None or "<locals>" in cls.__qualname__:
        raise Uncacheable(f"the source of class {cls.__qualname__} cannot be read")
    linecache.checkcache(file)
    lines = linecache.getlines(file)
    try:
        bodies, nodes = [ast.parse("".join(lines)).body], []
    except (SyntaxError, ValueError):
        raise Uncacheable(f"the source of class {cls.__qualname__} cannot be parsed from {file}") from None
    for part in cls.__qualname__.split("."):
        nodes = [n for body in bodies for n in body if isinstance(n, ast.ClassDef) and n.name == part]
        bodies = [n.body for n in nodes]
    firsts = [f.__code__.co_firstlineno for f in methods]
    nodes = [n for n in nodes if all(n.lineno <= line <= n.end_lineno for line in firsts)]
    if not nodes:
        raise Uncacheable(f"the source of class {cls.__qualname__} cannot be found in {file}")
    node = nodes[-1]  # a name defined twice: the later definition is the one that runs
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return "".join(lines[start - 1:node.end_lineno])


def _value_text(value: Any) -> str:
    """A value a factory closes over or is partially applied to, as text that is the same in every process."""
    text = repr(value) if _plain(value) else repr(to_dict(value))
    if " at 0x" in text:
        raise Uncacheable(f"the factory depends on {text}, which has no stable text form")
    return text


def factory_code(factory: Any) -> str:
    """A digest of a factory's code: its source text, and recursively that of the functions and classes of its own
    module it names (a class's source holds its methods), and the plain constants it names there. Raises
    :class:`Uncacheable` when a source cannot be read (a lambda typed in a REPL, a C function)."""
    parts: list[str] = []
    seen: set[int] = set()

    def add(obj: Any, near: str | None) -> None:
        if id(obj) in seen:  # cycles: functions that call each other, a class its methods name
            return
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            parts.append(f"partial({_value_text(obj.args)}, {_value_text(obj.keywords)})")
            return add(obj.func, near)
        if isinstance(obj, types.FunctionType):
            obj = inspect.unwrap(obj)
            try:
                parts.append(inspect.getsource(obj))
            except (OSError, TypeError) as exc:
                raise Uncacheable(f"the source of {obj.__qualname__} cannot be read ({exc})") from None
            functions = [obj]
        elif isinstance(obj, type):
            parts.append(_class_source(obj, near))
            functions = _methods(obj)
            for base in obj.__bases__:  # a base class from the same file
                if base.__module__ == obj.__module__:
                    add(base, near)
        else:
            raise Uncacheable(f"{obj!r} is not a Python function or class, so its source cannot be read")
        for fn in functions:
            home, near = fn.__globals__, fn.__code__.co_filename
            for name in (n for n in dict.fromkeys(_names(fn.__code__)) if n in home):
                value = home[name]
                if _plain(value):
                    parts.append(f"{name} = {value!r}")
                elif isinstance(value, types.FunctionType) and inspect.unwrap(value).__globals__ is home \
                        or isinstance(value, type) and value.__module__ == home.get("__name__"):
                    add(value, near)
            for cell in fn.__closure__ or ():
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if isinstance(value, (types.FunctionType, type)) and value.__module__ == home.get("__name__"):
                    add(value, near)
                elif not isinstance(value, types.ModuleType):
                    parts.append(f"<closure> = {_value_text(value)}")

    add(factory, None)
    return hashlib.sha256("\n\0".join(parts).encode()).hexdigest()


def key(recipe: Recipe) -> tuple[Path | None, str | None]:
    """The cache file and None, or None and why the teacher cannot be cached."""
    # the same batches either way; the teacher never trains on data.train_root (Data.for_teacher)
    data = {k: v for k, v in to_dict(recipe.data.for_teacher()).items() if k not in SPEED_ONLY}
    if recipe.data.name in TEXT_DATASETS and TEXT_SPLIT_VERSION > 1:  # image teachers keep the keys they had
        data["split_version"] = TEXT_SPLIT_VERSION
    key = {"teacher": to_dict(recipe.teacher), "data": data}
    if callable(recipe.teacher.name):  # names keep the keys they always had; a factory adds its code
        try:
            key["code"] = factory_code(recipe.teacher.name)
        except Uncacheable as exc:
            return None, str(exc)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = recipe.teacher.name if isinstance(recipe.teacher.name, str) else "factory"
    return cache_dir() / "teachers" / f"{name.replace(':', '-')}-{digest}.pt", None


def cache_path(recipe: Recipe) -> Path | None:
    """The cached teacher's file, keyed by the teacher spec (a factory by its code, with its training settings and
    seed) and the data; None when it cannot be cached (a factory whose source cannot be read)."""
    return key(recipe)[0]
