"""Datasets and loaders: the embedded digits benchmark, CIFAR-10/100 from their pickle files, and ImageFolder.

Every loader yields ``(x, y)``: ``x`` float32 ``[B, C, S, S]`` (``C = in_chans``, ``S = image_size``), ``y`` int64
``[B]``. Train order and augmentation are pure functions of ``(seed, epoch, index)``, so a run resumed at epoch ``k``
sees exactly the batches an uninterrupted run would. Splits never depend on ``seed``: they are part of the benchmark.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from .errors import FeatdistillError, did_you_mean

NAMES = ("digits", "cifar10", "cifar100", "imagefolder")
SPLIT_STATE = 0  # fixed random_state of every split
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGEFOLDER_LAYOUT = "ROOT/train/<class>/*.png|jpg, optionally ROOT/val/<class>/... and ROOT/test/<class>/..."


# Per dataset: title, folder in the archive, train files, test files, label key, classes, archive, mean, std.
_CIFAR = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "labels", 10, "cifar-10-python.tar.gz", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", 100,
                 "cifar-100-python.tar.gz", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grey weights (ITU-R 601, what PIL's convert('L') uses)


@dataclass(frozen=True)
class Data:
    """Which dataset to load and how; frozen, so it doubles as the key of the prepared-tensor cache."""

    name: str = "digits"  # 'digits' | 'cifar10' | 'cifar100' | 'imagefolder'
    root: str | None = None  # folder for cifar/imagefolder
    image_size: int = 16  # images are resized to image_size x image_size
    in_chans: int = 3  # 1 or 3; grey images are repeated to 3 channels when 3
    augment: bool = True  # light augmentation on train only
    val_size: float = 0.15  # fraction held out for validation where the dataset has no val split
    test_size: float = 0.33  # digits only: fraction held out for test

    def problems(self) -> list[str]:
        """Every problem with these settings, each with its fix; empty when valid. Never raises, reads no files."""
        found = []
        if self.name not in NAMES:
            found.append(f"data.name {self.name!r} is not a known dataset; use one of {', '.join(NAMES)}."
                         + did_you_mean(str(self.name), NAMES))
        if not isinstance(self.image_size, int) or self.image_size < 4:
            found.append(f"data.image_size must be an int >= 4 (16 suits digits, 32 CIFAR), got {self.image_size!r}")
        if self.in_chans not in (1, 3):
            found.append(f"data.in_chans must be 1 (grey) or 3 (RGB), got {self.in_chans!r}")
        for field in ("val_size", "test_size"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                found.append(f"data.{field} must be a fraction strictly between 0 and 1 (e.g. 0.15), got {value!r}")
        if self.name in ("cifar10", "cifar100", "imagefolder") and not self.root:
            what = f"the folder that holds {_CIFAR[self.name][1]}/" if self.name in _CIFAR else IMAGEFOLDER_LAYOUT
            found.append(f"data.root is required for {self.name!r}: set it to {what}")
        return found


class EpochSampler(Sampler):
    """Indices of one rank's shard of an ``n``-item dataset, reshuffled per epoch.

    The permutation comes from ``torch.Generator().manual_seed(seed + epoch)`` only, so it is identical on every rank
    and after a resume. Like ``DistributedSampler``, the order is padded (by repeating its head) to a multiple of
    ``world_size`` and rank ``r`` takes items ``r, r + world_size, ...``: every rank gets ``ceil(n / world_size)``.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch = 0
        self.num_samples = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        total = self.num_samples * self.world_size
        if order and total > len(order):
            order = (order * math.ceil(total / len(order)))[:total]
        return iter(order[self.rank:total:self.world_size])

    def __len__(self) -> int:
        return self.num_samples


def _mix(seed: int, epoch: int, index: int) -> int:
    """A stable 63-bit seed per (seed, epoch, index); plain arithmetic, so it is the same in every process."""
    h = 0
    for v in (seed, epoch, index):
        h = (h * 0x9E3779B97F4A7C15 + v + 1) % (1 << 63)
    return h


@dataclass(frozen=True)
class _Augment:
    """Random translation by up to ``pad`` pixels (pad, then crop back) and an optional horizontal flip."""

    pad: int
    mode: str = "reflect"  # 'reflect' continues the background; 'constant' is CIFAR's usual zero padding
    flip: bool = False  # right for natural images, wrong for digits (a mirrored 2 is no 2)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``x [C, S, S]`` -> ``[C, S, S]``, same dtype; all randomness drawn from ``g``."""
        p, (_, h, w) = self.pad, x.shape
        dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=g).tolist()
        x = F.pad(x.unsqueeze(0), (p, p, p, p), mode=self.mode)[0, :, dy:dy + h, dx:dx + w]
        if self.flip and torch.randint(0, 2, (1,), generator=g).item():
            x = x.flip(-1)
        return x


