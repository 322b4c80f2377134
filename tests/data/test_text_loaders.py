"""make_loaders and sample_batch on text: dict batches, the same seeded sharded order as images, epochs that reach
the train blocks' offsets (persistent workers included), and the dry-run sample."""

from __future__ import annotations

import torch

from featdistill.config import Data
from featdistill.data import in_chans_of, make_loaders, sample_batch
from featdistill.data.loaders import EpochIndex

DATA = Data(name="pydoc", block_size=32)


def test_sample_batch_for_text_is_a_dict_of_token_blocks():
    sample = sample_batch(DATA, 3)
    assert set(sample) == {"input_ids", "attention_mask"}
    assert all(v.shape == (3, 32) and v.dtype == torch.int64 for v in sample.values())
    assert sample["attention_mask"].all() and in_chans_of(DATA) == 0 and in_chans_of(Data()) == 3


def test_text_loaders_yield_dict_batches_and_shard_like_images():
    loaders = make_loaders(DATA, batch_size=8, seed=1)
    assert (loaders.num_classes, loaders.in_chans, loaders.image_size) == (257, 0, 0)
    batch = next(iter(loaders.train))
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (8, 32)
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])  # labels are the next tokens
    shards = [list(make_loaders(DATA, 8, seed=1, rank=r, world_size=2).train.sampler) for r in (0, 1)]
    n = len(loaders.train.dataset)  # DistributedSampler pads the order to a multiple of world_size by repeating
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2 and set(shards[0]) | set(shards[1]) == set(range(n))
    assert list(make_loaders(DATA, 8, seed=1, rank=0, world_size=2).train.sampler) == shards[0]  # seeded


def test_set_epoch_moves_the_train_blocks_and_travels_with_the_index():
    loaders = make_loaders(DATA, batch_size=4, seed=0)
    train = loaders.train.dataset
    first = train[0]["input_ids"]
    loaders.set_epoch(3)
    assert train.epoch == 3 and loaders.train.sampler.epoch == 3
    moved = train[0]["input_ids"]
    assert not torch.equal(first, moved)  # a new offset (a fixed function of seed and epoch)
    train.epoch = 0  # a persistent worker's stale copy: the epoch carried by the index wins
    assert torch.equal(train[EpochIndex(0, 3)]["input_ids"], moved)
    loaders.set_epoch(1, skip_batches=2)
    assert len(list(loaders.train.sampler)) == len(train) - 8
