"""Loaders over a prepared dataset: train (shuffled with ``DistributedSampler``, augmented, sharded by rank), val
and test (fixed order, plain, every rank sees all).

Images: every loader yields ``(x, y)`` or, with ``with_index=True``, ``(x, y, index)``: ``x`` float32
``[B, C, S, S]`` (``C = in_chans``, ``S = image_size``), ``y`` int64 ``[B]``, ``index`` int64 ``[B]`` (the
samples' positions in their split, for losses with memory banks). Train order and augmentation are pure functions
of ``(seed, epoch, index)``.

Text (``data.name`` in ``TEXT_DATASETS``): dicts ``{'input_ids', 'attention_mask', 'labels': [B, T]}`` (plus
``index [B]``) of :class:`~featdistill.data.text.TextBlocks`, sharded and ordered the same way; the train blocks'
offsets follow the epoch. ``num_classes`` is the vocabulary; ``in_chans`` and ``image_size`` are 0 (no image).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..config import TEXT_DATASETS, Data
from ..errors import FeatdistillError
from .augment import Augment, mix_seed
from .text import make_text_datasets
from .vision import prepare


class _Split(Dataset):
    """Wraps a base dataset of ``(x [C, S, S], label)``: augments (if any), then maps uint8 to normalised float32."""

    def __init__(self, base: Dataset, augment: Augment | None = None, seed: int = 0,
                 norm: tuple[torch.Tensor, torch.Tensor] | None = None, with_index: bool = False):
        self.base, self.augment, self.seed, self.norm, self.with_index = base, augment, seed, norm, with_index
        self.epoch = 0  # set by Loaders.set_epoch; workers get a fresh copy of it at every new iterator

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        epoch, i = getattr(i, "epoch", self.epoch), int(i)  # an EpochIndex brings its epoch to persistent workers
        x, y = self.base[i]
        if self.augment is not None:
            x = self.augment(x, torch.Generator().manual_seed(mix_seed(self.seed, epoch, i)))
        if x.dtype == torch.uint8:  # CIFAR stays uint8 in memory: 150 MB instead of 600 MB for 50k images
            mean, std = self.norm
            x = (x.float().div_(255) - mean) / std
        return (x, int(y), i) if self.with_index else (x, int(y))


def _check(data: Data, extra: list[str] | None = None) -> None:
    problems = data.problems() + (extra or [])
    if problems:
        raise FeatdistillError("invalid data settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class Loaders:
    """Train (shuffled, augmented, sharded), val and test (fixed order, plain, every rank sees all) loaders."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    num_classes: int
    in_chans: int
    image_size: int
    views: int | None = None  # augmentation repeats every `views` epochs (a teacher-output cache); None: never
    on_epoch: list[Callable[[int], None]] = field(default_factory=list)  # told each epoch (a CachedTeacher)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Call before each epoch: reshuffles the train order and re-seeds its augmentation for ``epoch`` (for
        view ``epoch mod views`` when ``views`` is set); ``skip_batches`` starts it part-way, where a run stopped
        mid-epoch left off."""
        self.train.sampler.set_epoch(epoch)
        self.train.sampler.start = skip_batches * self.train.batch_size
        self.train.dataset.epoch = view_of(epoch, self.views)
        for listener in self.on_epoch:
            listener(epoch)


def view_of(epoch: int, views: int | None) -> int:
    """The augmentation epoch that ``epoch`` uses: itself, or its view ``epoch mod views``."""
    return epoch if views is None else epoch % views


class EpochIndex(int):
    """A sample index that carries the epoch it is drawn for. Persistent workers keep their own copy of the dataset,
    which ``set_epoch`` never reaches; the sampler runs in the main process, so the epoch travels with each index.
    Compares, hashes and prints as the plain index."""

    def __new__(cls, index: int, epoch: int):
        obj = super().__new__(cls, index)
        obj.epoch = epoch
        return obj

    def __reduce__(self):
        return EpochIndex, (int(self), self.epoch)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can begin after its first ``start`` indices (the order is unchanged); its
    indices are :class:`EpochIndex` values."""

    start = 0
    views: int | None = None  # the indices carry the augmentation epoch: the epoch's view (see Loaders.views)

    def __iter__(self):
        view = view_of(self.epoch, self.views)
        return (EpochIndex(i, view) for i in itertools.islice(super().__iter__(), self.start, None))