class _Split(Dataset):
    """Wraps a base dataset of ``(x [C, S, S], label)``: augments (if any), then maps uint8 to normalised float32."""

    def __init__(self, base: Dataset, augment: _Augment | None = None, seed: int = 0,
                 norm: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.base, self.augment, self.seed, self.norm = base, augment, seed, norm
        self.epoch = 0  # set by Loaders.set_epoch; workers get a fresh copy of it at every new iterator

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        if self.augment is not None:
            x = self.augment(x, torch.Generator().manual_seed(_mix(self.seed, self.epoch, i)))
        if x.dtype == torch.uint8:  # CIFAR stays uint8 in memory: 150 MB instead of 600 MB for 50k images
            mean, std = self.norm
            x = (x.float().div_(255) - mean) / std
        return x, int(y)


class _Prepared(NamedTuple):
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    augment: _Augment
    norm: tuple[torch.Tensor, torch.Tensor] | None = None  # per-channel (mean, std) [C, 1, 1] for uint8 data


_CACHE: dict[Data, _Prepared] = {}  # keyed by Data with augment=False: augmentation does not change the tensors


def _split(idx: torch.Tensor, labels: torch.Tensor, frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``idx`` into (keep, held) with ``ceil(frac * n)`` held out, stratified by ``labels`` when possible."""
    from sklearn.model_selection import train_test_split

    n, counts = len(idx), torch.unique(labels, return_counts=True)[1]
    n_held = max(math.ceil(frac * n), len(counts))  # a stratified split must hold out one of each class
    stratify = labels.numpy() if counts.min() >= 2 and n - n_held >= len(counts) else None
    if stratify is None:  # too few images per class (tiny folders): plain split
        n_held = min(math.ceil(frac * n), n - 1)
    if n_held < 1:
        raise FeatdistillError(f"cannot split {n} image(s) into train and validation; add images or give a val/ split")
    keep, held = train_test_split(idx.numpy(), test_size=n_held, stratify=stratify, random_state=SPLIT_STATE)
    return torch.as_tensor(keep), torch.as_tensor(held)


def _digits(data: Data) -> _Prepared:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div_(16).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.int64)
    trainval, test = _split(torch.arange(len(y)), y, data.test_size)
    train, val = _split(trainval, y[trainval], data.val_size)
    x = (x - x[train].mean()) / x[train].std()  # train statistics only: val/test must not leak into them
    if data.image_size != 8:  # once here, not per batch
        x = F.interpolate(x, size=(data.image_size,) * 2, mode="bilinear", align_corners=False)
    x = x.expand(-1, data.in_chans, -1, -1).contiguous()
    parts = [TensorDataset(x[i], y[i]) for i in (train, val, test)]
    return _Prepared(*parts, 10, _Augment(pad=max(1, data.image_size // 8)))


def _cifar(data: Data) -> _Prepared:
    title, sub, train_files, test_files, label_key, num_classes, archive, mean, std = _CIFAR[data.name]
    root, s = data.root, data.image_size
    folder = os.path.join(root, sub)
    if not os.path.exists(os.path.join(folder, train_files[0])) and os.path.exists(os.path.join(root, train_files[0])):
        folder = root  # root is the extracted folder itself
    for name in train_files + test_files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FeatdistillError(
                f"{title} file {path} is missing under root {root!r}. Download {archive} from {CIFAR_URL} and "
                f"extract it into {root}, so that {os.path.join(root, sub, train_files[0])} exists "
                "(featdistill never downloads).")

    def read(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[N, in_chans, S, S]`` and int64 ``[N]``; floats only a chunk at a time, to bound memory."""
        xs, ys = [], []
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:  # pickle: only point root at files you trust
                batch = pickle.load(f, encoding="latin1")
            x = torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # RGB planes
            for part in x.split(5000):
                part = part.float()
                if data.in_chans == 1:
                    part = (part * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
                if s != 32:
                    part = F.interpolate(part, size=(s, s), mode="bilinear", align_corners=False, antialias=s < 32)
                xs.append(part.round_().clamp_(0, 255).to(torch.uint8))
            ys.append(torch.as_tensor(np.asarray(batch[label_key], dtype=np.int64)))
        return torch.cat(xs), torch.cat(ys)

    (x, y), (x_test, y_test) = read(train_files), read(test_files)
    train, val = _split(torch.arange(len(y)), y, data.val_size)
    mean, std, luma = torch.tensor(mean), torch.tensor(std), torch.tensor(_LUMA)
    if data.in_chans == 1:  # grey: luminance-weighted constants (the std is an approximation)
        mean, std = (mean * luma).sum(0, keepdim=True), (std * luma).sum(0, keepdim=True)
    parts = [TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), TensorDataset(x_test, y_test)]
    aug = _Augment(pad=max(1, s // 8), mode="constant", flip=True)  # pad 4 at 32x32: the usual CIFAR recipe
    return _Prepared(*parts, num_classes, aug, (mean.view(-1, 1, 1), std.view(-1, 1, 1)))


def _imagefolder(data: Data) -> _Prepared:
    from torchvision import datasets
    from torchvision import transforms as T

    root, s, c = data.root, data.image_size, data.in_chans
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise FeatdistillError(f"ImageFolder root {root!r} has no train folder ({train_dir} is missing). "
                               f"Lay the images out as {IMAGEFOLDER_LAYOUT}")
    grey = [T.Grayscale(1)] if c == 1 else []  # ImageFolder's loader gives RGB
    transform = T.Compose([*grey, T.Resize((s, s)), T.ToTensor(), T.Normalize([0.5] * c, [0.5] * c)])

    def load(path: str):
        try:
            return datasets.ImageFolder(path, transform=transform)
        except FileNotFoundError as e:  # no class folders, or no images in one
            raise FeatdistillError(f"cannot read {path}: {e}. Lay the images out as {IMAGEFOLDER_LAYOUT}") from e

    train = load(train_dir)
    num_classes = len(train.classes)
    splits = {}
    for name in ("val", "test"):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            splits[name] = load(path)
            if splits[name].classes != train.classes:
                missing = sorted(set(train.classes) - set(splits[name].classes))
                extra = sorted(set(splits[name].classes) - set(train.classes))
                raise FeatdistillError(f"class folders of {path} differ from {train_dir}: missing {missing}, "
                                       f"extra {extra}. Give train/, val/ and test/ the same class folders.")
    val = splits.get("val")
    if val is None:  # no val/: hold out a fixed stratified part of train
        keep, held = _split(torch.arange(len(train)), torch.tensor(train.targets), data.val_size)
        train, val = Subset(train, keep.tolist()), Subset(train, held.tolist())
    aug = _Augment(pad=max(1, s // 8))  # no flip: the folder may hold text, digits, or other chiral classes
    return _Prepared(train, val, splits.get("test", val), num_classes, aug)


def _prepare(data: Data) -> _Prepared:
    key = replace(data, augment=False)
    if data.name == "imagefolder":  # lazy file lists, cheap to rebuild, and files may change between calls
        return _imagefolder(data)
    if key not in _CACHE:
        _CACHE[key] = _digits(data) if data.name == "digits" else _cifar(data)
    return _CACHE[key]


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

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch: reshuffles the train order and re-seeds its augmentation for ``epoch``."""
        self.train.sampler.set_epoch(epoch)
        self.train.dataset.epoch = epoch


def make_loaders(data: Data, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> Loaders:
    """Loaders over ``data``; batches are ``(x float32 [B, C, S, S], y int64 [B])``. Raises FeatdistillError."""
    extra = [] if isinstance(batch_size, int) and batch_size >= 1 else [f"batch_size must be >= 1, got {batch_size!r}"]
    if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
        extra.append(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    _check(data, extra)
    prep = _prepare(data)
    train = _Split(prep.train, prep.augment if data.augment else None, seed, prep.norm)
    sampler = EpochSampler(len(train), seed, rank, world_size, shuffle=True)
    kw = dict(batch_size=batch_size, num_workers=num_workers)
    return Loaders(train=DataLoader(train, sampler=sampler, **kw),
                   val=DataLoader(_Split(prep.val, norm=prep.norm), shuffle=False, **kw),
                   test=DataLoader(_Split(prep.test, norm=prep.norm), shuffle=False, **kw),
                   num_classes=prep.num_classes, in_chans=data.in_chans, image_size=data.image_size)


def sample_batch(data: Data, batch_size: int = 2) -> torch.Tensor:
    """Zeros, float32 ``[B, C, S, S]``, for dry runs (shapes, hooks, adapters). Validates ``data`` but reads no files
    and imports no sklearn (that import alone takes ~1 s), so it is instant for every dataset, digits included."""
    _check(data)
    return torch.zeros(batch_size, data.in_chans, data.image_size, data.image_size)
