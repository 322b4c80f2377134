"""User-facing exceptions. Every message names the problem and the fix."""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class FeatdistillError(Exception):
    """Base class: a problem the user can fix (the CLI exits 2 on these)."""


class UnknownNameError(FeatdistillError, KeyError):
    """A name (layer, loss, adapter, recipe key) that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ShapeError(FeatdistillError, ValueError):
    """Two features that no adapter can bridge, or an adapter that produced the wrong shape."""


class OutputTypeError(FeatdistillError, TypeError):
    """A hooked layer produced something other than a tensor and no ``select=`` says which part to take."""


class CaptureError(FeatdistillError, RuntimeError):
    """A hook saw something it cannot capture (a layer called twice, a layer that never ran)."""


class RecipeError(FeatdistillError, ValueError):
    """One or more problems in a recipe; ``problems`` lists each of them."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.problems)} problem(s){where}:"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates that look like ``name`` (typos, wrong index, missing prefix)."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if len(matches) < n:  # 'layer3' should find 'layer3.1.conv2' too
        extra = [c for c in candidates if name and name in c and c not in matches]
        matches += extra[: n - len(matches)]
    return matches


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    matches = close_matches(name, candidates, n=n)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def explain(exc: BaseException) -> FeatdistillError | None:
    """A known kind of failure from outside featdistill's own checks (the file system, memory), as a
    FeatdistillError naming the fix; None for anything else (a bug, reported as one)."""
    if isinstance(exc, FeatdistillError):
        return exc
    if isinstance(exc, OSError):
        where = f" {exc.filename!s}" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return FeatdistillError(f"the disk is full{where and ' writing' + where}. Free some space or write "
                                    "elsewhere (--out for the run, $FEATDISTILL_CACHE for cached teachers); "
                                    "finished epochs are in the run directory's checkpoint (--resume).")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return FeatdistillError(f"no permission to write{where} ({exc.strerror}). Choose a writable place with "
                                    "--out (the run) or $FEATDISTILL_CACHE (cached teachers).")
        if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            return FeatdistillError(f"cannot use{where}: {exc.strerror}. Give a folder path that is not a file "
                                    "(--out, $FEATDISTILL_CACHE, data.root).")
        return None
    text = str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text \
            or "out of memory" in text.lower():
        first = text.splitlines()[0] if text else type(exc).__name__
        return FeatdistillError(f"out of memory ({first[:200]}). Lower train.batch_size or data.image_size, or "
                                "use smaller models.")
    return None
