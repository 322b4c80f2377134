"""``python -m featdistill.run RECIPE``: train a student from a recipe, evaluate it and report.

Exit codes: 0 ok, 2 a problem in the input (the message says what and how to fix it), 1 an internal error,
130 / 143 stopped by SIGINT / SIGTERM (a checkpoint at that step is written; --resume continues from it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

import torch

from ..config import Recipe
from ..data import Batch, in_chans_of, is_text, make_loaders, sample_batch
from ..distill import Distiller
from ..errors import FeatdistillError, explain
from ..models import build_model
from ..train import (
    CHECKPOINT,
    METRICS,
    Interrupted,
    NonFiniteLoss,
    StopRequest,
    Trainer,
    read_checkpoint,
    speedups,
    trim_metrics,
)
from ..train import distributed as dist_run
from .build import build_distiller, cka_dry_run_note, pairing_input
from .common import recipe_with_overrides
from .list_layers import list_layers_cmd
from .list_losses import list_losses_cmd
from .report import finish, summarize
from .report_html import save_plan
from .rundir import SAFE_ON_RESUME, new_run_dir, record_run, resume_recipe
from .teacher import teacher_for_rank
from .teacher_outputs import budget_line, cached_distiller, planned_entries


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m featdistill.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="recipe file (a .py defining `recipe`); optional with --resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field with a Python literal, e.g. --set train.epochs=3 --set kd=None; "
                        f"with --resume only {', '.join(SAFE_ON_RESUME)}")
    p.add_argument("--out", type=Path, help="run directory (default runs/<recipe>-<time>); never overwritten")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="build both models, print the plan, do not train")
    p.add_argument("--list-layers", choices=["teacher", "student"], help="print module names and output shapes")
    p.add_argument("--list-losses", action="store_true",
                   help="print every registered loss (grouped, with aliases, defaults and needs) and exit; no recipe")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs, as a crash would (to test resume)")
    return p.parse_args(argv)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise FeatdistillError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def resolve(args: argparse.Namespace) -> tuple[Recipe, Path, list[str]]:
    """The recipe with its overrides and its source path; with --resume, from the run directory. Every problem
    (overrides and validation together) is reported at once."""
    if args.stop_after is not None and args.stop_after < 1:
        raise FeatdistillError(f"--stop-after must be 1 or more (epochs to train before stopping), got "
                               f"{args.stop_after}")
    if args.resume is not None:
        if args.recipe:
            raise FeatdistillError("--resume continues a run with its own copy of the recipe; drop RECIPE")
        return resume_recipe(args.resume, args.overrides)
    if not args.recipe:
        raise FeatdistillError("give a recipe file, e.g. python -m featdistill.run recipes/vit_to_deit.py")
    path = Path(args.recipe)
    return recipe_with_overrides(path, args.overrides), path, args.overrides


def describe_sample(recipe: Recipe, sample) -> tuple[str, str]:
    """The sample batch with the data settings that shape it, and the model setting to fit, for error messages."""
    if is_text(recipe.data):
        return f"input_ids {list(sample['input_ids'].shape)} (data.block_size={recipe.data.block_size})", \
            "n_positions"
    return (f"{list(sample.shape)} (data.image_size={recipe.data.image_size}, data.in_chans={recipe.data.in_chans})",
            "img_size")


def preflight(recipe: Recipe, num_classes: int, sample, device: torch.device,
              num_samples: int | None = None, pairing=None) -> Distiller:
    """Build both models and the Distiller on a sample batch (a tensor ``[B, C, S, S]`` or a dict of ``input_ids`` /
    ``attention_mask [B, T]``) before anything expensive: every model setting, layer name, shape, adapter and loss
    is checked here, not after the teacher stage. The caller closes it."""
    models = []
    for side, spec in (("teacher", recipe.teacher), ("student", recipe.student)):
        torch.manual_seed(recipe.train.seed)
        model = build_model(spec, num_classes, in_chans_of(recipe.data), where=side).to(device)
        try:
            with torch.no_grad():
                Batch.of(sample).run(model.eval())
        except (RuntimeError, ValueError, AssertionError, TypeError, IndexError) as exc:
            known = explain(exc)
            what, knob = describe_sample(recipe, sample)
            raise known or FeatdistillError(
                f"the {side} cannot run on a sample batch {what}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Make {side}.kwargs (e.g. {knob}) fit the data."
            ) from None
        models.append(model.train())
    return build_distiller(recipe, *models, sample, num_samples, pairing)


def train_loaders(recipe: Recipe, with_index: bool = False, pin_memory: bool = False):
    """The run's loaders: under torchrun, this rank's share of each global batch of ``train.batch_size``. With a
    teacher-output cache, batches carry their indices and epochs cycle through its augmentation views."""
    world, train, cache = dist_run.current(), recipe.train, recipe.teacher_cache
    return make_loaders(recipe.data, dist_run.per_rank_batch(train.batch_size, world), seed=train.seed,
                        rank=world.rank, world_size=world.size, with_index=with_index or cache is not None,
                        pin_memory=pin_memory, views=cache.views if cache is not None else None)


def run(args: argparse.Namespace) -> int:
    world = dist_run.from_env()  # torchrun's environment, or a single process
    if world.distributed:
        device = dist_run.start(world, pick_device(args.device))
    if args.list_losses:
        return list_losses_cmd()
    recipe, recipe_path, overrides = resolve(args)
    if args.list_layers:
        return list_layers_cmd(recipe, args.list_layers)
    if not world.distributed:
        device = pick_device(args.device)
    train = recipe.train
    loaders = train_loaders(recipe, pin_memory=device.type == "cuda")
    sample = Batch.of(sample_batch(recipe.data, 2)).to(device).inputs  # a tensor, or a dict of token tensors
    with preflight(recipe, loaders.num_classes, sample, device, len(loaders.train.dataset),
                   pairing_input(recipe, loaders, device)) as checked:
        cache_line = None  # checked before the teacher stage: a cache over its budget is refused here
        if recipe.teacher_cache is not None:
            cache_line = budget_line(recipe, planned_entries(recipe, checked, sample)[0], len(loaders.train.dataset))
        if args.dry_run:
            unit = (f" blocks of {recipe.data.block_size} tokens, a vocabulary of {loaders.num_classes}"
                    if is_text(recipe.data) else f", {loaders.num_classes} classes")
            print(f"recipe {recipe_path} on {device}; data {recipe.data.name}: {len(loaders.train.dataset)} train / "
                  f"{len(loaders.val.dataset)} val / {len(loaders.test.dataset)} test{unit}")
            teacher_note = "trained on the task first, then cached" if recipe.teacher.pretrain else "as given"
            print(f"batch: train.batch_size={train.batch_size} is the global batch, "
                  f"{train.batch_size // world.size} per process on {world.size} process(es)")
            print(f"teacher: {teacher_note}")
            if cka_dry_run_note(recipe):  # issue 16: pairs='cka' on a teacher not trained yet
                print(cka_dry_run_note(recipe))
            if cache_line:
                print(cache_line)
            print(checked.plan())
            return 0
    del checked

    run_dir = None
    if world.main:  # under torchrun, rank 0 alone makes and records the run directory
        run_dir = args.resume if args.resume is not None else new_run_dir(args.out, recipe_path.stem)
    run_dir = Path(dist_run.share(str(run_dir) if run_dir else None))
    saved = read_checkpoint(run_dir / CHECKPOINT) if (run_dir / CHECKPOINT).is_file() else None  # before the teacher
    if world.main:
        record_run(run_dir, recipe_path, overrides, recipe)
    print(f"run directory: {run_dir}", flush=True)
    with StopRequest() as stop:
        return train_and_report(args, recipe, loaders, sample, device, run_dir, stop, saved)


def train_and_report(args: argparse.Namespace, recipe: Recipe, loaders, sample, device: torch.device,
                     run_dir: Path, stop: StopRequest, saved: dict | None) -> int:
    """The teacher stage, distillation (resumed from ``saved``, the run's checkpoint, if any), the test and the
    summary."""
    train, world = recipe.train, dist_run.current()
    torch.manual_seed(train.seed)
    teacher, teacher_source = teacher_for_rank(recipe, loaders, device, quiet=args.quiet, fallback_dir=run_dir,
                                               stop=stop)
    torch.manual_seed(train.seed)
    student = build_model(recipe.student, loaders.num_classes, loaders.in_chans, where="student").to(device)
    teacher_accuracy = None
    if recipe.teacher_cache is not None:
        distiller, teacher_accuracy, note = cached_distiller(recipe, teacher, student, loaders, device, sample)
        loaders.on_epoch.append(distiller.teacher_source.set_epoch)
        print(note, flush=True)
    else:
        distiller = build_distiller(recipe, teacher, student, sample, len(loaders.train.dataset),
                                    pairing_input(recipe, loaders, device))
    if distiller.needs_index and recipe.teacher_cache is None:  # a memory-bank loss: batches carry indices
        loaders = train_loaders(recipe, with_index=True, pin_memory=device.type == "cuda")
    if not args.quiet:
        print(distiller.plan(), flush=True)
    if world.main:
        save_plan(run_dir, distiller)  # for report.html (issue 16)
    # after the dry run (it finds the captures to copy), before DDP (it registers the parameters as they will be)
    speedups.apply(train, student, None if recipe.teacher_cache else distiller.teacher,
                   extra=[distiller.adapters, distiller.feature_losses])
    model = dist_run.wrap(distiller, device, sync_bn=train.sync_bn)  # DDP under torchrun, else the Distiller
    dist_run.seed_rank(train.seed, world)
    trainer = Trainer(distiller, model, loaders, train, device, eval_model=student,
                      run_dir=run_dir if world.main else None, desc="student", quiet=args.quiet or not world.main,
                      world=world)
    if saved is not None:
        trainer.resume(run_dir / CHECKPOINT, saved)
        epoch, batch = trainer.start
        print(f"resuming at epoch {epoch + 1}/{train.epochs}" + (f", batch {batch + 1}" if batch else ""), flush=True)
    elif args.resume is not None and world.main:
        trim_metrics(run_dir / METRICS, 0, 0)
        print("no checkpoint yet (stopped in the first epoch): starting from the beginning", flush=True)
    try:
        trainer.fit(stop_after=args.stop_after, stop=stop)
    except NonFiniteLoss as exc:
        raise FeatdistillError(f"{exc}\n{diverged(recipe, exc.term, run_dir)}") from None
    finally:
        distiller.close()
    if trainer.history and trainer.history[-1]["epoch"] + 1 < train.epochs:  # --stop-after
        print(f"stopped after epoch {trainer.history[-1]['epoch'] + 1}; continue with --resume {run_dir}")
        return 0
    student = speedups.uncompile(distiller.export_student())
    speedups.uncompile(teacher)  # the test and the latency figures run both models as a user would load them
    if not world.main:
        return 0  # rank 0 tests, summarises and writes the rest; the others wait for it in dist_run.shutdown
    torch.save(student.state_dict(), run_dir / "student.pt")
    summary = finish(recipe, teacher, student, loaders, device, run_dir, teacher_source, trainer.history,
                     teacher_accuracy)
    print(summarize(summary))
    print(f"outputs in {run_dir}: summary.json, student.pt, metrics.jsonl, curves.png, report.html, checkpoint.pt")
    return 0


def diverged(recipe: Recipe, term: str, run_dir: Path) -> str:
    """Which settings govern the term that went non-finite first, and how to continue with a lower rate."""
    governs = {"task": "train.lr, train.label_smoothing", "kd": "kd.temperature, kd.alpha, train.lr"}
    if term.startswith("feat/"):
        index = next((i for i, p in enumerate(recipe.pairs if isinstance(recipe.pairs, tuple) else ())
                      if f"feat/{p.key}" == term), None)
        where = f"pairs[{index}]" if index is not None else "the automatic pairs"
        governs[term] = f"{where}.weight, {where}.loss, {where}.normalize, train.lr"
    kept = "the last checkpoint is kept" if (run_dir / CHECKPOINT).is_file() else "no epoch finished yet"
    return (f"It is governed by {governs.get(term, 'train.lr')}. {kept.capitalize()}; continue with a lower "
            f"rate: python -m featdistill.run --resume {run_dir} --set train.lr={recipe.train.lr / 2:g}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    return dist_run.shutdown(guarded(args))  # under torchrun a failed rank exits at once: torchrun stops the rest


def guarded(args: argparse.Namespace) -> int:
    """``run(args)`` with every failure turned into its message and exit code."""
    try:
        return run(args)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        if not dist_run.current().main:
            pass  # rank 0 says where its checkpoint is
        elif exc.saved and exc.run_dir is not None:
            epoch, batch = exc.position
            print(f"stopped by {name} at epoch {epoch + 1}, batch {batch + 1}; a checkpoint there is in "
                  f"{exc.run_dir}. Continue with: python -m featdistill.run --resume {exc.run_dir}", file=sys.stderr)
        else:
            print(f"stopped by {name} during the teacher stage; nothing was cached. Run the same command again "
                  "(or --resume the run directory) to start it over.", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted; --resume RUN_DIR continues a run from its last checkpoint (or from the start if it has "
              "none)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... --list-layers student | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:
        known = explain(exc)
        if known is not None:
            print(f"error{dist_run.current().tag()}: {known}", file=sys.stderr)
            return 2
        if dist_run.peer_failed(exc):  # another rank failed first: end with its exit code
            failed = dist_run.first_failure()
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            print(f"stopped{dist_run.current().tag()}: " + (f"rank {failed[0]} failed (exit code {failed[1]}); "
                  "its error is above" if failed else f"a collective operation failed ({first}); another process "
                  "of this job most likely failed first: its error is above"), file=sys.stderr)
            return failed[1] if failed else 1
        traceback.print_exc()
        print("internal error: this is a bug in featdistill; please report it with the traceback above",
              file=sys.stderr)
        return 1
