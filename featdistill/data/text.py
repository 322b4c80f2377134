"""Text for causal language models: the embedded corpus, a user's files, tokens, fixed-length blocks, metrics.

Corpus. ``'pydoc'`` (the text default) is the Python documentation topics that ship inside every CPython
(``pydoc_data.topics``: 79 documents, about 465K characters of English prose and code, no download); note that
it changes a little between Python versions, so compare numbers within one. ``'text'`` reads ``data.root``: a
``.txt`` file (one document), a ``.jsonl`` file (one JSON object with a ``"text"`` string per line, each a
document) or a folder of them. Files are read as UTF-8 text and JSON; nothing is ever unpickled.

Tokens. By default UTF-8 bytes: ids 0..255 are bytes and ``EOD = 256`` ends each document, so the vocabulary is
257 and no tokenizer is downloaded. ``data.tokenizer`` names the folder of a Hugging Face tokenizer
(``save_pretrained``), loaded with ``local_files_only=True``; its EOS (else SEP, else BOS) token separates
documents, and its vocabulary is ``len(tokenizer)``.

Splits. By document, never by position, and never apart from a document that shares text with it
(:mod:`.text_split`: equal documents, or ones sharing a line of 40+ characters, form a group; groups, shuffled by
a fixed generator that never depends on a run's seed, fill test, then val, up to ``test_size`` / ``val_size`` of
the bytes; train keeps the rest). A split's documents form one stream ``[sep] doc [sep] doc [sep] ...``.
``data.train_root`` replaces the train split by every document of another text
(e.g. one the teacher generated, ``featdistill.generate``); val and test stay the same.

Blocks and labels. An item is ``{'input_ids': [T], 'attention_mask': [T], 'labels': [T]}``, int64, cut from
``T + 1`` stream tokens: ``input_ids = s[:T]``, ``labels = s[1:]``. Labels are already shifted: ``labels[t]`` is
the token after ``input_ids[t]``, the target of ``logits[t]``, as featdistill's combiner compares them position by
position. Do not pass them to a Hugging Face model's own ``labels=`` argument, which shifts again
(featdistill's ``Batch`` keeps labels out of the model's inputs). Val/test blocks tile the stream: every token
but the first is a target exactly once, the last block padded (``attention_mask`` 0, labels ``IGNORE_INDEX``).
Train blocks are all full and start at an offset in ``[0, T)`` that is a pure function of ``(seed, epoch)``,
so each epoch cuts the text at new places while the number of blocks stays fixed.

Metrics. Each split records ``num_tokens`` (its targets in the tiling, ``len(stream) - 1``) and ``num_bytes`` (the
UTF-8 bytes of its documents, separators not counted); :func:`lm_metrics` turns a summed NLL into loss,
perplexity and bits per byte, which compares models whatever their tokenizer.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from ..config import TEXT_DATASETS, TEXT_LAYOUT, Data
from ..errors import FeatdistillError
from .augment import mix_seed
from .batch import IGNORE_INDEX
from .text_split import split_documents

EOD = 256  # end of document in the byte vocabulary
BYTE_VOCAB = 257  # 256 bytes + EOD
SUFFIXES = (".txt", ".jsonl")


# -- documents -----------------------------------------------------------------------------------------------------
def pydoc_documents() -> list[str]:
    """The embedded corpus: CPython's documentation topics, in sorted topic order."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FeatdistillError(f"{path} is not UTF-8 text (byte {e.start} is {raw[e.start:e.start + 1]!r}); save it "
                               "as UTF-8, then run again") from None


def _jsonl(path: Path) -> list[str]:
    docs = []
    for n, line in enumerate(_decode(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FeatdistillError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}). Each line must be one "
                                   'JSON object such as {"text": "..."}; fix or remove line ' f"{n}.") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            what = f"keys {sorted(obj)}" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
            raise FeatdistillError(f'{path}:{n}: no "text" string ({what}). Each line must be an object whose "text" '
                                   f"field holds the document; rename the field or remove line {n}.")
        docs.append(obj["text"])
    return docs


