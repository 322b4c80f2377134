"""featdistill.data.text: byte tokens, the embedded pydoc corpus split by document, blocks and their labels, padding,
a user's .txt / .jsonl files and their errors, a saved tokenizer folder, and the LM metrics. CPU only, no downloads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from featdistill.config import Data
from featdistill.data import Batch, collate_text, lm_metrics, make_loaders, make_text_datasets
from featdistill.data.text import BYTES, EOD, pydoc_documents, read_documents
from featdistill.data.text_split import LINK_CHARS, MAX_LINK_DOCS, document_groups, split_documents, split_sizes
from featdistill.errors import FeatdistillError
from featdistill.recipe import to_dict


def _docs_of(ids: torch.Tensor, sep: int = EOD) -> list[str]:
    """A split's documents back from its stream ``[sep] d [sep] d ... [sep]``."""
    out, cur = [], []
    for t in ids.tolist()[1:]:
        if t == sep:
            out.append(bytes(cur).decode("utf-8"))
            cur = []
        else:
            cur.append(t)
    assert cur == []
    return out


@pytest.fixture(scope="module")
def pydoc():
    return make_text_datasets(Data(name="pydoc", block_size=64))


def test_byte_tokens_round_trip():
    text = "naïve café ✓ – \n\tend"
    (ids,) = BYTES.encode([text])
    assert bytes(ids).decode("utf-8") == text and max(ids) < 256 and len(ids) == len(text.encode("utf-8"))
    assert (BYTES.sep, BYTES.vocab_size) == (EOD, 257)


def test_pydoc_splits_by_document_and_accounts_for_every_byte(pydoc):
    docs = pydoc_documents()
    assert pydoc.vocab_size == 257 and len(docs) > 50
    parts = [_docs_of(split.tokens) for split in pydoc[:3]]
    assert all(parts)
    assert sorted(d for p in parts for d in p) == sorted(docs)  # every document in exactly one split
    assert not (set(parts[0]) & set(parts[1]) or set(parts[0]) & set(parts[2]) or set(parts[1]) & set(parts[2]))
    sizes = [split.num_bytes for split in pydoc[:3]]
    assert sum(sizes) == sum(len(d.encode("utf-8")) for d in docs)
    for split, part in zip(pydoc[:3], parts):
        assert split.num_tokens == split.num_bytes + len(part) == len(split.tokens) - 1  # bytes + one EOD each
    # fractions of the bytes near val_size / test_size (documents are whole, so not exact)
    assert abs(sizes[1] / sum(sizes) - 0.15) < 0.06 and abs(sizes[2] / sum(sizes) - 0.33) < 0.06
    other = make_text_datasets(Data(name="pydoc", block_size=64), seed=5)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(pydoc[:3], other[:3]))  # the split ignores the seed


def test_eval_blocks_tile_the_stream_with_shifted_labels(pydoc):
    val, t = pydoc.val, 64
    items = [val[i] for i in range(len(val))]
    for item in items:
        assert set(item) == {"input_ids", "attention_mask", "labels"}
        assert all(v.shape == (t,) and v.dtype == torch.int64 for v in item.values())
        real = item["attention_mask"].bool()
        assert torch.equal(item["input_ids"][1:][real[1:]], item["labels"][:-1][real[1:]])  # labels[t] = ids[t + 1]
    labels = torch.cat([it["labels"] for it in items])
    assert torch.equal(labels[labels != -100], val.tokens[1:])  # every token but the first, each once
    last = items[-1]
    pad = last["attention_mask"] == 0
    assert pad.any() and (last["labels"][pad] == -100).all()  # pydoc's val stream is not a multiple of 64
    assert (last["attention_mask"][: int((~pad).sum())] == 1).all()


def test_train_blocks_are_full_and_move_with_seed_and_epoch(pydoc):
    train = pydoc.train
    n, first = len(train), train[0]["input_ids"]
    assert all(train[i]["attention_mask"].all() for i in (0, n - 1))
    train.epoch = 1
    moved = train[0]["input_ids"]
    assert len(train) == n and not torch.equal(first, moved)
    train.epoch = 0
    assert torch.equal(train[0]["input_ids"], first)  # a pure function of (seed, epoch)
    other = make_text_datasets(Data(name="pydoc", block_size=64), seed=1).train
    assert not torch.equal(other[0]["input_ids"], first)
    with pytest.raises(IndexError):
        train[n]


