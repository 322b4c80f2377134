"""Augmentation views for a teacher-output cache: epoch ``e`` shows each sample as epoch ``e mod views`` did, in a new
order, and the view loaders that record the cache show exactly those images."""

import torch

from featdistill.data import Data, make_loaders, view_loaders


def _by_index(loaders, epoch: int) -> tuple[dict[int, torch.Tensor], list[int]]:
    loaders.set_epoch(epoch)
    images, order = {}, []
    for x, _, index in loaders.train:
        for xi, i in zip(x, index.tolist()):
            images[i] = xi
            order.append(i)
    return images, order


def test_epochs_repeat_their_view_in_a_new_order():
    data = Data(val_size=0.5, test_size=0.25)
    loaders = make_loaders(data, 64, seed=3, with_index=True, views=2)
    told = []
    loaders.on_epoch.append(told.append)
    e0, order0 = _by_index(loaders, 0)
    e1, _ = _by_index(loaders, 1)
    e2, order2 = _by_index(loaders, 2)
    assert told == [0, 1, 2]
    common = sorted(set(e0) & set(e2))  # a lone last sample may be dropped in an epoch
    assert len(common) >= len(e0) - 1
    assert all(torch.equal(e0[i], e2[i]) for i in common)  # epoch 2 is view 0 ...
    assert order0 != order2  # ... in another order
    assert sum(not torch.equal(e0[i], e1[i]) for i in common) > len(common) // 2  # view 1 is other images
    plain = make_loaders(data, 64, seed=3, with_index=True)  # without views, epoch 2 is an epoch of its own
    p2, _ = _by_index(plain, 2)
    assert sum(not torch.equal(p2[i], e2[i]) for i in common) > len(common) // 2


def test_view_loaders_show_the_training_epochs_images():
    data = Data(val_size=0.5, test_size=0.25)
    loaders = make_loaders(data, 64, seed=3, with_index=True, views=2)
    recorded = view_loaders(data, 50, seed=3, views=2)
    assert [v for v, _ in recorded] == [0, 1]
    for view, loader in recorded:
        trained, _ = _by_index(loaders, view + 2)
        batches = list(loader)
        indices = torch.cat([i for _, _, i in batches])
        assert torch.equal(indices, torch.arange(len(loaders.train.dataset)))  # every sample, in dataset order
        images = torch.cat([x for x, _, _ in batches])
        assert all(torch.equal(images[i], trained[i]) for i in trained)