def make_loaders(data: Data, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int | None = None, with_index: bool = False, pin_memory: bool = False,
                 views: int | None = None) -> Loaders:
    """Loaders over ``data``; batches are ``(x float32 [B, C, S, S], y int64 [B])``, plus ``index int64 [B]`` with
    ``with_index``. The train order is ``DistributedSampler``'s: a permutation seeded by ``seed + epoch``, padded to
    a multiple of ``world_size``, rank ``r`` taking every ``world_size``-th item from ``r``. ``num_workers`` (default
    ``data.num_workers``) loader processes stay alive across epochs; ``pin_memory`` for CUDA copies. The batches are
    the same whatever the number of workers. With ``views``, epoch ``e`` is augmented as epoch ``e mod views`` (the
    order still follows ``e``): the views a teacher-output cache recorded. Raises FeatdistillError."""
    loaders = _make_loaders(data, batch_size, seed, rank, world_size, num_workers, with_index, pin_memory)
    loaders.views = loaders.train.sampler.views = views
    return loaders


def _make_loaders(data: Data, batch_size: int, seed: int, rank: int, world_size: int, num_workers: int | None,
                  with_index: bool, pin_memory: bool) -> Loaders:
    num_workers = data.num_workers if num_workers is None else num_workers
    extra = [] if isinstance(batch_size, int) and batch_size >= 1 else [f"batch_size must be >= 1, got {batch_size!r}"]
    if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
        extra.append(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    _check(data, extra)
    if is_text(data):
        return _text_loaders(data, batch_size, seed, rank, world_size, num_workers, with_index, pin_memory)
    prep = prepare(data)
    train = _Split(prep.train, prep.augment if data.augment else None, seed, prep.norm, with_index)
    sampler = ResumableSampler(train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    kw = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
              persistent_workers=num_workers > 0)
    # a last batch of one sample breaks BatchNorm in training; dropping it loses nothing (the order reshuffles)
    lone = len(sampler) % batch_size == 1 and len(sampler) > 1
    return Loaders(train=DataLoader(train, sampler=sampler, drop_last=lone, **kw),
                   val=DataLoader(_Split(prep.val, norm=prep.norm, with_index=with_index), shuffle=False, **kw),
                   test=DataLoader(_Split(prep.test, norm=prep.norm, with_index=with_index), shuffle=False, **kw),
                   num_classes=prep.num_classes, in_chans=data.in_chans, image_size=data.image_size)


def _text_loaders(data: Data, batch_size: int, seed: int, rank: int, world_size: int, num_workers: int,
                  with_index: bool, pin_memory: bool) -> Loaders:
    """:func:`make_loaders` for text: the same sampler and loader settings over :class:`TextBlocks` splits."""
    splits = make_text_datasets(data, seed, with_index)
    sampler = ResumableSampler(splits.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    kw = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
              persistent_workers=num_workers > 0, collate_fn=splits.train.collate)
    return Loaders(train=DataLoader(splits.train, sampler=sampler, **kw),
                   val=DataLoader(splits.val, shuffle=False, **kw), test=DataLoader(splits.test, shuffle=False, **kw),
                   num_classes=splits.vocab_size, in_chans=0, image_size=0)


def view_loaders(data: Data, batch_size: int, seed: int, views: int) -> list[tuple[int, DataLoader]]:
    """``(view, loader)`` for each view ``0 .. views-1``: the whole training split in dataset order, augmented as
    the train loader augments epoch ``view`` with the same ``seed``, yielding the samples' ``index`` too. What a
    teacher-output cache records."""
    _check(data)
    if is_text(data):
        base = make_text_datasets(data, seed, with_index=True).train
        kw = dict(collate_fn=base.collate)
    else:
        prep = prepare(data)
        base, kw = _Split(prep.train, prep.augment if data.augment else None, seed, prep.norm, True), {}
    found = []
    for view in range(views):
        split = copy.copy(base)
        split.epoch = view
        found.append((view, DataLoader(split, batch_size=batch_size, shuffle=False, num_workers=data.num_workers,
                                       **kw)))
    return found


def is_text(data: Data) -> bool:
    """Whether ``data`` is text for causal LMs (batches are dicts of tokens) rather than images."""
    return data.name in TEXT_DATASETS


def in_chans_of(data: Data) -> int:
    """The ``in_chans`` models are built with: ``data.in_chans`` for images, 0 for text (no channels)."""
    return 0 if is_text(data) else data.in_chans


def sample_batch(data: Data, batch_size: int = 2) -> torch.Tensor | dict[str, torch.Tensor]:
    """For dry runs (shapes, hooks, adapters): zeros float32 ``[B, C, S, S]`` for images; for text a dict of int64
    ``input_ids`` (zeros) and ``attention_mask`` (ones), each ``[B, block_size]``. Validates ``data`` but reads no
    files and imports no sklearn (that import alone takes ~1 s), so it is instant for every dataset."""
    _check(data)
    if is_text(data):
        shape = (batch_size, data.block_size)
        return {"input_ids": torch.zeros(shape, dtype=torch.int64),
                "attention_mask": torch.ones(shape, dtype=torch.int64)}
    return torch.zeros(batch_size, data.in_chans, data.image_size, data.image_size)
