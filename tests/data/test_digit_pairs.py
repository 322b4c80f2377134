"""featdistill.data.digit_pairs: the harder embedded benchmark, two real digits side by side, 100 classes."""

from __future__ import annotations

import torch

from featdistill.data import Data, make_loaders
from featdistill.data.digit_pairs import CLASSES, TEST_SIZE, TRAIN_SIZE, VAL_SIZE, compose, digit_pairs


def _digits(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` distinct random 8x8 'digits' with labels cycling 0..9."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 10


def _source(half: torch.Tensor, x: torch.Tensor) -> int:
    """The index of the digit in ``x`` [N, 1, 8, 8] that ``half`` [1, 8, 8] is a copy of, or -1."""
    hits = [i for i in range(len(x)) if torch.equal(x[i], half)]
    return hits[0] if hits else -1


def test_compose_places_both_digits_and_labels_the_pair():
    x, y = _digits()
    images, labels = compose(x, y, 200, torch.Generator().manual_seed(0))
    assert images.shape == (200, 1, 16, 16) and labels.shape == (200,)
    assert labels.min() >= 0 and labels.max() < CLASSES
    assert len(labels.unique()) > 80  # uniform over the 100 pairs
    border = images.clone()
    border[:, :, 4:12] = 0
    assert not border.any()  # nothing outside rows 4-11
    for image, label in zip(images[:50], labels[:50]):
        left, right = _source(image[:, 4:12, :8], x), _source(image[:, 4:12, 8:], x)
        assert left >= 0 and right >= 0, "each half is an unmodified source digit"
        assert (y[left].item(), y[right].item()) == divmod(label.item(), 10)


def test_splits_draw_only_from_their_own_digits_and_are_normalised_by_train():
    x, y = _digits(60)
    splits = (torch.arange(0, 30), torch.arange(30, 45), torch.arange(45, 60))
    parts, augment = digit_pairs(Data(name="digit_pairs", image_size=16, in_chans=1), x, y, splits)
    assert [len(p) for p in parts] == [TRAIN_SIZE, VAL_SIZE, TEST_SIZE]
    assert augment.pad == 2
    train_x = parts[0].tensors[0]
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-3
    # the train composites come first from a generator seeded 0, so they can be rebuilt to undo the normalisation
    raw_train = compose(x[splits[0]], y[splits[0]], TRAIN_SIZE, torch.Generator().manual_seed(0))[0]
    mean, std = raw_train.mean(), raw_train.std()
    for part, idx in zip(parts, splits):
        for image in part.tensors[0][:20] * std + mean:
            for half in (image[:, 4:12, :8], image[:, 4:12, 8:]):
                gap = (x[idx] - half).abs().flatten(1).amax(1)
                assert gap.min() < 1e-5, "a half that is not one of this split's own digits"


def test_loaders_sizes_classes_and_resize():
    loaders = make_loaders(Data(name="digit_pairs", image_size=32), batch_size=16)
    assert loaders.num_classes == 100
    assert [len(loaders.train.dataset), len(loaders.val.dataset), len(loaders.test.dataset)] == \
        [TRAIN_SIZE, VAL_SIZE, TEST_SIZE]
    x, y = next(iter(loaders.test))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated
