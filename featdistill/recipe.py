"""Recipe files: loading one, typed ``--set`` overrides, validation of the whole recipe, and its JSON form.

The dataclasses a recipe is made of live in :mod:`featdistill.config` and are re-exported here, so a recipe file
can write ``from featdistill.recipe import Model, Recipe, Train``. Loading a recipe builds nothing heavy: models
are names or factories, so validation and ``--dry-run`` are cheap.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import runpy
import traceback
import typing
from pathlib import Path
from types import UnionType
from typing import Any, Union

from .config import PAIRS_SHORTHANDS, AutoPairs, Data, LogitKD, Model, Pair, Recipe, TeacherCache, Train
from .errors import RecipeError, did_you_mean
from .models import known_model

__all__ = ["AutoPairs", "Data", "LogitKD", "Model", "Pair", "Recipe", "Train", "apply_overrides", "check", "dumps",
           "load_recipe", "to_dict", "try_overrides", "validate"]


def load_recipe(path: str | Path) -> Recipe:
    """Run a recipe file under its real path and return its module-level ``recipe``."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"recipe file {str(path)!r} does not exist; pass the path of a .py file that "
                           "defines `recipe = Recipe(...)` (see recipes/)"])
    try:
        scope = runpy.run_path(str(path), run_name="__recipe__")
    except SyntaxError as exc:
        raise RecipeError([f"syntax error at {exc.filename}:{exc.lineno}: {exc.msg}\n    {(exc.text or '').strip()}"],
                          str(path)) from None
    except Exception as exc:  # show the recipe's own line, not runpy's frames
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).suffix == ".py"
                  and "runpy" not in f.filename]
        own = [f for f in frames if Path(f.filename).resolve() == path.resolve()] or frames[-1:]
        where = f" at {own[-1].filename}:{own[-1].lineno} ({(own[-1].line or '').strip()})" if own else ""
        raise RecipeError([f"the recipe raised {type(exc).__name__}: {exc}{where}"], str(path)) from None
    recipe = scope.get("recipe")
    if not isinstance(recipe, Recipe):
        found = "nothing" if recipe is None else f"a {type(recipe).__name__}"
        raise RecipeError([f"the file must define a module-level `recipe = Recipe(...)`; it defines {found}"],
                          str(path))
    return recipe


