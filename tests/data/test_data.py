"""featdistill.data: digits splits and normalisation, epoch-deterministic sampling and augmentation, CIFAR pickles,
ImageFolder, and the user-facing errors. CPU only, no downloads: CIFAR and ImageFolder data are tiny fakes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featdistill.data import Data, Loaders, make_loaders, sample_batch, vision
from featdistill.errors import FeatdistillError


def _items(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of a loader's dataset in index order (no sampler, so no shuffling)."""
    ds = loader.dataset
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_stratified_and_seed_independent():
    a = make_loaders(Data(augment=False), batch_size=64, seed=0)
    sizes = [len(a.train.dataset), len(a.val.dataset), len(a.test.dataset)]
    assert sum(sizes) == 1797
    assert sizes[2] == 594  # ceil(0.33 * 1797)
    assert sizes[1] == 181  # ceil(0.15 * 1203)
    assert a.num_classes == 10
    labels = [_items(loader)[1] for loader in (a.train, a.val, a.test)]
    total = torch.bincount(torch.cat(labels), minlength=10)
    for y, frac in zip(labels, (sizes[0] / 1797, sizes[1] / 1797, sizes[2] / 1797)):
        assert set(y.tolist()) == set(range(10))
        # stratified: each class keeps its share in every split (to within rounding)
        assert ((torch.bincount(y, minlength=10) - total * frac).abs() <= 1.5).all()

    b = make_loaders(Data(augment=False), batch_size=64, seed=123)
    vision._CACHE.clear()  # a fresh preparation must give the very same split
    c = make_loaders(Data(augment=False), batch_size=64, seed=7)
    for other in (b, c):
        for split in ("train", "val", "test"):
            xa, ya = _items(getattr(a, split))
            xb, yb = _items(getattr(other, split))
            assert torch.equal(xa, xb) and torch.equal(ya, yb), split


@pytest.mark.parametrize("in_chans", [1, 3])
def test_digits_shapes_dtypes_channels(in_chans):
    loaders = make_loaders(Data(image_size=16, in_chans=in_chans), batch_size=32)
    assert isinstance(loaders, Loaders)
    assert (loaders.in_chans, loaders.image_size) == (in_chans, 16)
    for loader in (loaders.train, loaders.val, loaders.test):
        x, y = next(iter(loader))
        assert x.shape == (32, in_chans, 16, 16) and x.dtype == torch.float32
        assert y.shape == (32,) and y.dtype == torch.int64
        if in_chans == 3:  # grey repeated, not three different channels
            assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    x, _ = next(iter(make_loaders(Data(image_size=8, in_chans=in_chans), batch_size=4).val))
    assert x.shape == (4, in_chans, 8, 8)


def test_digits_train_statistics_normalised():
    x, _ = _items(make_loaders(Data(augment=False), batch_size=64).train)
    assert abs(x.mean().item()) < 0.05
    assert 0.8 < x.std().item() < 1.1  # bilinear upsampling smooths a little
    x8, _ = _items(make_loaders(Data(image_size=8, augment=False), batch_size=64).train)
    assert abs(x8.mean().item()) < 1e-4 and abs(x8.std().item() - 1) < 1e-3  # exact at native size


def test_set_epoch_is_deterministic_and_reshuffles():
    loaders = make_loaders(Data(), batch_size=128, seed=3)
    loaders.set_epoch(2)
    first = _batches(loaders.train)
    loaders.set_epoch(2)
    assert _same(first, _batches(loaders.train))
    loaders.set_epoch(5)
    other = _batches(loaders.train)
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))
    # a resumed run (fresh loaders, straight to epoch 2) sees exactly the same batches
    resumed = make_loaders(Data(), batch_size=128, seed=3)
    resumed.set_epoch(2)
    assert _same(first, _batches(resumed.train))
    # another seed: another order
    reseeded = make_loaders(Data(), batch_size=128, seed=4)
    reseeded.set_epoch(2)
    assert not _same(first, _batches(reseeded.train))


def test_worker_processes_give_the_same_batches():
    plain = make_loaders(Data(), batch_size=256, seed=1)
    workers = make_loaders(Data(num_workers=2), batch_size=256, seed=1)
    assert workers.train.num_workers == 2 and workers.train.persistent_workers
    first = None
    for epoch in (0, 1, 2):  # the workers persist: each epoch's augmentation must still reach them
        plain.set_epoch(epoch)
        workers.set_epoch(epoch)
        batches = _batches(workers.train)
        assert _same(_batches(plain.train), batches)
        first = first or batches
    assert not _same(first, batches)  # epochs differ (order and augmentation), so the check above can fail


def test_num_workers_changes_no_cache_key_and_bad_values_are_named():
    from dataclasses import replace

    from featdistill.cli.teacher_key import cache_path
    from featdistill.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "resnet_to_resnet.py")
    assert cache_path(recipe) == cache_path(replace(recipe, data=replace(recipe.data, num_workers=4)))
    assert any("data.num_workers must be an int >= 0" in p for p in Data(num_workers=-1).problems())


