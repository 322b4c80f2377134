"""``Data``: which dataset a recipe trains on and how it is prepared, and the names of the shipped datasets; a
part of :mod:`featdistill.config` (re-exported there), kept apart so each file reads in one sitting. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .checks import number as _number
from .errors import did_you_mean

DATASETS = ("digits", "digit_pairs", "cifar10", "cifar100", "imagefolder", "pydoc", "text")
TEXT_DATASETS = ("pydoc", "text")  # embedded pydoc_data.topics (the text default), a user's files: data/text.py
TEXT_LAYOUT = 'a .txt file, a .jsonl file (a {"text": ...} object per line) or a folder of them; each a document'
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # as the archives extract
IMAGEFOLDER_LAYOUT = "ROOT/train/<class>/*.png|jpg, optionally ROOT/val/<class>/... and ROOT/test/<class>/..."


@dataclass(frozen=True)
class Data:
    """Which dataset to load and how; frozen, so it doubles as the key of the prepared-tensor cache. Saved recipes and
    cache keys leave the text fields out at their defaults, so image runs from before them still match."""

    name: str = "digits"  # one of DATASETS
    root: str | None = None  # folder for cifar/imagefolder; the file or folder for 'text'
    image_size: int = 16  # images are resized to image_size x image_size
    in_chans: int = 3  # 1 or 3; grey images are repeated to 3 channels when 3
    augment: bool = True  # light augmentation on train only
    val_size: float = 0.15  # fraction held out for validation where the dataset has no val split
    test_size: float = 0.33  # digits, digit_pairs and text only: fraction held out for test
    block_size: int = field(default=128, metadata={"omit_default": True})  # text: tokens per training sequence
    # loader processes (persistent; 0 loads in the training process); never part of a cache key: batches are equal
    num_workers: int = field(default=0, metadata={"omit_default": True, "speed_only": True})
    tokenizer: str | None = field(default=None, metadata={"omit_default": True})  # text: None = bytes, or HF dir
    # text: a file or folder whose documents replace the training split only (e.g. text a teacher generated:
    # python -m featdistill.generate); val/test stay those of name/root, and the teacher always trains on the real
    # split (Data.for_teacher), so held-out numbers and the teacher cache are those of the plain recipe
    train_root: str | None = field(default=None, metadata={"omit_default": True})

    def for_teacher(self) -> Data:
        """These settings without ``train_root``: what the teacher is trained (and cached) on, and where
        ``featdistill.generate`` draws its prompts."""
        return replace(self, train_root=None) if self.train_root is not None else self

    def problems(self) -> list[str]:
        """Every problem with these settings, each with its fix; empty when valid. Never raises, reads no files."""
        found = []
        if self.name not in DATASETS:
            found.append(f"data.name {self.name!r} is not a known dataset; use one of {', '.join(DATASETS)}."
                         + did_you_mean(str(self.name), DATASETS))
        if not isinstance(self.image_size, int) or self.image_size < 4:
            found.append(f"data.image_size must be an int >= 4 (16 suits digits, 32 CIFAR), got {self.image_size!r}")
        if self.in_chans not in (1, 3):
            found.append(f"data.in_chans must be 1 (grey) or 3 (RGB), got {self.in_chans!r}")
        for name in ("val_size", "test_size"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value < 1:
                found.append(f"data.{name} must be a fraction strictly between 0 and 1 (e.g. 0.15), got {value!r}")
        if self.name in ("cifar10", "cifar100", "imagefolder") and not self.root:
            what = f"the folder that holds {CIFAR_FOLDERS[self.name]}/" if self.name in CIFAR_FOLDERS \
                else IMAGEFOLDER_LAYOUT
            found.append(f"data.root is required for {self.name!r}: set it to {what}")
        if self.name == "text" and not self.root:
            found.append(f"data.root is required for 'text': set it to {TEXT_LAYOUT}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 2:
            found.append(f"data.block_size must be an int >= 2 (tokens per sequence), got {self.block_size!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            found.append(f"data.num_workers must be an int >= 0 (0: load in the training process), got "
                         f"{self.num_workers!r}")
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str) or not self.tokenizer.strip()):
            found.append(f"data.tokenizer must be None (bytes) or an HF tokenizer's folder, got {self.tokenizer!r}")
        elif self.tokenizer is not None and self.name not in TEXT_DATASETS:
            found.append(f"data.tokenizer is for text data, not {self.name!r}: remove it or set data.name='pydoc'")
        if self.train_root is not None and (not isinstance(self.train_root, str) or not self.train_root.strip()):
            found.append(f"data.train_root must be None or the path of {TEXT_LAYOUT}, got {self.train_root!r}")
        elif self.train_root is not None and self.name not in TEXT_DATASETS:
            found.append(f"data.train_root is for text data, not {self.name!r}: remove it or set data.name='pydoc'")
        return found
