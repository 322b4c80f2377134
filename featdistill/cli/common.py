"""What every command (``run``, ``inspect``, ``generate``) does the same way: read a recipe file with its ``--set``
overrides, and turn a failure into its message and exit code."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from ..config import Recipe
from ..errors import RecipeError, explain
from ..recipe import load_recipe, try_overrides, validate


def recipe_with_overrides(path: str | Path, overrides: list[str]) -> Recipe:
    """The recipe in ``path`` with ``overrides`` applied; every problem (overrides and validation) raised at once as
    a RecipeError naming the file."""
    recipe, problems = try_overrides(load_recipe(path), overrides)
    problems += validate(recipe)
    if problems:
        raise RecipeError(problems, str(path))
    return recipe


def exit_code(exc: BaseException) -> int:
    """Print what went wrong: a problem in the input as one message (exit 2), anything else as a bug with its
    traceback (exit 1)."""
    known = explain(exc)
    if known is not None:
        print(f"error: {known}", file=sys.stderr)
        return 2
    traceback.print_exc()
    print("internal error: this is a bug in featdistill; please report it with the traceback above", file=sys.stderr)
    return 1