def test_two_ranks_disjoint_equal_shards():
    ranks = [make_loaders(Data(), batch_size=64, seed=0, rank=r, world_size=2) for r in (0, 1)]
    n = len(ranks[0].train.dataset)
    for epoch in (0, 1):
        shards = []
        for loaders in ranks:
            loaders.set_epoch(epoch)
            shards.append(list(loaders.train.sampler))
        assert len(shards[0]) == len(shards[1]) == n // 2
        assert not set(shards[0]) & set(shards[1])
        assert set(shards[0]) | set(shards[1]) == set(range(n))
        # the documented order: one permutation seeded by seed + epoch, dealt out to the ranks in turn
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0 + epoch)).tolist()
        assert shards[0] == order[0::2] and shards[1] == order[1::2]
        # val/test are not sharded: every rank evaluates everything
        assert all(len(loaders.val.dataset) == len(ranks[0].val.dataset) for loaders in ranks)


def test_augmentation_train_only_and_deterministic_per_epoch():
    aug = make_loaders(Data(augment=True), batch_size=64, seed=0)
    plain = make_loaders(Data(augment=False), batch_size=64, seed=0)
    x_aug, y_aug = _items(aug.train)
    x_plain, y_plain = _items(plain.train)
    assert torch.equal(y_aug, y_plain)
    changed = (x_aug - x_plain).abs().flatten(1).amax(1) > 1e-6
    assert changed.float().mean() > 0.5  # most images moved (a zero shift is possible)
    assert x_aug.shape == x_plain.shape
    for split in ("val", "test"):
        assert torch.equal(_items(getattr(aug, split))[0], _items(getattr(plain, split))[0])

    aug.set_epoch(4)
    again = _items(aug.train)[0]
    aug.set_epoch(4)
    assert torch.equal(again, _items(aug.train)[0])
    aug.set_epoch(5)
    assert not torch.equal(again, _items(aug.train)[0])


def test_sample_batch_shapes_and_validation():
    x = sample_batch(Data(), batch_size=3)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert sample_batch(Data(in_chans=1, image_size=12), batch_size=2).shape == (2, 1, 12, 12)
    zeros = sample_batch(Data(name="cifar10", root="/nonexistent", image_size=32), batch_size=2)
    assert zeros.shape == (2, 3, 32, 32)  # no files are read for a dry run
    with pytest.raises(FeatdistillError, match="in_chans"):
        sample_batch(Data(in_chans=2))


def test_problems_and_invalid_settings():
    assert Data().problems() == []
    (msg,) = Data(name="digts").problems()
    assert "'digits'" in msg
    assert len(Data(image_size=2).problems()) == 1
    assert len(Data(in_chans=2).problems()) == 1
    assert len(Data(val_size=1.0, test_size=0.0).problems()) == 2
    (msg,) = Data(name="cifar10").problems()
    assert "data.root" in msg and "cifar-10-batches-py" in msg
    with pytest.raises(FeatdistillError, match="digits"):
        make_loaders(Data(name="digts"), batch_size=8)
    with pytest.raises(FeatdistillError, match="rank"):
        make_loaders(Data(), batch_size=8, rank=2, world_size=2)
    with pytest.raises(FeatdistillError, match="batch_size"):
        make_loaders(Data(), batch_size=0)


# ---------------------------------------------------------------- CIFAR (tiny fake pickle files)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _fake_cifar10(root, per_batch=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for i in range(1, 6):
        labels = [(j + i) % 10 for j in range(per_batch)]
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        _dump(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "labels": labels, "data": pixels})
        train += labels
    test_pixels = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [j % 10 for j in range(n_test)]
    _dump(folder / "test_batch", {"batch_label": "test", "labels": test_labels, "data": test_pixels})
    _dump(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)]})
    return train, test_labels, test_pixels


