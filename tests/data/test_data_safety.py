"""Data files never run code, and bad data is a FeatdistillError naming the file and the fix: crafted, garbage and
truncated CIFAR pickles, CIFAR pickles in every format the real files come in, and a corrupt ImageFolder image."""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featdistill.data import Data, make_loaders
from featdistill.errors import FeatdistillError

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "resnet_to_resnet.py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _Reduce:
    """Pickles as ``func(*args)``: what a crafted file would make a plain ``pickle.load`` call."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _batch(n: int, seed: int, label_key: str = "labels", num_classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    labels = [(j + seed) % num_classes for j in range(n)]
    batch = {"batch_label": f"batch {seed}", label_key: labels, "data": rng.integers(0, 256, (n, 3072), np.uint8),
             "filenames": [f"img_{seed}_{j}.png".encode() for j in range(n)]}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [f // 5 for f in labels]
    return batch


def _py2_pickle(obj) -> bytes:
    """``obj`` as Python 2's cPickle writes it (protocol 2, str as byte strings, numpy 1.x array reduce)."""

    def enc(o) -> bytes:
        if isinstance(o, bytes | str):
            raw = o.encode("latin1") if isinstance(o, str) else o
            return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw
        if isinstance(o, int):
            return b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o)
        if isinstance(o, list):
            return b"](" + b"".join(enc(x) for x in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, np.ndarray):  # uint8, C order
            dtype = b"cnumpy\ndtype\n" + enc("u1") + b"K\x00K\x01\x87R(K\x03" + enc("|") + b"NNNJ\xff\xff\xff\xffJ" \
                    b"\xff\xff\xff\xffK\x00tb"
            shape = b"(" + b"".join(enc(d) for d in o.shape) + b"t"
            return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + enc("b") + b"\x87R(K\x01"
                    + shape + dtype + b"\x89" + enc(o.tobytes()) + b"tb")
        raise TypeError(type(o))

    return b"\x80\x02" + enc(obj) + b"."


def _write(path: Path, batch: dict, fmt: str) -> None:
    if fmt == "py2":
        path.write_bytes(_py2_pickle(batch))
        return
    if fmt == "bytes-keys":  # what pickle.load(f, encoding='bytes') gives, saved again
        batch = {k.encode(): v for k, v in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=int(fmt[-1]) if fmt.startswith("protocol") else 2))


def _cifar10(root: Path, fmt: str = "protocol2", n: int = 20) -> tuple[list[int], list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for i, name in enumerate(CIFAR10_FILES, 1):
        batch = _batch(n, i)
        _write(folder / name, batch, fmt)
        train += batch["labels"] if name != "test_batch" else []
    return train, batch["labels"]


def _cifar10_data(root: Path, **kw) -> Data:
    return Data(name="cifar10", root=str(root), image_size=32, **kw)


# ---------------------------------------------------------------- crafted, garbage and truncated CIFAR files


@pytest.mark.parametrize("attack", ["open", "os.system"])
def test_crafted_cifar_pickle_runs_no_code(tmp_path, attack):
    marker = tmp_path / "pwned"
    _cifar10(tmp_path / "data")
    evil = _Reduce(open, str(marker), "w") if attack == "open" else _Reduce(os.system, f"touch {marker}")
    path = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({"batch_label": "x", "labels": [0], "data": evil}, protocol=2))
    with pytest.raises(FeatdistillError) as info:
        make_loaders(_cifar10_data(tmp_path / "data"), 8)
    msg = str(info.value)
    assert str(path) in msg and "refused global" in msg and "cifar-10-python.tar.gz" in msg
    assert f"{evil.func.__module__}.{evil.func.__name__}" in msg  # the refused global, e.g. io.open, posix.system
    assert not marker.exists()


def test_crafted_cifar_pickle_through_the_cli_dry_run(tmp_path, monkeypatch, capsys):
    from featdistill.run import main  # here: the CLI imports the whole toolkit

    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    root = tmp_path / "data"
    _cifar10(root)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps(_Reduce(open, str(marker), "w")))
    code = main([str(RECIPE), "--dry-run", "--set", "data.name='cifar10'", "--set", f"data.root='{root}'",
                 "--set", "data.image_size=32"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and str(path) in err and "Traceback" not in err
    assert not marker.exists()


def test_codecs_encode_only_for_latin1(tmp_path):
    _cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"labels": [0], "data": _Reduce(codecs.encode, "x", "rot13")}, protocol=2))
    with pytest.raises(FeatdistillError, match="rot13") as info:
        make_loaders(_cifar10_data(tmp_path), 8)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not a dict", "no labels", "wrong size",
                                    "label range"])
