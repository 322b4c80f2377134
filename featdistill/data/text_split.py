"""Train / val / test splits of a text's documents that do not leak: documents that share text go to one split.

Why: a corpus often holds a document and a part of it again (CPython's pydoc topics: ``compound`` contains ``if``,
``while``, ``try`` ... verbatim, ``specialnames`` contains ``customization``, ``numeric-types`` ...). Split document
by document, 39% of the pydoc test text's 64-character windows were also in the training text, so a longer-trained
model's test loss rewarded memorising, not predicting. Here documents are linked when they share a line of at least
``LINK_CHARS`` characters (stripped) or are equal, the linked groups are split by their bytes, and each split gets
whole groups. A line found in more than ``MAX_LINK_DOCS`` documents is boilerplate (a licence header) and links
nothing, so it cannot chain a corpus into one group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import FeatdistillError

SPLIT_STATE = 0  # fixed seed of the group shuffle: the split never depends on a run's seed
SPLIT_VERSION = 2  # 1: document by document. Keys cached teachers (cli/teacher_key.py): a new split, new teachers
LINK_CHARS = 40  # pydoc: 40 leaves 0.1% of test windows in train; 80 (whole wrapped lines only) leaves 20%
MAX_LINK_DOCS = 8  # pydoc's most shared 40-character line is in 4 documents


def document_groups(docs: Sequence[str]) -> list[list[int]]:
    """Indices of ``docs`` grouped so that two documents sharing a line of ``LINK_CHARS`` or more characters (in at
    most ``MAX_LINK_DOCS`` documents), or equal, are in one group. Groups and their members are in index order."""
    parent = list(range(len(docs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    holders: dict[str, list[int]] = {}
    for i, doc in enumerate(docs):
        keys = {line.strip() for line in doc.splitlines()}
        for key in {k for k in keys if len(k) >= LINK_CHARS} | {"\0whole\0" + doc}:
            found = holders.setdefault(key, [])
            if len(found) <= MAX_LINK_DOCS:
                found.append(i)
    for key, found in holders.items():
        if len(found) > 1 and (len(found) <= MAX_LINK_DOCS or key.startswith("\0whole\0")):
            for i in found[1:]:
                parent[root(i)] = root(found[0])
    groups: dict[int, list[int]] = {}
    for i in range(len(docs)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def split_sizes(sizes: Sequence[int], val_size: float, test_size: float) -> tuple[list[int], ...]:
    """``(train, val, test)`` indices of items (document groups) from their byte ``sizes``. Items are shuffled by a
    fixed generator; test, then val, walks that order taking each item that still fits in its share of the bytes
    (if none does, the smallest goes in); train keeps the rest, so items too big for a held-out share train."""
    rest = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(SPLIT_STATE)).tolist()
    total, held_out = sum(sizes), []
    for frac, after in ((test_size, 2), (val_size, 1)):  # `after`: splits still to fill, one item each
        target, taken, size = frac * total, [], 0
        for i in rest:
            if size + sizes[i] <= target and len(rest) - len(taken) > after:
                taken.append(i)
                size += sizes[i]
        taken = taken or [min(rest, key=lambda i: sizes[i])]
        chosen = set(taken)
        rest = [i for i in rest if i not in chosen]
        held_out.append(taken)
    return rest, held_out[1], held_out[0]


def split_documents(docs: Sequence[str], val_size: float, test_size: float) -> tuple[list[int], ...]:
    """``(train, val, test)`` indices of ``docs``: :func:`document_groups` split by :func:`split_sizes`, each group
    whole in one split. Raises FeatdistillError when there are fewer than three groups."""
    groups = document_groups(docs)
    if len(groups) < 3:
        what = f"{len(docs)} non-empty document(s)"
        if len(groups) < len(docs):
            what += f" in {len(groups)} group(s) that share text (equal, or a line of {LINK_CHARS}+ characters)"
        raise FeatdistillError(f"the text has {what}; train, val and test need one each, and documents that share "
                               "text stay in one split. Give more documents: several .txt files, or a .jsonl with "
                               "one document per line.")
    sizes = [sum(len(docs[i].encode("utf-8")) for i in g) for g in groups]
    return tuple([i for g in part for i in groups[g]] for part in split_sizes(sizes, val_size, test_size))
