"""The teacher-output cache: top-k logits keep the soft targets exact where they are kept, the cached path gives the
live teacher's loss terms for every kind of pair, and a changed file or key is detected, never used."""

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from featdistill import Distiller, LogitKD, Pair
from featdistill.distill.cached_teacher import CachedTeacher, decode, encode, entries_of, fill
from featdistill.distill.output_store import DamagedCache, OutputStore, StoreWriter, file_name
from featdistill.distill.teachers import TeacherOutputs
from featdistill.errors import FeatdistillError


def test_top_k_logits_keep_the_kept_soft_targets_and_the_rest_mass():
    z = torch.randn(4, 3, 50, generator=torch.Generator().manual_seed(0)) * 3  # [B, T, V], as an LM's
    temperature, k = 2.5, 5
    enc = encode(TeacherOutputs(z, []), top_k=k, temperature=temperature)
    assert set(enc) == {"logits.top", "logits.index", "logits.rest"} and enc["logits.index"].dtype == torch.int32
    back = decode(enc, 0, 50).logits
    p, q = F.softmax(z / temperature, -1), F.softmax(back / temperature, -1)
    top = z.topk(k, -1).indices
    torch.testing.assert_close(q.gather(-1, top), p.gather(-1, top))  # the kept classes: exact
    kept = torch.zeros_like(p, dtype=torch.bool).scatter(-1, top, True)
    torch.testing.assert_close((q * ~kept).sum(-1), (p * ~kept).sum(-1))  # the rest: the same total mass ...
    rest = q[~kept].view(4, 3, 45)
    torch.testing.assert_close(rest, rest[..., :1].expand_as(rest))  # ... shared equally
    assert not torch.allclose(back, z)  # the dropped logits themselves are not kept
    whole = encode(TeacherOutputs(z, []), top_k=50, temperature=temperature)  # k = V: the logits as they are
    assert set(whole) == {"logits"} and torch.equal(decode(whole, 0, 50).logits, z)


class CNN(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.layer1(self.stem(x)))


def vit(depth: int, dim: int) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=depth,
                             embed_dim=dim, num_heads=2, num_classes=10)


CASES = {  # teacher, student, pairs: maps (two losses), tokens, attention maps, a multi-layer (ReviewKD) term
    "maps": (lambda: CNN(16), lambda: CNN(8), [Pair("layer1", "layer1", loss="mse"),
                                               Pair("stem", "stem", loss="at", name="at")]),
    "tokens+attention": (lambda: vit(3, 32), lambda: vit(2, 16), [
        Pair("blocks.1", "blocks.2", loss="mse", normalize="teacher"),
        Pair("blocks.0.attn", "blocks.1.attn", capture="attention", loss="attention_kl", name="attn")]),
    "multi-layer": (lambda: CNN(16), lambda: CNN(8), [Pair(("stem", "layer1"), ("stem", "layer1"),
                                                           loss="reviewkd")]),
}


def _batches(n: int = 12, size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)
    index = torch.randperm(n, generator=g)  # rows are filled in any order
    return [(x[index[i:i + size]], y[index[i:i + size]], index[i:i + size]) for i in range(0, n, size)]