def test_collate_pads_to_the_longest_and_loader_batches(pydoc):
    a = {"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.int64),
         "labels": torch.tensor([6, 7, 8]), "index": torch.tensor(0)}
    b = {"input_ids": torch.tensor([9]), "attention_mask": torch.ones(1, dtype=torch.int64),
         "labels": torch.tensor([10]), "index": torch.tensor(1)}
    batch = collate_text([a, b], pad_id=EOD)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, EOD, EOD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, 8], [10, -100, -100]]
    assert batch["index"].tolist() == [0, 1]
    loader = DataLoader(pydoc.test, batch_size=4, collate_fn=pydoc.test.collate)
    got = Batch.of(next(iter(loader)))
    assert set(got.inputs) == {"input_ids", "attention_mask"} and got.labels.shape == (4, 64)


def test_with_index_adds_each_block_position():
    ds = make_text_datasets(Data(name="pydoc", block_size=256), with_index=True)
    assert ds.val[3]["index"].item() == 3 and ds.train[2]["index"].dtype == torch.int64


def test_jsonl_documents_and_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "first doc"}\n\n{"text": "second", "id": 2}\n{"text": ""}\n', encoding="utf-8")
    assert read_documents(good) == ["first doc", "second"]  # blank lines skipped, empty documents dropped

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(FeatdistillError, match=r"bad\.jsonl:3: not valid JSON .*fix or remove line 3"):
        read_documents(bad)
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(FeatdistillError, match=r"bad\.jsonl:2: no \"text\" string \(keys \['body'\]\).*line 2"):
        read_documents(bad)
    bad.write_text('["a list"]\n', encoding="utf-8")
    with pytest.raises(FeatdistillError, match=r":1: no \"text\" string \(a JSON list\)"):
        read_documents(bad)


def test_txt_folder_each_file_a_document(tmp_path):
    (tmp_path / "sub").mkdir()
    texts = {f"sub/f{i}.txt": f"document number {i} " * (20 + i) for i in range(6)}
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "notes.md").write_text("not read")
    assert read_documents(tmp_path) == [texts[k] for k in sorted(texts)]
    ds = make_text_datasets(Data(name="text", root=str(tmp_path), block_size=8, val_size=0.2, test_size=0.2))
    parts = [_docs_of(s.tokens) for s in ds[:3]]
    assert sorted(d for p in parts for d in p) == sorted(texts.values()) and all(parts)

    (tmp_path / "sub" / "f0.txt").write_bytes(b"caf\xe9")
    with pytest.raises(FeatdistillError, match=r"f0\.txt is not UTF-8 text .*save it as UTF-8"):
        read_documents(tmp_path)
    with pytest.raises(FeatdistillError, match="does not exist; give a .txt file"):
        read_documents(tmp_path / "missing")
    with pytest.raises(FeatdistillError, match=r"is a \.md file; give a .txt file"):
        read_documents(tmp_path / "notes.md")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatdistillError, match="holds no .txt or .jsonl file"):
        read_documents(empty)


