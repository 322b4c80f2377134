"""``TeacherCache``: the teacher's outputs recorded once per augmentation view and read back in every epoch.

No torch here (like :mod:`featdistill.config`): a recipe states the cache, ``problems()`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import number as _number

CACHE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class TeacherCache:
    """Record the teacher's logits and paired features once, then train without running the teacher.

    Epoch ``e`` trains on augmentation view ``e mod views`` (the images of epoch ``e mod views`` of a run without
    the cache; the sample order still changes every epoch). Before training, the teacher runs once over every
    view of the training split and its outputs are stored per (view, sample) under ``$FEATDISTILL_CACHE``, keyed by
    everything they depend on; every epoch then reads them. A later run of the same recipe and seed reuses them
    and never runs the teacher.

    Args:
        views: augmentation views recorded (1 = the same augmented image every epoch; with ``data.augment=False``
            one view is all there is).
        top_k: ``None`` stores every logit; ``k`` stores the ``k`` largest plus one value that keeps the remaining
            probability mass at the recipe's temperature exact (the top ``k`` soft targets are exact, the rest
            share their mass equally). For large vocabularies.
        dtype: storage precision of logits and features (``'float16'``, ``'bfloat16'``, ``'float32'``).
        max_gb: refuse a cache larger than this, before anything runs.
    """

    views: int = 4
    top_k: int | None = None
    dtype: str = "float16"
    max_gb: float = 20.0

    def problems(self) -> list[str]:
        found = []
        if not isinstance(self.views, int) or isinstance(self.views, bool) or self.views < 1:
            found.append(f"teacher_cache.views must be an integer >= 1 (augmentation views recorded), got "
                         f"{self.views!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool)
                                       or self.top_k < 1):
            found.append(f"teacher_cache.top_k must be None (every logit) or an integer >= 1, got {self.top_k!r}")
        if self.dtype not in CACHE_DTYPES:
            found.append(f"teacher_cache.dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.dtype!r}")
        if not _number(self.max_gb) or self.max_gb <= 0:
            found.append(f"teacher_cache.max_gb must be a number > 0 (gigabytes), got {self.max_gb!r}")
        return found