def read_documents(root: str | Path) -> list[str]:
    """The documents under ``root``: a ``.txt`` file is one, a ``.jsonl`` line is one, a folder gives those of every
    ``.txt`` / ``.jsonl`` file beneath it (sorted paths). Empty documents are dropped."""
    path = Path(root).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise FeatdistillError(f"data.root {str(root)!r} holds no .txt or .jsonl file; give {TEXT_LAYOUT}")
    elif path.is_file() and path.suffix in SUFFIXES:
        files = [path]
    else:
        what = "does not exist" if not path.exists() else f"is a {path.suffix or 'suffix-less'} file"
        raise FeatdistillError(f"data.root {str(root)!r} {what}; give {TEXT_LAYOUT}")
    docs = [d for f in files for d in (_jsonl(f) if f.suffix == ".jsonl" else [_decode(f)])]
    return [d for d in docs if d]


def _train_documents(root: str) -> list[str]:
    """The documents of ``data.train_root``; a missing path is most often text still to be generated."""
    if not Path(root).expanduser().exists():
        raise FeatdistillError(
            f"data.train_root {root!r} does not exist. If it is text a teacher generates, make it first with: "
            f"python -m featdistill.generate RECIPE --samples 2000 --out {root} (RECIPE: this recipe file); or "
            "set data.train_root to an existing .jsonl / .txt file or folder, or to None to train on the real text")
    return read_documents(root)


# -- tokens --------------------------------------------------------------------------------------------------------
class Tokens(NamedTuple):
    """A tokenizer as the blocks need it: ``encode(list of texts) -> list of id lists``, the document separator
    (or None), the padding id and the vocabulary size."""

    encode: Any
    sep: int | None
    pad: int
    vocab_size: int


def _bytes(texts: Sequence[str]) -> list[list[int]]:
    return [list(t.encode("utf-8")) for t in texts]


BYTES = Tokens(_bytes, EOD, EOD, BYTE_VOCAB)


def load_tokens(tokenizer: str | None) -> Tokens:
    """UTF-8 bytes for None, else the Hugging Face tokenizer saved in folder ``tokenizer`` (no download)."""
    if tokenizer is None:
        return BYTES
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise FeatdistillError('data.tokenizer needs the transformers package: pip install -e ".[text]", or set '
                               "data.tokenizer=None for byte tokens") from None
    path = Path(tokenizer).expanduser()
    if not path.is_dir():
        raise FeatdistillError(f"data.tokenizer {tokenizer!r} is not a folder; give the folder that "
                               "tokenizer.save_pretrained(...) wrote, or None for byte tokens")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FeatdistillError(f"cannot load a tokenizer from {str(path)!r}: {str(e).splitlines()[0]} Give the folder "
                               "that tokenizer.save_pretrained(...) wrote (tokenizer.json and its config).") from None
    sep = next((i for i in (tok.eos_token_id, tok.sep_token_id, tok.bos_token_id) if i is not None), None)
    pad = next((i for i in (tok.pad_token_id, sep) if i is not None), 0)
    encode = functools.partial(_hf_encode, tok)
    return Tokens(encode, sep, pad, len(tok))