def test_damaged_cifar_file_names_the_file(tmp_path, damage):
    _cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    good = path.read_bytes()
    batch = _batch(20, 3)
    bad = {
        "garbage": np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
        "no labels": pickle.dumps({"data": batch["data"]}, protocol=2),
        "wrong size": pickle.dumps({**batch, "data": batch["data"][:, :1000]}, protocol=2),
        "label range": pickle.dumps({**batch, "labels": [10] * 20}, protocol=2),
    }[damage]
    path.write_bytes(bad)
    with pytest.raises(FeatdistillError) as info:
        make_loaders(_cifar10_data(tmp_path), 8)
    msg = str(info.value)
    assert f"cannot read CIFAR-10 file {path}" in msg and "unmodified file from cifar-10-python.tar.gz" in msg
    if damage == "no labels":
        assert "'labels'" in msg


# ---------------------------------------------------------------- real-format CIFAR files still load


@pytest.mark.parametrize("fmt", ["py2", "protocol2", "protocol4", "protocol5", "bytes-keys"])
def test_real_format_cifar10_loads(tmp_path, fmt):
    train_labels, test_labels = _cifar10(tmp_path, fmt)
    loaders = make_loaders(_cifar10_data(tmp_path, augment=False), 8)
    assert loaders.num_classes == 10
    assert len(loaders.train.dataset) + len(loaders.val.dataset) == 100
    ds = loaders.test.dataset
    assert [ds[i][1] for i in range(len(ds))] == test_labels
    ys = [loader.dataset[i][1] for loader in (loaders.train, loaders.val) for i in range(len(loader.dataset))]
    assert sorted(ys) == sorted(train_labels)
    x, y = next(iter(loaders.train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the pixels are the file's: undo the normalisation of the first test image
    pixels = _batch(20, 6)["data"][0].reshape(3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    assert torch.equal((ds[0][0] * std + mean).mul(255).round().to(torch.uint8), torch.from_numpy(pixels))


@pytest.mark.parametrize("fmt", ["py2", "protocol2"])
def test_real_format_cifar100_loads(tmp_path, fmt):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write(folder / "train", _batch(300, 0, "fine_labels", 100), fmt)
    test = _batch(10, 7, "fine_labels", 100)
    _write(folder / "test", test, fmt)
    loaders = make_loaders(Data(name="cifar100", root=str(tmp_path), image_size=32), 10)
    assert loaders.num_classes == 100
    ds = loaders.test.dataset
    assert [ds[i][1] for i in range(len(ds))] == test["fine_labels"]  # fine labels, not coarse
    assert len(loaders.val.dataset) == 100
    x, y = next(iter(loaders.train))
    assert x.shape == (10, 3, 32, 32) and y.dtype == torch.int64


# ---------------------------------------------------------------- a corrupt ImageFolder image


def _folder_with_corrupt_png(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 1)):
        for c in ("ant", "bee"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    bad = root / "train" / "bee" / "9.png"
    bad.write_bytes(b"\x89PNG not really" + rng.integers(0, 256, 16, np.uint8).tobytes())
    return bad


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_image_names_the_file(tmp_path, num_workers):
    bad = _folder_with_corrupt_png(tmp_path)
    loaders = make_loaders(Data(name="imagefolder", root=str(tmp_path), image_size=8), 4, num_workers=num_workers)
    assert next(iter(loaders.val))[0].shape == (2, 3, 8, 8)  # the good files still load
    with pytest.raises(FeatdistillError) as info:
        for _ in loaders.train:
            pass
    msg = str(info.value)
    assert msg == (f"cannot read image {bad}: PIL cannot identify it as an image. Remove or replace the file (it "
                   "must be an image PIL can open), then run again.")  # from a worker too: no traceback text


def test_truncated_image_names_the_file(tmp_path):
    bad = _folder_with_corrupt_png(tmp_path)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
    bad.write_bytes(buf.getvalue()[:60])  # a valid header, then nothing
    loaders = make_loaders(Data(name="imagefolder", root=str(tmp_path), image_size=8), 4)
    with pytest.raises(FeatdistillError, match=f"cannot read image {bad}: .*Remove or replace the file"):
        for _ in loaders.train:
            pass