def test_cifar10_fake_pickles(tmp_path):
    train_labels, test_labels, test_pixels = _fake_cifar10(tmp_path)
    loaders = make_loaders(Data(name="cifar10", root=str(tmp_path), image_size=32), batch_size=8)
    assert loaders.num_classes == 10
    assert len(loaders.train.dataset) + len(loaders.val.dataset) == 100 and len(loaders.val.dataset) == 15
    x, y = next(iter(loaders.train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    ys = torch.cat([_items(loaders.train)[1], _items(loaders.val)[1]])
    assert sorted(ys.tolist()) == sorted(train_labels)
    x_test, y_test = _items(loaders.test)
    assert y_test.tolist() == test_labels  # test order is the file's order
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    expected = (torch.from_numpy(test_pixels).view(-1, 3, 32, 32).float() / 255 - mean) / std
    assert torch.allclose(x_test, expected, atol=1e-5)  # [N, 3072] is channel-major RGB planes

    small = make_loaders(Data(name="cifar10", root=str(tmp_path), image_size=16, in_chans=1), batch_size=4)
    x, _ = next(iter(small.train))
    assert x.shape == (4, 1, 16, 16) and x.dtype == torch.float32
    # the folder itself works as root too
    direct = make_loaders(Data(name="cifar10", root=str(tmp_path / "cifar-10-batches-py"), image_size=32), 8)
    assert torch.equal(_items(direct.test)[0], x_test)


def test_cifar100_fake_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    fine = [j % 100 for j in range(300)]
    _dump(folder / "train", {"data": rng.integers(0, 256, (300, 3072), dtype=np.uint8), "fine_labels": fine,
                             "coarse_labels": [f // 5 for f in fine]})
    test_fine = [99 - j for j in range(10)]
    _dump(folder / "test", {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "fine_labels": test_fine,
                            "coarse_labels": [f // 5 for f in test_fine]})
    _dump(folder / "meta", {"fine_label_names": [f"f{k}" for k in range(100)]})
    loaders = make_loaders(Data(name="cifar100", root=str(tmp_path), image_size=32), batch_size=10)
    assert loaders.num_classes == 100
    assert _items(loaders.test)[1].tolist() == test_fine  # fine labels, not coarse
    val_labels = _items(loaders.val)[1]
    assert len(val_labels) == 100 and set(val_labels.tolist()) == set(range(100))  # stratified: one per class
    x, y = next(iter(loaders.train))
    assert x.shape == (10, 3, 32, 32) and y.dtype == torch.int64


def test_missing_cifar_files_raise_with_the_fix(tmp_path):
    with pytest.raises(FeatdistillError) as info:
        make_loaders(Data(name="cifar10", root=str(tmp_path), image_size=32), batch_size=8)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg

    _fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FeatdistillError, match="test_batch"):
        make_loaders(Data(name="cifar10", root=str(tmp_path), image_size=32), batch_size=8)
    with pytest.raises(FeatdistillError, match="cifar-100-python.tar.gz"):
        make_loaders(Data(name="cifar100", root=str(tmp_path)), batch_size=8)


# ---------------------------------------------------------------- ImageFolder (tiny PNG folders)


def _write_pngs(root, classes=("ant", "bee", "cat"), per_class=4, size=(10, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_imagefolder_without_val_splits_train(tmp_path):
    _write_pngs(tmp_path / "train")
    loaders = make_loaders(Data(name="imagefolder", root=str(tmp_path), image_size=16), batch_size=4)
    assert loaders.num_classes == 3
    assert len(loaders.train.dataset) + len(loaders.val.dataset) == 12
    assert sorted(_items(loaders.val)[1].tolist()) == [0, 1, 2]  # stratified: one of each class
    assert torch.equal(_items(loaders.test)[0], _items(loaders.val)[0])  # no test/: test = val
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6  # Normalize(0.5, 0.5)
    grey = make_loaders(Data(name="imagefolder", root=str(tmp_path), image_size=8, in_chans=1), batch_size=4)
    assert next(iter(grey.val))[0].shape == (3, 1, 8, 8)


def test_imagefolder_with_val_and_test(tmp_path):
    _write_pngs(tmp_path / "train")
    _write_pngs(tmp_path / "val", per_class=2)
    _write_pngs(tmp_path / "test", per_class=1)
    loaders = make_loaders(Data(name="imagefolder", root=str(tmp_path), image_size=16, in_chans=1), batch_size=4)
    sizes = [len(loaders.train.dataset), len(loaders.val.dataset), len(loaders.test.dataset)]
    assert sizes == [12, 6, 3]
    assert _items(loaders.test)[1].tolist() == [0, 1, 2]
    x, _ = next(iter(loaders.train))
    assert x.shape == (4, 1, 16, 16)


def test_imagefolder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FeatdistillError) as info:
        make_loaders(Data(name="imagefolder", root=str(missing)), batch_size=4)
    assert str(missing) in str(info.value) and "train/<class>" in str(info.value)

    _write_pngs(tmp_path / "train")
    _write_pngs(tmp_path / "val", classes=("ant", "bee", "dog"), per_class=1)
    with pytest.raises(FeatdistillError) as info:
        make_loaders(Data(name="imagefolder", root=str(tmp_path)), batch_size=4)
    assert "'cat'" in str(info.value) and "'dog'" in str(info.value)


def test_a_lone_last_sample_is_dropped_not_fed_to_batchnorm():
    n = len(make_loaders(Data(), batch_size=64).train.dataset)
    lone = make_loaders(Data(), batch_size=n - 1)  # n = (n - 1) + 1: a last batch of one image
    assert [len(y) for _, y in lone.train] == [n - 1] and len(lone.train) == 1
    assert make_loaders(Data(), batch_size=64).train.drop_last is False  # any other remainder is kept
