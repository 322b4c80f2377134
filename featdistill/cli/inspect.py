"""``python -m featdistill.inspect RECIPE``: before training, what the teacher's soft targets hold and which layers
align; after a run (``--run RUN_DIR``), whether the feature terms pulled the student toward the teacher.

Dark knowledge: the teacher's soft targets softmax(z/T) on the held-out (validation) split at T = 1, 2, 4, 8:
mean entropy (bits), mass off the true class, which classes it relates, and a suggested T: the highest T at which
the true class still gets most of the mass on average. Layer similarity: linear CKA between the student's and the
teacher's stages (or blocks) on a fixed held-out batch, the recipe's pairs marked, the best order-preserving
pairing by CKA beside the uniform-depth one. Writes dark_knowledge.png, cka.png and inspect.json into --out.

Exit codes: 0 ok, 2 a problem in the input (the message says what and how to fix it), 1 an internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from .. import analysis as an
from ..capture import auto_pairs, resolve_module
from ..config import AutoPairs, Pair, Recipe
from ..data import is_text, make_loaders
from ..errors import FeatdistillError, UnknownNameError
from ..models import build_model, load_weights
from .build import pairing_input
from .common import exit_code, recipe_with_overrides
from .inspect_output import LayerReport, plot_cka, plot_dark_knowledge
from .rundir import RUN_FILE, new_run_dir, resume_recipe
from .teacher import prepare_teacher


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m featdistill.inspect", description=__doc__ + "\n" + an.worked_example(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="recipe file (a .py defining `recipe`); not with --run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field with a Python literal, e.g. --set teacher.pretrain.epochs=5")
    p.add_argument("--run", type=Path, metavar="RUN_DIR",
                   help="a finished run: CKA at each of its pairs before (fresh init, the run's seed) and after "
                        "training")
    p.add_argument("--out", type=Path, help="output folder (default runs/inspect-<recipe>-<time>); never overwritten")
    p.add_argument("--layers-student", action="append", default=[], metavar="NAMES",
                   help="comma-separated student layers to compare (default: its stages, else its blocks)")
    p.add_argument("--layers-teacher", action="append", default=[], metavar="NAMES",
                   help="comma-separated teacher layers to compare (default: its stages, else its blocks)")
    p.add_argument("--batch", type=int, default=256, metavar="N",
                   help="held-out images in the fixed CKA batch (default 256, or the whole split if smaller)")
    p.add_argument("--seed", type=int, default=0, help="which held-out images form the CKA batch")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Recipe, str]:
    """The recipe (with overrides, or a run's own) and a name for the output folder."""
    if args.batch < 2:
        raise FeatdistillError(f"--batch must be 2 or more (CKA compares samples), got {args.batch}")
    if args.run is not None:
        if args.recipe or args.overrides:
            raise FeatdistillError("--run inspects a run with its own recipe; drop RECIPE and --set")
        if not args.run.is_dir() or not (args.run / RUN_FILE).is_file():
            raise FeatdistillError(f"--run {str(args.run)!r} is not a featdistill run directory (no {RUN_FILE} "
                                   "there); pass the folder a run printed as its run directory.")
        if not (args.run / "student.pt").is_file():
            raise FeatdistillError(f"--run {str(args.run)!r} has no student.pt: the run has not finished. Finish it "
                                   f"with python -m featdistill.run --resume {args.run}")
        recipe, path, _ = resume_recipe(args.run, [])
        return recipe, f"inspect-{args.run.name}"
    if not args.recipe:
        raise FeatdistillError("give a recipe file, e.g. python -m featdistill.inspect recipes/vit_to_deit.py")
    path = Path(args.recipe)
    return recipe_with_overrides(path, args.overrides), f"inspect-{path.stem}"


def _names(values: list[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _layers(model, requested: list[str], side: str) -> list[str]:
    names = _names(requested) or an.candidate_layers(model)
    try:
        for name in names:
            resolve_module(model, name)
    except UnknownNameError as exc:
        raise UnknownNameError(f"--layers-{side}: {exc}") from None
    return names


def _pairs(recipe: Recipe, teacher, student, loaders, device: torch.device) -> list[Pair]:
    """The pairs a run of ``recipe`` would train: ``pairs='cka'`` measured as the run measures them (the same fixed
    batch of training images, the student at initialisation)."""
    if isinstance(recipe.pairs, AutoPairs) and recipe.pairs.by == "cka":
        return an.cka_pairs(teacher, student, pairing_input(recipe, loaders, device), recipe.pairs.n_pairs,
                            **recipe.pairs.pair_kwargs())[0]
    if isinstance(recipe.pairs, AutoPairs):
        return auto_pairs(teacher, student, recipe.pairs.n_pairs, **recipe.pairs.pair_kwargs())[0]
    return list(recipe.pairs)


def held_out(recipe: Recipe, device: torch.device):
    """The loaders and the validation split (the test split if there is no validation one): ``x [N, C, S, S]``,
    ``y [N]``, in a fixed order."""
    loaders = make_loaders(recipe.data, 256, seed=recipe.train.seed, num_workers=0)
    split = loaders.val if len(loaders.val.dataset) else loaders.test
    xs, ys = zip(*((b[0], b[1]) for b in split))
    return loaders, torch.cat(xs).to(device), torch.cat(ys).to(device)


def inspect(args: argparse.Namespace) -> int:
    from .run import pick_device

    recipe, stem = resolve(args)
    if is_text(recipe.data):
        raise FeatdistillError(f"inspect supports image recipes for now; data.name={recipe.data.name!r} is text "
                               "(a causal LM). Dark knowledge and CKA for language models are not implemented yet.")
    device = pick_device(args.device)
    loaders, x, y = held_out(recipe, device)
    # layer names are checked on the architectures first: a typo must not wait for a teacher to train
    torch.manual_seed(recipe.train.seed)  # the student a run with this recipe starts from
    student = build_model(recipe.student, loaders.num_classes, loaders.in_chans, where="student").to(device).eval()
    s_layers = _layers(student, args.layers_student, "student")
    shape_only = build_model(replace(recipe.teacher, checkpoint=None), loaders.num_classes, loaders.in_chans, "teacher")
    t_layers = _layers(shape_only, args.layers_teacher, "teacher")
    del shape_only
    out = new_run_dir(args.out, stem)
    print(f"inspect: writing into {out}", flush=True)
    teacher, source = prepare_teacher(recipe, loaders, device, fallback_dir=out)
    teacher.eval()
    dk = an.analyse(an.model_logits(teacher, x).cpu(), y.cpu())
    print("\n".join(["", "== dark knowledge =="] + dk.lines()), flush=True)

    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.batch]
    xb = x[pick.sort().values.to(device)]
    t_feats = an.layer_features(teacher, t_layers, xb)
    cka = an.cka_matrix(an.layer_features(student, s_layers, xb), t_feats).float().cpu()
    pairs = _pairs(recipe, teacher, student, loaders, device)
    marked = an.marked_pairs(pairs, s_layers, t_layers)
    pairs_cka, t_pair = an.pair_cka(pairs, teacher, student, xb) if pairs else ({}, None)
    uniform = an.uniform_pairing(len(s_layers), len(t_layers))
    report = LayerReport(s_layers, t_layers, cka, an.best_pairing(cka), uniform, marked, pairs_cka, int(xb.shape[0]))
    if args.run is not None:
        load_weights(student, args.run / "student.pt")
        student.eval()
        report.cka_after = an.cka_matrix(an.layer_features(student, s_layers, xb), t_feats).float().cpu()
        report.pair_after = an.pair_cka(pairs, teacher, student, xb, t_pair)[0] if pairs else {}
    print("\n".join(["", "== layer similarity =="] + report.lines()), flush=True)

    plot_dark_knowledge(dk, out / "dark_knowledge.png")
    plot_cka(report, out / "cka.png")
    (out / "inspect.json").write_text(json.dumps(
        {"recipe": stem.removeprefix("inspect-"), "run": str(args.run) if args.run else None,
         "teacher": source, "dark_knowledge": dk.to_json(), "layers": report.to_json()}, indent=2))
    print(f"\noutputs in {out}: dark_knowledge.png, cka.png, inspect.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return inspect(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return exit_code(exc)
