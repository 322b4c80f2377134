"""The on-disk format of a teacher-output cache: one folder, ``meta.json`` plus one ``.npy`` file per (view, entry).

An entry is a named per-sample array (``logits``, ``pair0``, ``pair3.1`` ...); ``view<v>.<entry>.npy`` holds it for
every training sample of view ``v``, ``[N, *shape]``, row ``i`` = dataset index ``i``, read back by memory map (only
the rows of a batch are read). ``meta.json`` records the key the folder was made for, each entry's shape and dtype,
and the sha256 of every file. A folder is written under a temporary name and renamed into place when complete, so
a folder under its final name is whole unless something changed it afterwards, which :meth:`OutputStore.open`
detects (:class:`DamagedCache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = 1
META = "meta.json"
# how each storage dtype is held by numpy (bfloat16 has no numpy type: its 16 bits travel as int16)
_NUMPY = {"float16": np.float16, "bfloat16": np.int16, "float32": np.float32, "int32": np.int32}
_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int32": torch.int32}


class DamagedCache(Exception):
    """A cache folder that does not hold what its key says (missing or changed files, another key or format)."""


@dataclass(frozen=True)
class Entry:
    """One stored array per sample: ``shape`` without the sample dimension, ``dtype`` a key of ``_NUMPY``."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(_NUMPY[self.dtype]).itemsize


def file_name(view: int, entry: str) -> str:
    return f"view{view}.{entry}.npy"


def total_bytes(entries: list[Entry], num_samples: int, views: int) -> int:
    """The disk the cache takes: every entry of every sample in every view."""
    return sum(e.nbytes() for e in entries) * num_samples * views


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class StoreWriter:
    """Fills a new cache folder at ``tmp`` (rows in any order), then :meth:`commit` renames it to ``final``."""

    def __init__(self, tmp: Path, final: Path, entries: list[Entry], num_samples: int, views: int, key: dict):
        self.tmp, self.final, self.entries, self.num_samples, self.views, self.key = \
            tmp, final, entries, num_samples, views, key
        tmp.mkdir(parents=True)
        self.arrays = {(v, e.name): np.lib.format.open_memmap(tmp / file_name(v, e.name), mode="w+",
                                                              dtype=_NUMPY[e.dtype], shape=(num_samples, *e.shape))
                       for v in range(views) for e in entries}
        self.filled = np.zeros((views, num_samples), dtype=bool)

    def write(self, view: int, index: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Rows ``index [B]`` of view ``view``: ``values[name]`` is ``[B, *shape]`` in the entry's dtype."""
        rows = index.cpu().numpy()
        for e in self.entries:
            t = values[e.name].detach().to("cpu", _TORCH[e.dtype]).contiguous()
            self.arrays[(view, e.name)][rows] = (t.view(torch.int16) if e.dtype == "bfloat16" else t).numpy()
        self.filled[view, rows] = True

    def commit(self, extra: dict | None = None) -> Path:
        """Check every row was written, record the checksums and rename into place; returns the final folder.
        When another process committed the same key first, its folder is kept and this one removed."""
        missing = np.argwhere(~self.filled)
        if len(missing):
            view, row = missing[0].tolist()
            raise RuntimeError(f"{len(missing)} cache rows were never written (first: view {view}, sample {row})")
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
        files = {file_name(v, e.name): _sha256(self.tmp / file_name(v, e.name))
                 for v in range(self.views) for e in self.entries}
        meta = {"format": FORMAT, "key": self.key, "num_samples": self.num_samples, "views": self.views,
                "entries": [[e.name, list(e.shape), e.dtype] for e in self.entries], "sha256": files,
                **(extra or {})}
        (self.tmp / META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if not self.final.exists():  # a real failure (permissions, another file system): say it, keep nothing
                self.abandon()
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # another run filled the same cache meanwhile: keep theirs
        return self.final

    def abandon(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class OutputStore:
    """A complete cache folder, opened read-only by memory map: :meth:`read` gives the rows of one batch."""

    def __init__(self, root: Path, meta: dict):
        self.root, self.meta = root, meta
        self.views, self.num_samples = meta["views"], meta["num_samples"]
        self.entries = [Entry(n, tuple(s), d) for n, s, d in meta["entries"]]
        self.arrays = {(v, e.name): np.load(root / file_name(v, e.name), mmap_mode="r")
                       for v in range(self.views) for e in self.entries}

    @classmethod
    def open(cls, root: Path, key: dict, verify: bool = True) -> OutputStore:
        """The folder at ``root`` if it was made for ``key`` and is whole (every file present with its shape and,
        with ``verify``, its recorded sha256); else :class:`DamagedCache` saying what is wrong."""
        try:
            meta = json.loads((root / META).read_text())
        except (OSError, ValueError) as exc:
            raise DamagedCache(f"{root / META} cannot be read ({exc})") from None
        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise DamagedCache(f"{root / META} was made for another key or format than this run's")
        try:
            store = cls(root, meta)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DamagedCache(f"a file of {root} cannot be read ({exc})") from None
        for (v, name), array in store.arrays.items():
            entry = next(e for e in store.entries if e.name == name)
            if array.shape != (store.num_samples, *entry.shape) or array.dtype != np.dtype(_NUMPY[entry.dtype]):
                raise DamagedCache(f"{root / file_name(v, name)} has shape {array.shape} {array.dtype}, expected "
                                   f"{(store.num_samples, *entry.shape)} {entry.dtype}")
        if verify:
            for name, digest in meta["sha256"].items():
                if _sha256(root / name) != digest:
                    raise DamagedCache(f"{root / name} changed after it was written (its sha256 differs)")
        return store

    def read(self, view: int, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every entry's rows ``index [B]`` of ``view``: ``{name: [B, *shape]}`` in the stored dtype, on the CPU."""
        rows = index.cpu().numpy()
        out = {}
        for e in self.entries:
            t = torch.from_numpy(np.ascontiguousarray(self.arrays[(view, e.name)][rows]))
            out[e.name] = t.view(torch.bfloat16) if e.dtype == "bfloat16" else t
        return out
