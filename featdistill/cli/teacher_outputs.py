"""The runner's side of ``Recipe(teacher_cache=TeacherCache(...))``: the cache's key, its size against the budget,
and a Distiller whose teacher's side comes from a warm cache, or from one filled here first.

A cache is keyed by all its contents depend on: the teacher's weights (sha256 of its tensors), the data settings,
the seed (augmentation and text offsets follow it), the number of views, what is stored (logits or not, top-k and,
then, the temperature the rest mass is exact at; the dtype; autocast) and each pair's teacher side (layers,
``teacher_select``, capture, repeat). A pair whose loss and adapter are registered names is stored as its loss's
target (``Distiller.teacher_targets``: e.g. attention transfer's normalised map), so its key also holds the loss,
the adapter, ``normalize``, the student's side and the student model. It lives under
``$FEATDISTILL_CACHE/teacher_outputs/<hash>/``. A folder that is damaged or made for another key is moved aside
(``.damaged``) with a message and the cache filled again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from ..config import Data, Pair, Recipe
from ..data import Batch, is_text, view_loaders
from ..distill import Distiller
from ..distill.cached_teacher import CachedTeacher, encode, entries_of, fill
from ..distill.output_store import DamagedCache, Entry, OutputStore, StoreWriter, total_bytes
from ..errors import FeatdistillError
from ..recipe import to_dict
from ..train import distributed, evaluate
from ..train.trainer import autocast
from .build import build_distiller, pairing_input
from .teacher import _move_aside
from .teacher_key import cache_dir

SPEED_ONLY = {f.name for f in fields(Data) if f.metadata.get("speed_only")}


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in ``model.state_dict()``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def stores_target(pair: Pair) -> bool:
    """Whether the cache stores ``pair``'s loss target rather than its captured feature: when its loss and adapter
    are registered names, so the key can say exactly what made the target (a user's callable could change
    between runs without its name changing)."""
    return not pair.multi_layer and isinstance(pair.loss, str) and isinstance(pair.adapter, str)


def _teacher_side(pair: Pair) -> dict:
    side = {"layers": list(pair.layers("teacher")), "select": to_dict(pair.teacher_select), "capture": pair.capture,
            "repeat": pair.repeat}
    if stores_target(pair):  # the target also depends on the adapter the student's side chose ('auto')
        side["target"] = {"loss": pair.loss, "loss_kwargs": to_dict(pair.loss_kwargs), "adapter": pair.adapter,
                          "adapter_kwargs": to_dict(pair.adapter_kwargs), "normalize": pair.normalize,
                          "student": list(pair.layers("student")), "student_select": to_dict(pair.select)}
    return side


def output_key(recipe: Recipe, teacher: nn.Module, pairs: list[Pair]) -> dict:
    """Everything the cached outputs depend on, as plain JSON values."""
    cache, need_logits = recipe.teacher_cache, recipe.kd is not None
    key = {"teacher_sha256": weights_sha256(teacher),
           "data": {k: v for k, v in to_dict(recipe.data).items() if k not in SPEED_ONLY},
           "seed": recipe.train.seed, "views": cache.views, "dtype": cache.dtype, "amp": recipe.train.amp,
           "logits": need_logits, "top_k": cache.top_k if need_logits else None,
           "temperature": recipe.kd.temperature if need_logits and cache.top_k else None,
           "pairs": [_teacher_side(p) for p in pairs]}
    if any(stores_target(p) for p in pairs):
        key["student"] = {"name": to_dict(recipe.student.name), "kwargs": to_dict(recipe.student.kwargs)}
    return key


def stored_targets(distiller: Distiller) -> tuple[list[bool], Callable[[list], list]]:
    """Which pairs the cache stores as loss targets, and the function that makes them from captured features."""
    stored = [stores_target(p) for p in distiller.pairs]
    keep = [not s for s in stored]
    return stored, lambda features: distiller.teacher_targets(features, done=keep)


def store_path(key: dict) -> Path:
    return cache_dir() / "teacher_outputs" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def planned_entries(recipe: Recipe, distiller: Distiller, sample) -> tuple[list[Entry], dict[str, list[int]]]:
    """What one sample stores, measured by a forward of the distiller's teacher on ``sample``, and the captured
    shapes of the entries stored as loss targets (the plan of a later run is checked against those)."""
    cache, kd = recipe.teacher_cache, recipe.kd
    with torch.no_grad():
        out = distiller.teacher_source(Batch.of(sample), need_logits=kd is not None)
        stored, targets = stored_targets(distiller)
        raw = encode(out, cache.top_k, kd.temperature if kd else 1.0)
        encoded = encode(out._replace(features=targets(out.features)), cache.top_k, kd.temperature if kd else 1.0)
    raw_shapes = {name: list(raw[name].shape[1:]) for name in encoded if name.startswith("pair")
                  and stored[int(name[4:].split(".")[0])]}
    return entries_of(encoded, cache.dtype), raw_shapes


def budget_line(recipe: Recipe, entries: list[Entry], num_samples: int) -> str:
    """The plan's line about the cache; raises FeatdistillError when it would exceed ``teacher_cache.max_gb``."""
    cache = recipe.teacher_cache
    size = total_bytes(entries, num_samples, cache.views)
    per = sum(e.nbytes() for e in entries)
    what = ", ".join(f"{e.name} {list(e.shape)}" for e in entries)
    if size > cache.max_gb * 1e9:
        biggest = max(entries, key=Entry.nbytes)
        raise FeatdistillError(
            f"the teacher-output cache would take {size / 1e6:,.1f} MB ({cache.views} views x {num_samples:,} samples "
            f"x {per:,} bytes: {what}), over teacher_cache.max_gb={cache.max_gb:g}. Record fewer views (--set "
            f"teacher_cache.views=...), keep only the top logits (--set teacher_cache.top_k=...), pair fewer or "
            f"smaller teacher layers (the largest entry is {biggest.name}), or raise teacher_cache.max_gb.")
    return (f"teacher outputs: cached, {cache.views} view(s) x {num_samples:,} samples x {per:,} bytes = "
            f"{size / 1e6:,.1f} MB on disk under {cache_dir() / 'teacher_outputs'} ({what}; {cache.dtype}); epoch e "
            f"trains on augmentation view e mod {cache.views}; the teacher runs only to record them, once per "
            "recipe, seed and teacher")