def _hf_encode(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    return tok(list(texts), add_special_tokens=False)["input_ids"]


def stream(docs: Sequence[list[int]], sep: int | None) -> torch.Tensor:
    """int64 ``[N]``: ``[sep] d_1 [sep] d_2 ... [sep]`` (no separators when ``sep`` is None)."""
    head = [sep] if sep is not None else []
    return torch.tensor(head + [t for d in docs for t in (d + head)], dtype=torch.int64)


# -- splits and blocks ---------------------------------------------------------------------------------------------
class TextBlocks(Dataset):
    """Blocks of one split's token stream (see the module docstring).

    Items are dicts of int64 tensors ``input_ids [T]``, ``attention_mask [T]``, ``labels [T]`` (plus ``index []``
    with ``with_index``). ``shift=True`` (train): full blocks at an offset set by ``(seed, epoch)``; else a fixed
    tiling that makes every token but the first a target once. ``num_tokens`` / ``num_bytes``: for
    :func:`lm_metrics`."""

    def __init__(self, tokens: torch.Tensor, block_size: int, num_bytes: int, pad_id: int, shift: bool = False,
                 seed: int = 0, with_index: bool = False):
        self.tokens, self.block_size, self.pad_id = tokens, block_size, pad_id
        self.shift, self.seed, self.with_index = shift, seed, with_index
        self.num_tokens, self.num_bytes = len(tokens) - 1, num_bytes
        self.epoch = 0  # set by the loaders before each epoch, like the image splits
        n, t = len(tokens), block_size
        if shift and n < 2 * t:
            raise FeatdistillError(f"a text split of {n} tokens is too short for data.block_size={t} (train needs "
                                   "two blocks' worth); lower data.block_size or give more text")
        self._len = n // t - 1 if shift else max(1, math.ceil((n - 1) / t))

    @property
    def collate(self) -> functools.partial:
        """``collate_text`` with this split's padding id, for ``DataLoader(collate_fn=...)``."""
        return functools.partial(collate_text, pad_id=self.pad_id)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        epoch, i = getattr(i, "epoch", self.epoch), int(i)  # an EpochIndex brings its epoch to persistent workers
        if not 0 <= i < self._len:
            raise IndexError(i)
        t = self.block_size
        start = i * t + (mix_seed(self.seed, epoch, 0) % t if self.shift else 0)
        chunk = self.tokens[start:start + t + 1]
        item = pad_block(chunk[:-1], chunk[1:], t, self.pad_id)
        if self.with_index:
            item["index"] = torch.tensor(i)
        return item


def pad_block(input_ids: torch.Tensor, labels: torch.Tensor, length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids [t]`` and ``labels [t]`` (t <= length) padded to ``[length]``: ``pad_id`` inputs, mask 0 and
    ``IGNORE_INDEX`` labels on the padding."""
    extra = length - len(input_ids)
    mask = torch.ones(length, dtype=torch.int64)
    if extra:
        mask[length - extra:] = 0
        input_ids = torch.cat([input_ids, input_ids.new_full((extra,), pad_id)])
        labels = torch.cat([labels, labels.new_full((extra,), IGNORE_INDEX)])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def collate_text(items: Sequence[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack dict items into a batch ``{'input_ids': [B, T], 'attention_mask': [B, T], 'labels': [B, T]}`` (plus
    ``index [B]``), right-padding shorter items to the longest (mask 0, labels ``IGNORE_INDEX``)."""
    length = max(len(it["input_ids"]) for it in items)
    padded = [{**it, **pad_block(it["input_ids"], it["labels"], length, pad_id)} if len(it["input_ids"]) < length
              else it for it in items]
    return {k: torch.stack([it[k] for it in padded]) for k in padded[0]}


class TextDatasets(NamedTuple):
    train: TextBlocks
    val: TextBlocks
    test: TextBlocks
    vocab_size: int


def make_text_datasets(data: Data, seed: int = 0, with_index: bool = False) -> TextDatasets:
    """The three splits of ``data`` (``name`` in ``TEXT_DATASETS``) as :class:`TextBlocks`, and the vocabulary size
    (the models' ``num_classes``). ``seed`` moves only the train blocks' offsets. Raises FeatdistillError."""
    problems = data.problems()
    if data.name not in TEXT_DATASETS:
        problems.append(f"data.name {data.name!r} is not a text dataset; use one of {', '.join(TEXT_DATASETS)}")
    if problems:
        raise FeatdistillError("invalid data settings:\n" + "\n".join(f"  - {p}" for p in problems))
    docs = pydoc_documents() if data.name == "pydoc" else read_documents(data.root)
    tokens = load_tokens(data.tokenizer)
    sizes = [len(d.encode("utf-8")) for d in docs]
    parts = list(split_documents(docs, data.val_size, data.test_size))
    if data.train_root is not None:  # another text replaces the training split; val/test stay as they are
        extra = _train_documents(data.train_root)
        parts[0] = list(range(len(docs), len(docs) + len(extra)))
        docs, sizes = docs + extra, sizes + [len(d.encode("utf-8")) for d in extra]
    splits = []
    for k, idx in enumerate(parts):
        ids = stream(tokens.encode([docs[i] for i in idx]), tokens.sep)
        splits.append(TextBlocks(ids, data.block_size, sum(sizes[i] for i in idx), tokens.pad, shift=k == 0,
                                 seed=seed, with_index=with_index))
    return TextDatasets(*splits, tokens.vocab_size)


def lm_metrics(total_nll_nats: float, num_tokens: int, num_bytes: int) -> dict[str, float]:
    """``loss`` (mean NLL per token, nats), ``perplexity = exp(loss)`` and ``bits_per_byte = total / ln 2 /
    num_bytes`` from the NLL summed over ``num_tokens`` targets of a text of ``num_bytes`` UTF-8 bytes."""
    if num_tokens < 1 or num_bytes < 1:
        raise ValueError(f"need num_tokens >= 1 and num_bytes >= 1, got {num_tokens} and {num_bytes}")
    loss = float(total_nll_nats) / num_tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
            "bits_per_byte": float(total_nll_nats) / math.log(2) / num_bytes}
