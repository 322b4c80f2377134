"""``python -m featdistill.run RECIPE``: train a student from a recipe, evaluate it and report.

Exit codes: 0 ok, 2 a problem in the input (the message says what and how to fix it), 1 an internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from .. import __version__
from ..capture import list_layers
from ..config import Recipe
from ..data import make_loaders, sample_batch
from ..distill import Distiller
from ..errors import FeatdistillError
from ..models import build_model, count_params
from ..recipe import apply_overrides, check, dumps, load_recipe
from ..train import CHECKPOINT, Trainer, evaluate
from .report import cpu_latency, plot_curves, summarize
from .teacher import prepare_teacher

RUN_FILE = "run.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m featdistill.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="recipe file (a .py defining `recipe`); optional with --resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field with a Python literal, e.g. --set train.epochs=3 --set kd=None")
    p.add_argument("--out", type=Path, help="run directory (default runs/<recipe>-<time>); never overwritten")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="build both models, print the plan, do not train")
    p.add_argument("--list-layers", choices=["teacher", "student"], help="print module names and output shapes")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs, as a crash would (to test resume)")
    return p.parse_args(argv)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise FeatdistillError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def resolve(args: argparse.Namespace) -> tuple[Recipe, Path | None, list[str]]:
    """The recipe (with overrides) and its source path; with --resume both come from the run directory."""
    if args.resume is not None:
        run_file = args.resume / RUN_FILE
        if not (args.resume / CHECKPOINT).is_file() or not run_file.is_file():
            raise FeatdistillError(f"--resume {str(args.resume)!r}: no {CHECKPOINT} and {RUN_FILE} there; "
                                   "pass the directory of a run that finished at least one epoch")
        if args.overrides or args.recipe:
            raise FeatdistillError("--resume continues a run with its own recipe; drop RECIPE and --set")
        saved = json.loads(run_file.read_text())
        path, overrides = Path(saved["recipe_path"]), saved["overrides"]
    else:
        if not args.recipe:
            raise FeatdistillError("give a recipe file, e.g. python -m featdistill.run recipes/vit_to_deit.py")
        path, overrides = Path(args.recipe), args.overrides
    recipe = apply_overrides(load_recipe(path), overrides)
    return check(recipe, str(path)), path, overrides


def new_run_dir(args: argparse.Namespace, recipe_path: Path) -> Path:
    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            raise FeatdistillError(f"--out {str(args.out)!r} already exists and is not empty; nothing was "
                                   "touched. Pass --resume to continue that run, or choose another --out.")
        out = args.out
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{recipe_path.stem}-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = Path("runs") / f"{recipe_path.stem}-{stamp}-{n}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_distiller(recipe: Recipe, teacher, student, sample: torch.Tensor) -> Distiller:
    return Distiller(teacher, student, recipe.pairs, kd=recipe.kd, sample_input=sample,
                     label_smoothing=recipe.train.label_smoothing)


def list_layers_cmd(recipe: Recipe, which: str) -> int:
    sample = sample_batch(recipe.data, 2)
    spec = recipe.teacher if which == "teacher" else recipe.student
    model = build_model(spec, make_loaders(recipe.data, 2).num_classes, sample.shape[1])
    print(f"{which} {type(model).__name__} ({count_params(model):,} params): name, type, output shape "
          f"for a batch of {sample.shape[0]}")
    for name, desc in list_layers(model, sample):
        print(f"  {name:40s} {desc}")
    return 0


def run(args: argparse.Namespace) -> int:
    recipe, recipe_path, overrides = resolve(args)
    if args.list_layers:
        return list_layers_cmd(recipe, args.list_layers)
    device = pick_device(args.device)
    train = recipe.train
    loaders = make_loaders(recipe.data, train.batch_size, seed=train.seed)
    sample = sample_batch(recipe.data, 2).to(device)
    torch.manual_seed(train.seed)
    if args.dry_run:
        teacher = build_model(recipe.teacher, loaders.num_classes, loaders.in_chans).to(device)
        torch.manual_seed(train.seed)
        student = build_model(recipe.student, loaders.num_classes, loaders.in_chans).to(device)
        with build_distiller(recipe, teacher, student, sample) as distiller:
            print(f"recipe {recipe_path} on {device}; data {recipe.data.name}: {len(loaders.train.dataset)} train / "
                  f"{len(loaders.val.dataset)} val / {len(loaders.test.dataset)} test, {loaders.num_classes} classes")
            teacher_note = "trained on the task first, then cached" if recipe.teacher.pretrain else "as given"
            print(f"teacher: {teacher_note}")
            print(distiller.plan())
        return 0

    run_dir = args.resume if args.resume is not None else new_run_dir(args, recipe_path)
    if args.resume is None:
        (run_dir / RUN_FILE).write_text(json.dumps({
            "recipe_path": str(recipe_path.resolve()), "overrides": overrides, "created": time.strftime("%F %T"),
            "featdistill": __version__, "torch": torch.__version__}, indent=2))
        (run_dir / "recipe.json").write_text(dumps(recipe))
    print(f"run directory: {run_dir}", flush=True)
    teacher, teacher_source = prepare_teacher(recipe, loaders, device, quiet=args.quiet)
    torch.manual_seed(train.seed)
    student = build_model(recipe.student, loaders.num_classes, loaders.in_chans).to(device)
    distiller = build_distiller(recipe, teacher, student, sample)
    if distiller.needs_index:  # a loss with a memory bank: batches carry the samples' indices
        loaders = make_loaders(recipe.data, train.batch_size, seed=train.seed, with_index=True)
    if not args.quiet:
        print(distiller.plan(), flush=True)
    trainer = Trainer(distiller, distiller, loaders, train, device, eval_model=student, run_dir=run_dir,
                      desc="student", quiet=args.quiet)
    if args.resume is not None:
        trainer.resume(run_dir / CHECKPOINT)
        print(f"resuming at epoch {trainer.start_epoch + 1}/{train.epochs}", flush=True)
    trainer.fit(stop_after=args.stop_after)
    if trainer.history and trainer.history[-1]["epoch"] + 1 < train.epochs:  # --stop-after
        print(f"stopped after epoch {trainer.history[-1]['epoch'] + 1}; continue with --resume {run_dir}")
        distiller.close()
        return 0
    student = distiller.export_student()
    torch.save(student.state_dict(), run_dir / "student.pt")
    summary = finish(recipe, teacher, student, loaders, device, run_dir, teacher_source, trainer.history)
    print(summarize(summary))
    print(f"outputs in {run_dir}: summary.json, student.pt, metrics.jsonl, curves.png, checkpoint.pt")
    return 0


def finish(recipe, teacher, student, loaders, device, run_dir: Path, teacher_source: str,
           history: list[dict]) -> dict:
    amp = recipe.train.amp
    student_acc = evaluate(student, loaders.test, device, amp)
    teacher_acc = evaluate(teacher, loaders.test, device, amp) if recipe.eval_teacher else float("nan")
    one = sample_batch(recipe.data, 1)
    latency = cpu_latency({"teacher": teacher, "student": student}, one)
    teacher.to(device), student.to(device)
    summary = {
        "teacher_accuracy": teacher_acc, "student_accuracy": student_acc,
        "teacher_params": count_params(teacher), "student_params": count_params(student),
        "teacher_latency_ms": latency["teacher"], "student_latency_ms": latency["student"],
        "teacher_source": teacher_source, "epochs": recipe.train.epochs, "seed": recipe.train.seed,
        "val_accuracy_history": [e["val_accuracy"] for e in history],  # restored from the checkpoint on --resume
    }
    summary["student_keeps"] = student_acc / teacher_acc if teacher_acc else None
    summary["size_ratio"] = summary["student_params"] / summary["teacher_params"]
    summary["speedup"] = latency["teacher"] / latency["student"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return run(args)
    except FeatdistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... --list-layers student | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is in the run directory's checkpoint (--resume)", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("internal error: this is a bug in featdistill; please report it with the traceback above",
              file=sys.stderr)
        return 1