def _open(path: Path, key: dict) -> OutputStore | None:
    """The warm cache at ``path``, or None (a damaged one is moved aside, with a message)."""
    if not path.exists():
        return None
    try:
        return OutputStore.open(path, key)
    except DamagedCache as exc:
        try:
            aside = _move_aside(path)
            print(f"teacher outputs: the cache {path} cannot be used ({exc}); moved it to {aside} and recording "
                  "the outputs again", flush=True)
        except OSError as err:
            raise FeatdistillError(f"the teacher-output cache {path} is damaged ({exc}) and cannot be moved aside "
                                   f"({err}); delete it, or set $FEATDISTILL_CACHE to another folder") from None
        return None


def _fill(recipe: Recipe, distiller: Distiller, loaders, device: torch.device, key: dict, path: Path,
          entries: list[Entry], raw_shapes: dict[str, list[int]]) -> OutputStore:
    cache, kd, train = recipe.teacher_cache, recipe.kd, recipe.train
    num_samples = len(loaders.train.dataset)
    print(f"teacher outputs: recording {cache.views} view(s) of the {num_samples:,} training samples "
          f"({total_bytes(entries, num_samples, cache.views) / 1e6:,.1f} MB) into {path}", flush=True)
    stored, targets = stored_targets(distiller)
    extra = {"targets": stored, "raw_shapes": raw_shapes}
    if recipe.eval_teacher and not is_text(recipe.data):  # the summary's teacher accuracy, without the teacher later
        extra["teacher_accuracy"] = evaluate(distiller.teacher, loaders.test, device, train.amp)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter(path.with_name(f"{path.name}.tmp-{os.getpid()}"), path, entries, num_samples,
                         cache.views, key)
    try:
        fill(writer, distiller.teacher_source, view_loaders(recipe.data, train.batch_size, train.seed, cache.views),
             kd is not None, cache.top_k, kd.temperature if kd else 1.0, device,
             lambda: autocast(device, train.amp), targets)
        return OutputStore.open(writer.commit(extra), key, verify=False)
    except BaseException:
        writer.abandon()
        raise


def cached_distiller(recipe: Recipe, teacher: nn.Module, student: nn.Module, loaders, device: torch.device,
                     sample) -> tuple[Distiller, float | None, str]:
    """The recipe's Distiller with a :class:`CachedTeacher`, the teacher's test accuracy recorded with the cache
    (None for text or when not measured), and a message for the log. With explicit pairs and a warm cache the
    teacher never runs; otherwise a Distiller with the live teacher is built (it fills a cold cache) and then
    switched to the cache. Under torchrun rank 0 opens or fills it while the others wait; a rank that cannot see
    rank 0's folder (no shared file system) records its own copy."""
    main, num_samples = distributed.current().main, len(loaders.train.dataset)
    if isinstance(recipe.pairs, tuple):  # the pairs are known without building: try the cache first
        key = output_key(recipe, teacher, list(recipe.pairs))
        store = _open(store_path(key), key) if main else None
        if distributed.share(store is not None):  # every rank takes the same path (the same collectives)
            store = store or _open(store_path(key), key)
            if store is not None:
                source = CachedTeacher(store, teacher, loaders.num_classes)
                return (build_distiller(recipe, source, student, sample, num_samples),
                        store.meta.get("teacher_accuracy"), f"teacher outputs: reusing the cache {store.root}")
            distiller = build_distiller(recipe, teacher, student, sample, num_samples)
            return _switch(recipe, distiller, loaders, device, sample, teacher, alone=True)
    distiller = build_distiller(recipe, teacher, student, sample, num_samples, pairing_input(recipe, loaders, device))
    return _switch(recipe, distiller, loaders, device, sample, teacher, alone=False)


def _switch(recipe: Recipe, distiller: Distiller, loaders, device: torch.device, sample, teacher: nn.Module,
            alone: bool) -> tuple[Distiller, float | None, str]:
    """Open or fill the cache with ``distiller``'s live teacher, then serve the teacher's side from it. ``alone``:
    this rank fills without waiting for the others (it alone cannot see the cache)."""
    key = output_key(recipe, teacher, distiller.pairs)
    path, (entries, raw_shapes) = store_path(key), planned_entries(recipe, distiller, sample)
    budget_line(recipe, entries, len(loaders.train.dataset))
    main = distributed.current().main
    store = None
    if main or alone:
        store = _open(path, key) or _fill(recipe, distiller, loaders, device, key, path, entries, raw_shapes)
    if not alone:
        distributed.wait_for_main()
        store = store or _open(path, key) or _fill(recipe, distiller, loaders, device, key, path, entries, raw_shapes)
    distiller.use_teacher(CachedTeacher(store, teacher, loaders.num_classes))
    return distiller, store.meta.get("teacher_accuracy"), f"teacher outputs: served from {store.root}"