def test_too_few_documents_or_text_for_a_block(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a single document")
    with pytest.raises(FeatdistillError, match="1 non-empty document.*several .txt files"):
        make_text_datasets(Data(name="text", root=str(one)))
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(f"short text {i}")
    with pytest.raises(FeatdistillError, match="too short for data.block_size=64.*lower data.block_size"):
        make_text_datasets(Data(name="text", root=str(tmp_path), block_size=64))


def test_split_sizes_fixed_and_one_item_each_at_least():
    sizes = [100] * 10 + [5000]
    a, b = split_sizes(sizes, 0.2, 0.2), split_sizes(sizes, 0.2, 0.2)
    assert a == b and sorted(i for p in a for i in p) == list(range(11))
    assert 10 in a[0]  # an item over a held-out share trains
    assert sum(sizes[i] for i in a[2]) <= 0.2 * sum(sizes)  # a held-out split never overshoots its share
    assert split_sizes([5, 5, 5], 0.01, 0.01) == split_sizes([5, 5, 5], 0.9, 0.9)
    assert all(len(p) == 1 for p in split_sizes([5, 5, 5], 0.9, 0.9))


def test_documents_sharing_a_long_line_or_equal_form_one_group():
    para = "x" * (LINK_CHARS - 5) + " para"  # LINK_CHARS long
    docs = [f"intro\n{para}\nmore", "unrelated text", f"  {para}  \nother", "short line", "short line",
            "a" * (LINK_CHARS - 1) + "\nb", "a" * (LINK_CHARS - 1) + "\nc"]
    assert document_groups(docs) == [[0, 2], [1], [3, 4], [5], [6]]  # one char short of LINK_CHARS links nothing
    boiler = "Licensed under the Apache License, Version 2.0 (the License)"
    many = [f"{boiler}\ndoc {i}" for i in range(MAX_LINK_DOCS + 1)]
    assert document_groups(many) == [[i] for i in range(len(many))]  # boilerplate cannot chain a corpus
    assert document_groups(many[:2]) == [[0, 1]]


def test_split_keeps_linked_documents_together_and_needs_three_groups():
    shared = [f"shared paragraph number {k}, long enough to link two documents" for k in range(6)]
    docs = [f"{shared[k // 2]}\nbody {k}" + "y" * (50 * k) for k in range(12)]  # documents 2k and 2k + 1 linked
    parts = split_documents(docs, 0.2, 0.2)
    where = {i: n for n, part in enumerate(parts) for i in part}
    assert sorted(where) == list(range(12)) and all(parts)
    assert all(where[2 * k] == where[2 * k + 1] for k in range(6))
    with pytest.raises(FeatdistillError, match="4 non-empty document.*in 2 group.*share text"):
        split_documents(docs[:4], 0.2, 0.2)


def test_pydoc_held_out_text_does_not_repeat_training_text(pydoc):
    """Topics such as ``compound`` hold others (``if``, ``try``) verbatim; a document split let 39% of the test
    text's 64-character windows appear in train, so test loss rewarded memorising."""
    texts = ["\n".join(_docs_of(split.tokens)) for split in pydoc[:3]]
    n = 64
    seen = {texts[0][i:i + n] for i in range(len(texts[0]) - n)}
    for held in texts[1:]:
        starts = range(0, len(held) - n, 5)
        assert sum(held[i:i + n] in seen for i in starts) / len(starts) < 0.005


def test_data_problems_and_saved_form():
    assert Data(name="pydoc").problems() == []
    assert any("data.root is required for 'text'" in p for p in Data(name="text").problems())
    assert any("data.block_size must be an int >= 2" in p for p in Data(name="pydoc", block_size=1).problems())
    assert any("data.tokenizer is for text data" in p for p in Data(tokenizer="/tmp/tok").problems())
    assert any("data.tokenizer must be None" in p for p in Data(name="pydoc", tokenizer="").problems())
    assert any("'pydoc'" in p for p in Data(name="pydocs").problems())
    # image recipes keep their saved form (and so their cached teachers' keys)
    assert set(to_dict(Data())) == {"name", "root", "image_size", "in_chans", "augment", "val_size", "test_size"}
    assert to_dict(Data(name="pydoc", block_size=64, tokenizer="tok"))["block_size"] == 64
    with pytest.raises(FeatdistillError, match="not a text dataset"):
        make_text_datasets(Data())
    served = make_loaders(Data(name="pydoc", block_size=64), batch_size=4)  # the runner's loaders serve text
    assert (served.num_classes, served.in_chans) == (257, 0)


def test_lm_metrics_by_hand():
    got = lm_metrics(10 * math.log(4), num_tokens=10, num_bytes=20)  # 2 bits per token, 2 bytes per token
    assert got["loss"] == pytest.approx(math.log(4))
    assert got["perplexity"] == pytest.approx(4.0)
    assert got["bits_per_byte"] == pytest.approx(1.0)
    assert lm_metrics(257 * math.log(257), 257, 257)["bits_per_byte"] == pytest.approx(math.log2(257))  # uniform
    with pytest.raises(ValueError):
        lm_metrics(1.0, 0, 1)


def test_tokenizer_from_a_saved_folder(tmp_path):
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    docs = [f"the cat number {i} sat on the mat" for i in range(8)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs), encoding="utf-8")
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    core.train_from_iterator(docs, tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]", "[PAD]"]))
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]",
                            pad_token="[PAD]").save_pretrained(tmp_path / "tok")

    ds = make_text_datasets(Data(name="text", root=str(tmp_path / "corpus.jsonl"), tokenizer=str(tmp_path / "tok"),
                                 block_size=4, val_size=0.2, test_size=0.2))
    assert ds.vocab_size == core.get_vocab_size() and ds.val.pad_id == core.token_to_id("[PAD]")
    eos = core.token_to_id("[EOS]")
    n = int((ds.val.tokens == eos).sum()) - 1  # [EOS] doc [EOS] doc ... [EOS]
    assert ds.val.tokens[0] == eos and n >= 1
    assert ds.val.num_tokens == n * (8 + 1) and ds.val.num_bytes == n * len(docs[0].encode())  # 8 words a document
    words = core.decode(ds.val.tokens[1:9].tolist()).split()
    assert words[:2] == ["the", "cat"] and words[4:] == ["sat", "on", "the", "mat"]
    with pytest.raises(FeatdistillError, match="cannot load a tokenizer from"):
        make_text_datasets(Data(name="pydoc", tokenizer=str(tmp_path)))  # a folder with no tokenizer in it
    with pytest.raises(FeatdistillError, match="is not a folder"):
        make_text_datasets(Data(name="pydoc", tokenizer=str(tmp_path / "missing")))
