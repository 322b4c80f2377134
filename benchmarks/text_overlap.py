"""How much of a text's held-out splits the training split already holds: the share of val and test's
``--window``-character windows (every start) that also occur in train, and the held-out documents that repeat most.

A held-out split that repeats training text scores memorising as predicting: the longer a model trains, the better its
test loss looks. Uses only ``make_text_datasets``, so it also measures an older checkout's split:
``git worktree add /tmp/old 888f21f && PYTHONPATH=/tmp/old python benchmarks/text_overlap.py``.

    python benchmarks/text_overlap.py                   # the embedded pydoc text
    python benchmarks/text_overlap.py --root my_corpus/  # a user's .txt / .jsonl text
"""

from __future__ import annotations

import argparse

from featdistill.config import Data
from featdistill.data import make_text_datasets


def documents(stream: list[int], sep: int) -> list[str]:
    """A split's documents from its byte stream ``[sep] doc [sep] doc ... [sep]``."""
    out, cur = [], []
    for t in stream[1:]:
        if t == sep:
            out.append(bytes(cur).decode("utf-8", errors="replace"))
            cur = []
        else:
            cur.append(t)
    return out


def repeated(text: str, seen: set[str], n: int) -> tuple[int, int]:
    """(windows of ``text`` found in ``seen``, windows of ``text``)."""
    starts = range(max(0, len(text) - n + 1))
    return sum(text[i:i + n] in seen for i in starts), len(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="a .txt / .jsonl file or folder (default: the embedded pydoc text)")
    parser.add_argument("--window", type=int, default=64, help="characters per window (default 64)")
    parser.add_argument("--top", type=int, default=5, help="held-out documents to list (default 5)")
    args = parser.parse_args()
    data = Data(name="text", root=args.root) if args.root else Data(name="pydoc")
    splits = make_text_datasets(data)
    sep = int(splits.train.tokens[0])
    docs = [documents(s.tokens.tolist(), sep) for s in splits[:3]]
    n = args.window
    train = "\n".join(docs[0])
    seen = {train[i:i + n] for i in range(len(train) - n + 1)}
    print(f"{data.name}: train {len(docs[0])} documents, {splits.train.num_bytes:,} bytes; {n}-character windows")
    for name, held in (("val", docs[1]), ("test", docs[2])):
        counts = [repeated(d, seen, n) for d in held]
        hit, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
        print(f"  {name}: {len(held)} documents, {sum(len(d.encode()) for d in held):,} bytes; "
              f"{hit / max(total, 1):.2%} of its windows are in train")
        worst = sorted(range(len(held)), key=lambda i: -counts[i][0])[:args.top]
        for i in (i for i in worst if counts[i][0]):
            print(f"    {counts[i][0] / counts[i][1]:6.1%} of a {len(held[i]):,}-character document starting "
                  f"{held[i][:40]!r}")


if __name__ == "__main__":
    main()
