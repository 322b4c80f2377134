"""Image datasets: the embedded digits (and their harder ``digit_pairs`` derivative), CIFAR-10/100 from their
pickle files, and ImageFolder.

Each preparer returns train / val / test datasets of ``(x [C, S, S], label)`` plus the task's augmentation; the
loaders (:mod:`.loaders`) wrap them. Splits never depend on any seed: they are part of the benchmark.
"""

from __future__ import annotations

import codecs
import math
import os
import pickle
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from ..config import CIFAR_FOLDERS, IMAGEFOLDER_LAYOUT, Data
from ..errors import FeatdistillError
from .augment import Augment

SPLIT_STATE = 0  # fixed random_state of every split
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


# Per dataset: title, folder in the archive, train files, test files, label key, classes, archive, mean, std.
_CIFAR = {
    "cifar10": ("CIFAR-10", CIFAR_FOLDERS["cifar10"], tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "labels", 10, "cifar-10-python.tar.gz", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR-100", CIFAR_FOLDERS["cifar100"], ("train",), ("test",), "fine_labels", 100,
                 "cifar-100-python.tar.gz", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grey weights (ITU-R 601, what PIL's convert('L') uses)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to rebuild bytes: latin-1 text only, no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only latin-1 text")
    return codecs.encode(text, "latin1")


# pickle calls whatever a file names, so a CIFAR batch may name only what rebuilds numpy arrays and bytes. The objects
# come from numpy itself: no module is imported because a data file says so.
_CIFAR_GLOBALS = {
    **{(mod, "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0]
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 (Python 3.14's default)
       for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``_CIFAR_GLOBALS``: a crafted file cannot make it run code."""

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR batch holds only dicts, lists, "
                                         "strings and numpy arrays)") from None


class Prepared(NamedTuple):
    """A dataset's three splits of ``(x [C, S, S], label)``, its class count and its train augmentation."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    augment: Augment
    norm: tuple[torch.Tensor, torch.Tensor] | None = None  # per-channel (mean, std) [C, 1, 1] for uint8 data


_CACHE: dict[Data, Prepared] = {}  # keyed by Data with augment=False: augmentation does not change the tensors


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


def _digits(data: Data) -> Prepared:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div_(16).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.int64)
    trainval, test = _split(torch.arange(len(y)), y, data.test_size)
    train, val = _split(trainval, y[trainval], data.val_size)
    if data.name == "digit_pairs":
        from .digit_pairs import CLASSES, digit_pairs

        parts, augment = digit_pairs(data, x, y, (train, val, test))
        return Prepared(*parts, CLASSES, augment)
    x = (x - x[train].mean()) / x[train].std()  # train statistics only: val/test must not leak into them
    if data.image_size != 8:  # once here, not per batch
        x = F.interpolate(x, size=(data.image_size,) * 2, mode="bilinear", align_corners=False)
    x = x.expand(-1, data.in_chans, -1, -1).contiguous()
    parts = [TensorDataset(x[i], y[i]) for i in (train, val, test)]
    return Prepared(*parts, 10, Augment(pad=max(1, data.image_size // 8)))


def _cifar(data: Data) -> Prepared:
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

    def load(path: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[N, 3072]`` pixels and int64 ``[N]`` labels of one batch file, or FeatdistillError."""
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="latin1").load()
            if not isinstance(batch, dict):
                raise ValueError(f"it holds a {type(batch).__name__}, not a dict")
            batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
            missing = [k for k in ("data", label_key) if k not in batch]
            if missing:
                raise ValueError(f"it has no {' or '.join(repr(k) for k in missing)} entry")
            pixels = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int64)
            if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or labels.shape != pixels.shape[:1]:
                raise ValueError(f"'data' has shape {pixels.shape} and {label_key!r} shape {labels.shape}; "
                                 f"expected [N, 3072] and [N]")
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"{label_key!r} holds labels outside 0..{num_classes - 1}")
        except Exception as e:  # whatever a damaged or crafted file raises: refused global, truncation, garbage
            why = str(e).rstrip(".")
            raise FeatdistillError(
                f"cannot read {title} file {path}: {why}. It must be an unmodified file from {archive} ({CIFAR_URL}); "
                "featdistill refuses anything else in a data file, and never runs code from one.") from e
        return pixels, labels

    def read(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[N, in_chans, S, S]`` and int64 ``[N]``; floats only a chunk at a time, to bound memory."""
        xs, ys = [], []
        for name in names:
            pixels, labels = load(os.path.join(folder, name))
            x = torch.from_numpy(pixels.reshape(-1, 3, 32, 32))  # RGB planes
            for part in x.split(5000):
                part = part.float()
                if data.in_chans == 1:
                    part = (part * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
                if s != 32:
                    part = F.interpolate(part, size=(s, s), mode="bilinear", align_corners=False, antialias=s < 32)
                xs.append(part.round_().clamp_(0, 255).to(torch.uint8))
            ys.append(torch.from_numpy(labels))
        return torch.cat(xs), torch.cat(ys)

    (x, y), (x_test, y_test) = read(train_files), read(test_files)
    train, val = _split(torch.arange(len(y)), y, data.val_size)
    mean, std, luma = torch.tensor(mean), torch.tensor(std), torch.tensor(_LUMA)
    if data.in_chans == 1:  # grey: luminance-weighted constants (the std is an approximation)
        mean, std = (mean * luma).sum(0, keepdim=True), (std * luma).sum(0, keepdim=True)
    parts = [TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), TensorDataset(x_test, y_test)]
    aug = Augment(pad=max(1, s // 8), mode="constant", flip=True)  # pad 4 at 32x32: the usual CIFAR recipe
    return Prepared(*parts, num_classes, aug, (mean.view(-1, 1, 1), std.view(-1, 1, 1)))


class _ImageError(FeatdistillError):
    """An unreadable image. DataLoader re-raises a worker's error as ``type(text with the worker's traceback)``;
    keeping only the message after the traceback keeps what the CLI prints free of it."""

    def __init__(self, msg: str):
        super().__init__(msg.rpartition(f"{__name__}._ImageError: ")[2].strip())


def _load_image(path: str):
    """torchvision's ``default_loader``, with a file it cannot decode reported as a FeatdistillError naming it. Module
    level, so that DataLoader worker processes can pickle it."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's ways to say "bad file"
        why = "PIL cannot identify it as an image" if isinstance(e, UnidentifiedImageError) else str(e).rstrip(".")
        raise _ImageError(f"cannot read image {path}: {why}. Remove or replace the file (it must be an image PIL "
                          "can open), then run again.") from e


def _imagefolder(data: Data) -> Prepared:
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
            return datasets.ImageFolder(path, transform=transform, loader=_load_image)
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
    aug = Augment(pad=max(1, s // 8))  # no flip: the folder may hold text, digits, or other chiral classes
    return Prepared(train, val, splits.get("test", val), num_classes, aug)


def prepare(data: Data) -> Prepared:
    key = replace(data, augment=False, num_workers=0)
    if data.name == "imagefolder":  # lazy file lists, cheap to rebuild, and files may change between calls
        return _imagefolder(data)
    if key not in _CACHE:
        _CACHE[key] = _digits(data) if data.name in ("digits", "digit_pairs") else _cifar(data)
    return _CACHE[key]


