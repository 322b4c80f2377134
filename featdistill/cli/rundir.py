"""Run directories: making one (never over anything that exists), what it records so that ``--resume`` needs
nothing else (a copy of the recipe file as it was, the overrides, the resolved recipe), and reading that back."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .. import __version__
from ..config import Recipe
from ..errors import FeatdistillError, RecipeError
from ..recipe import dumps, load_recipe, try_overrides, validate

RUN_FILE = "run.json"
RECIPE_COPY = "recipe.py"  # the recipe file as it was when the run started
RESOLVED = "recipe.json"  # the recipe with its overrides, as JSON
SAFE_ON_RESUME = ("train.lr", "train.epochs", "train.clip_grad")  # what a resumed run may change


def new_run_dir(out: Path | None, stem: str) -> Path:
    """``out`` if it is new or an empty folder, else ``runs/<stem>-<time>`` (numbered if taken); created."""
    if out is not None:
        if out.exists() and not out.is_dir():
            raise FeatdistillError(f"--out {str(out)!r} is a file, not a folder; nothing was touched. "
                                   "Give the path of a new folder.")
        if out.exists() and any(out.iterdir()):
            raise FeatdistillError(f"--out {str(out)!r} already exists and is not empty; nothing was "
                                   "touched. Pass --resume to continue that run, or choose another --out.")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out, n = Path("runs") / f"{stem}-{stamp}", 1
        while out.exists():
            n += 1
            out = Path("runs") / f"{stem}-{stamp}-{n}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def record_run(run_dir: Path, recipe_path: Path, overrides: list[str], recipe: Recipe) -> None:
    """What ``--resume`` reads back: a copy of the recipe file (the first one is kept), the overrides and the
    resolved recipe (updated when a resume changes a field)."""
    copy = run_dir / RECIPE_COPY
    if not copy.exists():
        shutil.copyfile(recipe_path, copy)
    saved = read_run(run_dir) if (run_dir / RUN_FILE).is_file() else {
        "recipe_path": str(recipe_path.resolve()), "created": time.strftime("%F %T"), "featdistill": __version__,
        "torch": torch.__version__}
    saved["overrides"] = overrides
    (run_dir / RUN_FILE).write_text(json.dumps(saved, indent=2))
    (run_dir / RESOLVED).write_text(dumps(recipe))


def read_run(run_dir: Path) -> dict:
    """``run.json`` of ``run_dir``, or a FeatdistillError saying what is missing or damaged."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise FeatdistillError(f"--resume {str(run_dir)!r}: no {RUN_FILE} there, so it is not a featdistill run "
                               "directory. Pass the folder a run printed as its run directory.")
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved.get("overrides"), list) or not isinstance(saved.get("recipe_path"), str):
            raise ValueError("recipe_path or overrides missing")
    except (ValueError, AttributeError) as exc:
        raise FeatdistillError(f"{path} is damaged ({exc}); this run cannot be resumed. Start a new run "
                               "with the same recipe and another --out (this directory is left as it is).") from None
    return saved


def resume_recipe(run_dir: Path, new_overrides: list[str]) -> tuple[Recipe, Path, list[str]]:
    """The recipe a stopped run started with, from its own copy, plus ``new_overrides`` of ``SAFE_ON_RESUME`` fields;
    ``(recipe, original recipe path, all overrides)``."""
    saved = read_run(run_dir)
    unsafe = [o for o in new_overrides if o.split("=", 1)[0].strip() not in SAFE_ON_RESUME]
    if unsafe:
        raise FeatdistillError(f"--resume can change only {', '.join(SAFE_ON_RESUME)}; {unsafe} would no longer "
                               "match the checkpoint. Start a new run for those.")
    copy = run_dir / RECIPE_COPY
    source = copy if copy.is_file() else Path(saved["recipe_path"])  # runs made before copies were kept
    recipe, problems = try_overrides(load_recipe(source), saved["overrides"])
    resolved = run_dir / RESOLVED
    if not problems and resolved.is_file() and dumps(recipe) != resolved.read_text():
        raise FeatdistillError(
            f"{source} no longer resolves to the recipe this run started with ({resolved}): something it "
            "imports has changed. Restore it, or start a new run with another --out.")
    recipe, more = try_overrides(recipe, new_overrides)
    problems += more + validate(recipe)
    if problems:
        raise RecipeError(problems, str(source))
    return recipe, Path(saved["recipe_path"]), saved["overrides"] + new_overrides