# -- overrides --------------------------------------------------------------------------------
def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _parse(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string


def _allows(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Union or origin is UnionType:
        return any(_allows(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:  # tuple[str, ...]: a literal list too (--set train.log=['tensorboard'])
        return isinstance(value, (tuple, list))
    if origin is not None:
        return isinstance(value, origin)
    if tp in (tuple, list):
        return isinstance(value, (tuple, list))
    if isinstance(tp, type):
        return isinstance(value, tp) or (dataclasses.is_dataclass(tp) and isinstance(value, dict))
    return callable(value) or isinstance(value, str)


def _build(cls: type, value: dict, path: str) -> Any:
    """``cls(**value)`` from a dict literal, or a RecipeError naming the unknown keys and the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in value if k not in names]
    if unknown:
        hints = "".join(did_you_mean(str(k), names, 1) for k in unknown)
        raise RecipeError([f"--set {path}: unknown key(s) {unknown} for {cls.__name__}.{hints} "
                           f"Valid keys: {', '.join(names)}"])
    try:
        return cls(**value)
    except TypeError as exc:  # a required field left out
        raise RecipeError([f"--set {path}: {cls.__name__}: {exc}"]) from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Build a dataclass from a dict literal (``--set kd={'temperature': 2}``), keep the rest."""
    for cand in typing.get_args(tp) or (tp,):
        if dataclasses.is_dataclass(cand) and isinstance(value, dict):
            return _build(cand, value, path)
    if isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _set(obj: Any, keys: list[str], value: Any, path: str) -> Any:
    key, rest = keys[0], keys[1:]
    if isinstance(obj, tuple):
        if not key.isdigit() or int(key) >= len(obj):
            raise RecipeError([f"--set {path}: {key!r} is not an index of a {len(obj)}-item list"])
        items = list(obj)
        items[int(key)] = _set(obj[int(key)], rest, value, path) if rest else value
        return tuple(items)
    if not dataclasses.is_dataclass(obj):
        raise RecipeError([f"--set {path}: cannot set {key!r} inside a {type(obj).__name__}"])
    types = _field_types(obj)
    if key not in types:
        raise RecipeError([f"--set {path}: unknown key {key!r}.{did_you_mean(key, types, 1)} "
                           f"Valid keys here: {', '.join(types)}"])
    current = getattr(obj, key)
    if rest:
        if current is None:  # e.g. kd.temperature=2 after kd=None: start from the defaults
            cls = next(a for a in typing.get_args(types[key]) if dataclasses.is_dataclass(a))
            current = cls()
        return dataclasses.replace(obj, **{key: _set(current, rest, value, path)})
    if key == "pairs":
        value = tuple(_build(Pair, v, f"{path}[{i}]") if isinstance(v, dict) else v for i, v in enumerate(value)) \
            if isinstance(value, (list, tuple)) else value
    if key == "kwargs" and isinstance(value, dict):
        value = {**current, **value}  # merge: --set student.kwargs={'depth': 2} keeps the other kwargs
    if not _allows(types[key], value):
        raise RecipeError([f"--set {path}: expected {getattr(types[key], '__name__', types[key])}, "
                           f"got {type(value).__name__} {value!r}"])
    return dataclasses.replace(obj, **{key: _coerce(types[key], value, path)})


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply ``['train.epochs=3', 'kd=None', ...]``: values are Python literals, checked against the field."""
    recipe, problems = try_overrides(recipe, overrides)
    if problems:
        raise RecipeError(problems)
    return recipe


def try_overrides(recipe: Recipe, overrides: list[str]) -> tuple[Recipe, list[str]]:
    """The recipe with every override that applies, and a problem for each one that does not."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
            continue
        key, text = item.split("=", 1)
        try:
            recipe = _set(recipe, key.strip().split("."), _parse(text.strip()), key.strip())
        except RecipeError as exc:
            problems += exc.problems
    return recipe, problems


# -- validation -------------------------------------------------------------------------------
def _model_problems(model: Any, where: str) -> list[str]:
    if not isinstance(model, Model):
        return [f"{where} must be a Model(...), got {type(model).__name__}"]
    found = []
    if isinstance(model.name, str):
        problem = known_model(model.name)
        if problem:
            found.append(f"{where}.name: {problem}")
    elif not callable(model.name):
        found.append(f"{where}.name must be a model name or a factory, got {model.name!r}")
    if model.checkpoint is not None and not Path(model.checkpoint).is_file():
        found.append(f"{where}.checkpoint {model.checkpoint!r} does not exist; give the path of a state_dict file")
    if model.pretrain is not None:
        found += model.pretrain.problems(f"{where}.pretrain")
    return found


def validate(recipe: Recipe) -> list[str]:
    """Every problem in the recipe, as messages (empty when it is fine). Builds no model."""
    found = _model_problems(recipe.teacher, "teacher") + _model_problems(recipe.student, "student")
    if recipe.kd is not None:
        found += recipe.kd.problems() if isinstance(recipe.kd, LogitKD) else ["kd must be LogitKD(...) or None"]
    keys = []
    if isinstance(recipe.pairs, AutoPairs):
        found += recipe.pairs.problems()
    elif not isinstance(recipe.pairs, tuple):
        hint = did_you_mean(recipe.pairs, PAIRS_SHORTHANDS, 1) if isinstance(recipe.pairs, str) else ""
        found.append(f"pairs must be a list of Pair(...), 'auto', 'cka' or AutoPairs(...), got {recipe.pairs!r}.{hint}"
                     " e.g. --set pairs='cka', --set \"pairs=[{'student': 'blocks.1', 'teacher': 'blocks.2'}]\" or "
                     "--set pairs=[]")
    for i, pair in enumerate(recipe.pairs if isinstance(recipe.pairs, tuple) else ()):
        if not isinstance(pair, Pair):
            found.append(f"pairs[{i}] must be a Pair(...), got {type(pair).__name__}")
            continue
        found += pair.problems()
        keys.append(pair.key)
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    found += [f"two pairs share the name {k!r}; give one a name=" for k in dupes]
    found += recipe.data.problems() if isinstance(recipe.data, Data) else ["data must be a Data(...)"]
    found += recipe.train.problems() if isinstance(recipe.train, Train) else ["train must be a Train(...)"]
    if recipe.teacher_cache is not None:
        found += recipe.teacher_cache.problems() if isinstance(recipe.teacher_cache, TeacherCache) else \
            ["teacher_cache must be TeacherCache(...) or None"]
    return found


def check(recipe: Recipe, source: str | None = None) -> Recipe:
    problems = validate(recipe)
    if problems:
        raise RecipeError(problems, source)
    return recipe


def to_dict(obj: Any) -> Any:
    """JSON-able view of a recipe (factories and callables by their qualified name)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)  # fields added later are
                if not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)}  # left out at default
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if callable(obj):
        return f"<{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}>"
    return repr(obj)


def dumps(recipe: Recipe) -> str:
    return json.dumps(to_dict(recipe), indent=2)