def _filled(tmp_path, distiller, views, dtype="float16", top_k=None):
    out = distiller.teacher_source(distiller._batch(*views[0][1][0]), need_logits=True)
    entries = entries_of(encode(out, top_k, 4.0), dtype)
    writer = StoreWriter(tmp_path / "tmp", tmp_path / "store", entries, 12, len(views), {"k": 1})
    fill(writer, distiller.teacher_source, views, True, top_k, 4.0, torch.device("cpu"))
    return OutputStore.open(writer.commit(), {"k": 1})


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("dtype,tol", [("float16", 3e-3), ("float32", 1e-6)])
def test_the_cached_path_gives_the_live_loss_terms(case, dtype, tol, tmp_path):
    make_teacher, make_student, pairs = CASES[case]
    torch.manual_seed(0)
    teacher, student = make_teacher(), make_student()
    views = [(0, _batches(seed=0)), (1, _batches(seed=1))]  # two views: the same indices, other images
    distiller = Distiller(teacher, student, pairs, kd=LogitKD(), sample_input=views[0][1][0][0]).eval()
    store = _filled(tmp_path, distiller, views, dtype)
    live = {}
    for view, batches in views:
        for i, (x, y, index) in enumerate(batches):
            with torch.no_grad():
                live[view, i] = distiller(x, y, index)
    distiller.use_teacher(CachedTeacher(store, teacher, num_logits=10))
    for view, batches in views:
        distiller.teacher_source.set_epoch(view + 2 * 5)  # epoch 10 or 11: view 0 or 1
        for i, (x, y, index) in enumerate(batches):
            with torch.no_grad():
                cached = distiller(x, y, index)
            assert cached.keys() == live[view, i].keys()
            for name, value in cached.items():
                torch.testing.assert_close(value, live[view, i][name], rtol=tol, atol=tol, msg=name)
    # a view's rows are not another view's: the wrong view would give other terms
    distiller.teacher_source.set_epoch(1)
    x, y, index = views[0][1][0]
    with torch.no_grad():
        assert not torch.allclose(distiller(x, y, index)["loss"], live[0, 0]["loss"])
    distiller.close()


def test_the_cache_is_read_by_index_and_says_so_without_one(tmp_path):
    make_teacher, make_student, pairs = CASES["maps"]
    teacher, student = make_teacher(), make_student()
    views = [(0, _batches())]
    distiller = Distiller(teacher, student, pairs, sample_input=views[0][1][0][0])
    distiller.use_teacher(CachedTeacher(_filled(tmp_path, distiller, views), teacher, 10))
    teacher.forward = None  # the cached path never calls the teacher: this would raise if it did
    x, y, index = views[0][1][1]
    assert torch.isfinite(distiller(x, y, index)["loss"])
    with pytest.raises(FeatdistillError, match="read by sample index"):
        distiller(x, y)


def _store(tmp_path):
    make_teacher, make_student, pairs = CASES["maps"]
    teacher, student = make_teacher(), make_student()
    views = [(0, _batches())]
    distiller = Distiller(teacher, student, pairs, sample_input=views[0][1][0][0])
    return _filled(tmp_path, distiller, views).root


def test_a_changed_file_is_detected(tmp_path):
    root = _store(tmp_path)
    path = root / file_name(0, "pair0")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one byte of one value
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedCache, match="pair0.npy changed after it was written"):
        OutputStore.open(root, {"k": 1})


def test_a_missing_file_another_key_or_a_wrong_shape_is_detected(tmp_path):
    root = _store(tmp_path)
    with pytest.raises(DamagedCache, match="another key"):
        OutputStore.open(root, {"k": 2})
    np.save(root / file_name(0, "logits"), np.zeros((3, 10), dtype=np.float16))
    with pytest.raises(DamagedCache, match="has shape"):
        OutputStore.open(root, {"k": 1})
    (root / file_name(0, "logits")).unlink()
    with pytest.raises(DamagedCache, match="cannot be read"):
        OutputStore.open(root, {"k": 1})
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps(meta)[:-10])
    with pytest.raises(DamagedCache, match="meta.json cannot be read"):
        OutputStore.open(root, {"k": 1})


def test_an_unfinished_fill_is_not_committed(tmp_path):
    make_teacher, make_student, pairs = CASES["maps"]
    teacher, student = make_teacher(), make_student()
    distiller = Distiller(teacher, student, pairs, sample_input=torch.zeros(2, 3, 16, 16))
    out = distiller.teacher_source(distiller._batch(torch.zeros(2, 3, 16, 16)), need_logits=True)
    writer = StoreWriter(tmp_path / "tmp", tmp_path / "store", entries_of(encode(out), "float16"), 12, 1, {})
    fill(writer, distiller.teacher_source, [(0, _batches()[:2])], True, None, 4.0, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="4 cache rows were never written"):
        writer.commit()
    assert not (tmp_path / "store").exists()
