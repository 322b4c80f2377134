"""The teacher's outputs from a cache: :func:`fill` records them once per augmentation view, :class:`CachedTeacher`
serves them by (view, sample index) in place of a live teacher.

What is stored for a batch (:func:`encode`): the logits ``[B, K]`` (or ``[B, T, V]``) whole, or their top ``k``
values and indices plus one *rest* value per row; and each pair's captured teacher feature (a multi-layer pair: one
entry per layer). The rest value ``r`` is chosen so that, at the recipe's temperature ``T``, the ``V - k`` logits
set to ``r`` carry exactly the probability mass the dropped logits carried:
``(V - k) * exp(r / T) = sum_{j not in top k} exp(z_j / T)``, so ``softmax(decoded / T)`` equals
``softmax(z / T)`` on the top ``k`` classes and in total over the rest. A pair's feature may be stored as its loss's
target (the teacher side after the adapter's ``target``, ``normalize`` and the loss's ``teacher_part``: e.g.
attention transfer's ``[B, H*W]`` map instead of the ``[B, C, H, W]`` feature), so a cached step skips that work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..data.batch import Batch
from ..errors import FeatdistillError
from .output_store import Entry, OutputStore, StoreWriter
from .teachers import Teacher, TeacherOutputs

LOGIT_ENTRIES = ("logits", "logits.top", "logits.index", "logits.rest")


def encode(out: TeacherOutputs, top_k: int | None = None, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """``out`` as named per-sample tensors ``[B, ...]``: ``logits`` (or ``logits.top``, ``logits.index`` int32,
    ``logits.rest [B, ...]``), ``pair<i>`` (or ``pair<i>.<level>`` for a multi-layer pair)."""
    entries: dict[str, torch.Tensor] = {}
    z = out.logits
    if z is not None and top_k is not None and top_k < z.shape[-1]:
        z = z.float()
        top, index = z.topk(top_k, dim=-1)
        rest = z.scatter(-1, index, float("-inf"))
        entries["logits.top"], entries["logits.index"] = top, index.to(torch.int32)
        entries["logits.rest"] = temperature * (torch.logsumexp(rest / temperature, dim=-1)
                                                - math.log(z.shape[-1] - top_k))
    elif z is not None:
        entries["logits"] = z
    for i, feature in enumerate(out.features):
        if isinstance(feature, (list, tuple)):
            entries.update({f"pair{i}.{level}": f for level, f in enumerate(feature)})
        else:
            entries[f"pair{i}"] = feature
    return entries


def decode(entries: dict[str, torch.Tensor], num_pairs: int, num_logits: int | None) -> TeacherOutputs:
    """The inverse of :func:`encode` (top-k logits rebuilt at full width ``num_logits``), in float32."""
    if "logits" in entries:
        logits = entries["logits"].float()
    elif "logits.top" in entries:
        rest = entries["logits.rest"].float()
        logits = rest.unsqueeze(-1).expand(*rest.shape, num_logits).clone()
        logits.scatter_(-1, entries["logits.index"].long(), entries["logits.top"].float())
    else:
        logits = None
    features: list = []
    for i in range(num_pairs):
        if f"pair{i}" in entries:
            features.append(entries[f"pair{i}"].float())
        else:
            levels = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in entries.items() if k.startswith(f"pair{i}."))
            features.append([v.float() for _, v in levels])
    return TeacherOutputs(logits, features)


def entries_of(encoded: dict[str, torch.Tensor], dtype: str) -> list[Entry]:
    """The stored layout of one encoded batch: indices as int32, everything else in ``dtype``."""
    return [Entry(name, tuple(t.shape[1:]), "int32" if name == "logits.index" else dtype)
            for name, t in encoded.items()]


def fill(writer: StoreWriter, teacher: Teacher, views: Iterable[tuple[int, Iterable]], need_logits: bool,
         top_k: int | None, temperature: float, device: torch.device, autocast=None,
         targets: Callable[[list], list] | None = None) -> None:
    """Run ``teacher`` over every ``(view, loader)`` (loaders yield batches with their sample ``index``) and write
    its encoded outputs into ``writer``'s rows. ``autocast``: a context-manager factory for the forward;
    ``targets``: maps the captured features to what is stored (each pair's loss target, see
    ``Distiller.teacher_targets``)."""
    for view, loader in views:
        for raw in loader:
            batch = Batch.of(raw).to(device)
            if batch.index is None:
                raise FeatdistillError("filling the teacher-output cache needs each sample's index: the view loaders "
                                       "must yield (x, y, index)")
            with torch.no_grad(), (autocast() if autocast else torch.autocast("cpu", enabled=False)):
                out = teacher(batch, need_logits=need_logits)
                if targets is not None:
                    out = out._replace(features=targets(out.features))
            writer.write(view, batch.index, encode(out, top_k, temperature))


class CachedTeacher(Teacher):
    """Serves the teacher's logits and pair features from an :class:`OutputStore`, by each sample's dataset index
    and the current view (``set_epoch(e)``: view ``e mod views``). ``model`` is kept for the plan's layouts and the
    report and is never called. Batches must carry ``index [B]``."""

    def __init__(self, store: OutputStore, model: nn.Module | None = None, num_logits: int | None = None):
        self.store, self.model, self.num_logits, self.view = store, model, num_logits, 0
        self.has_logits = any(e.name in LOGIT_ENTRIES for e in store.entries)
        # pair i stored as its loss's target (``Distiller.teacher_targets``), captured at the shape raw_shapes gives
        self.targets: list[bool] | None = store.meta.get("targets")
        self.raw_shapes: dict[str, list[int]] = store.meta.get("raw_shapes", {})

    @property
    def plan_line(self) -> str:
        return (f"teacher: does not run; its outputs come from the cache {self.store.root} ({self.store.views} "
                f"view(s): epoch e reads view e mod {self.store.views})")

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % self.store.views

    def bind(self, pairs) -> None:
        super().bind(pairs)
        stored = {e.name.split(".")[0] for e in self.store.entries if e.name.startswith("pair")}
        if stored != {f"pair{i}" for i in range(len(self.pairs))}:
            raise FeatdistillError(f"the teacher-output cache at {self.store.root} holds {len(stored)} pair(s), the "
                                   f"recipe has {len(self.pairs)}; it belongs to another recipe")

    def dry_run(self, batch: Batch) -> TeacherOutputs:
        """Zeros of the captured shapes (before any stored target was made of them), for the plan's shape checks:
        the teacher does not run."""
        shapes = {e.name: e.shape for e in self.store.entries} | self.raw_shapes
        zeros = {name: torch.zeros(batch.size, *shape) for name, shape in shapes.items()}
        return decode(zeros, len(self.pairs), self.num_logits)._replace(logits=None)

    def __call__(self, batch: Batch, need_logits: bool = True) -> TeacherOutputs:
        if batch.index is None:
            raise FeatdistillError("the teacher's outputs come from the cache, which is read by sample index, but the "
                                   "batch has none: have the loader yield (x, y, index) "
                                   "(featdistill.data.make_loaders(..., with_index=True))")
        if need_logits and not self.has_logits:
            raise FeatdistillError(f"the teacher-output cache at {self.store.root} holds no logits (it was filled "
                                   "for feature-only KD) but this step needs them")
        device = batch.index.device
        out = decode(self.store.read(self.view, batch.index), len(self.pairs), self.num_logits)
        logits = out.logits.to(device, non_blocking=True) if need_logits else None
        features = [[f.to(device, non_blocking=True) for f in feat] if isinstance(feat, list)
                    else feat.to(device, non_blocking=True) for feat in out.features]
        return TeacherOutputs(logits, features)
