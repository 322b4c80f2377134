"""The teacher stage: load a checkpoint, or train the teacher on the task once and cache it.

A cache entry is keyed by all a trained teacher depends on (:mod:`.teacher_key`). An entry that cannot be loaded is
moved aside and the teacher trained again; a cache that cannot be written keeps the trained teacher in
``fallback_dir`` instead of losing it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Recipe, Train
from ..data import IGNORE_INDEX, Batch, make_loaders
from ..errors import FeatdistillError
from ..models import build_model, load_weights
from ..train import NonFiniteLoss, StopRequest, Trainer, atomic_save, distributed, logits_of, speedups
from .teacher_key import cache_dir, cache_path, key

__all__ = ["cache_dir", "cache_path", "prepare_teacher", "teacher_for_rank"]


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<path>.damaged`` (``.damaged.1``, ... when taken); never overwrites nor deletes."""
    target, n = path.with_name(f"{path.name}.damaged"), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged.{n}")
    os.rename(path, target)
    return target


def _why(exc: BaseException) -> str:
    """The errno text of an OSError (with the file it names), else the first line of the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _keep_elsewhere(teacher: nn.Module, path: Path, why: str, fallback_dir: Path | None) -> str:
    """Save the trained teacher to ``fallback_dir/teacher.pt`` after the cache refused it; the source message."""
    setting = os.environ.get("FEATDISTILL_CACHE")
    where = f"$FEATDISTILL_CACHE={setting}" if setting else "$FEATDISTILL_CACHE is unset, so ~/.cache/featdistill"
    fix = "set $FEATDISTILL_CACHE to a writable folder with free space to cache it"
    kept, failed = None, ""
    if fallback_dir is not None:
        tmp = Path(fallback_dir) / ".teacher.pt.tmp"
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            torch.save(teacher.state_dict(), tmp)
            os.replace(tmp, tmp.parent / "teacher.pt")
            kept = tmp.parent / "teacher.pt"
        except (OSError, RuntimeError) as exc:
            failed = f"; saving it to {tmp.parent / 'teacher.pt'} failed too ({_why(exc)})"
            with contextlib.suppress(OSError):  # no half file left behind
                tmp.unlink(missing_ok=True)
    then = (f"Kept it at {kept}: reuse it with --set teacher.checkpoint='{kept}' --set teacher.pretrain=None, or "
            f"{fix}." if kept else f"It is used for this run only{failed}; {fix}.")
    print(f"teacher: cannot cache the trained teacher at {path} ({where}): {why}. {then}", flush=True)
    return f"trained, not cached ({why}); " + (f"kept at {kept}" if kept else "used for this run only")


def _diverged(exc: NonFiniteLoss, train: Train) -> FeatdistillError:
    numbers = exc.what  # "the loss became nan at ...", without the student's advice
    clip = "" if train.clip_grad else ", or enable teacher.pretrain.clip_grad (e.g. 1.0)"
    return FeatdistillError(
        f"the teacher stage diverged: {numbers}. Lower teacher.pretrain.lr (now {train.lr:g}; e.g. --set "
        f"teacher.pretrain.lr={train.lr / 2:g}) or raise teacher.pretrain.warmup_epochs (now "
        f"{train.warmup_epochs:g}){clip}.")


def _build(recipe: Recipe, loaders, device: torch.device) -> nn.Module:
    if recipe.teacher.pretrain is not None:
        torch.manual_seed(recipe.teacher.pretrain.seed)
    return build_model(recipe.teacher, loaders.num_classes, loaders.in_chans, where="teacher").to(device)


def prepare_teacher(recipe: Recipe, loaders, device: torch.device, quiet: bool = False, *,
                    fallback_dir: Path | None = None, stop: StopRequest | None = None) -> tuple[nn.Module, str]:
    """The teacher, ready to distil from, and where it came from (a message for the summary).

    A teacher trained here depends only on what its cache key holds (its spec, its training settings and seed,
    the data): it is initialised from ``pretrain.seed`` and trained on loaders of its own batch size and seed,
    never the student's, so the cached file is the same whichever run or student seed happened to make it.
    A damaged cache entry is moved aside and the teacher trained again; when the cache cannot be written, the
    trained teacher is saved to ``fallback_dir / 'teacher.pt'`` (when given) and returned all the same. A signal
    caught by ``stop`` ends the stage after the step in flight (:class:`~featdistill.train.Interrupted`)."""
    recipe = replace(recipe, data=recipe.data.for_teacher())  # real text only: never data.train_root
    spec = recipe.teacher
    if spec.pretrain is None:
        teacher = _build(recipe, loaders, device)
        return teacher, f"checkpoint {spec.checkpoint}" if spec.checkpoint else "as built (no training)"
    path, uncacheable = key(recipe)
    teacher = _build(recipe, loaders, device)
    refused = None  # why the cache must not be written (a damaged entry that could not be moved aside)
    try:
        cached = path is not None and path.exists()
    except OSError:  # an unreadable cache folder: train, then try to write there (or keep the teacher elsewhere)
        cached = False
    if cached:
        try:
            load_weights(teacher, path)
        except FeatdistillError as exc:
            try:
                damaged = _move_aside(path)
                print(f"teacher: the cached teacher {path} is damaged; moved it to {damaged} and training the "
                      f"teacher again. The error: {exc}", flush=True)
            except OSError as err:
                refused = f"the damaged entry could not be moved aside to {path}.damaged: {_why(err)}"
                print(f"teacher: the cached teacher {path} is damaged and {refused}; training the teacher again "
                      f"for this run, leaving it as it is. The error: {exc}", flush=True)
            teacher = _build(recipe, loaders, device)  # load_state_dict may have copied part of it in
        else:
            print(f"teacher: reusing the cached teacher {path}", flush=True)
            return teacher, f"cached {path}"
    if path is None:
        print(f"teacher: training on the task first ({spec.pretrain.epochs} epochs), for this run only: it cannot be "
              f"cached because {uncacheable}. To cache it, define the factory with `def` (or `class`) in a .py file, "
              "e.g. the recipe file, not as a lambda typed interactively.", flush=True)
    else:
        print(f"teacher: training on the task first ({spec.pretrain.epochs} epochs); it will be cached at {path}",
              flush=True)
    torch.manual_seed(spec.pretrain.seed)
    smoothing = spec.pretrain.label_smoothing

    def loss_fn(batch: Batch) -> dict:
        logits = logits_of(batch.run(teacher))  # [B, K], or [B, T, V] for a language model (HF: its .logits)
        # per token for an LM: labels [B, T] are already the next tokens; padding (IGNORE_INDEX) is left out
        loss = F.cross_entropy(logits.flatten(0, -2), batch.labels.flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=smoothing)
        return {"loss": loss, "task": loss}

    own = make_loaders(recipe.data, spec.pretrain.batch_size, seed=spec.pretrain.seed)
    try:
        speedups.apply(spec.pretrain, teacher)
        Trainer(teacher, loss_fn, own, spec.pretrain, device, teacher, desc="teacher", quiet=quiet).fit(stop=stop)
    except NonFiniteLoss as exc:
        raise _diverged(exc, spec.pretrain) from None
    finally:
        speedups.uncompile(teacher)
    if path is None:
        return teacher, f"trained for this run only (not cached: {uncacheable})"
    if refused:
        return teacher, _keep_elsewhere(teacher, path, refused, fallback_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(teacher.state_dict(), path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        return teacher, _keep_elsewhere(teacher, path, _why(exc), fallback_dir)
    return teacher, f"trained and cached at {path}"


def teacher_for_rank(recipe: Recipe, loaders, device: torch.device, quiet: bool = False, *,
                     fallback_dir: Path | None = None, stop: StopRequest | None = None) -> tuple[nn.Module, str]:
    """:func:`prepare_teacher` in a single process. Under torchrun, rank 0 alone prepares it (training and caching it
    if need be) while the other ranks wait; they then build the same architecture and receive rank 0's weights by
    broadcast, so they never write the cache and need no file system shared with rank 0."""
    world = distributed.current()
    if world.main:
        teacher, source = prepare_teacher(recipe, loaders, device, quiet, fallback_dir=fallback_dir, stop=stop)
    distributed.wait_for_main()
    if not world.main:  # its weights come from rank 0: no checkpoint to read, nothing to train
        spec = replace(recipe.teacher, checkpoint=None, pretrain=None)
        teacher, source = build_model(spec, loaders.num_classes, loaders.in_chans, where="teacher").to(device), None
    distributed.broadcast_module(teacher)
    return teacher, distributed.share(source)
