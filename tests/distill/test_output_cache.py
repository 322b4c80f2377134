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
from featdistill.cli.teacher_outputs import stored_targets
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


def _filled(tmp_path, distiller, views, dtype="float16", top_k=None, targets=False):
    """A store of ``distiller``'s teacher outputs; ``targets``: pairs stored as their loss targets, as the runner
    stores them (cli/teacher_outputs.py)."""
    out = distiller.teacher_source(distiller._batch(*views[0][1][0]), need_logits=True)
    stored, make = stored_targets(distiller) if targets else ([False] * len(distiller.pairs), None)
    raw = encode(out, top_k, 4.0)
    encoded = encode(out._replace(features=make(out.features)), top_k, 4.0) if targets else raw
    extra = {"targets": stored, "raw_shapes": {n: list(raw[n].shape[1:]) for n in encoded
                                               if n.startswith("pair") and stored[int(n[4:].split(".")[0])]}}
    writer = StoreWriter(tmp_path / "tmp", tmp_path / "store", entries_of(encoded, dtype), 12, len(views), {"k": 1})
    fill(writer, distiller.teacher_source, views, True, top_k, 4.0, torch.device("cpu"), targets=make)
    return OutputStore.open(writer.commit(extra), {"k": 1})


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("dtype,tol", [("float16", 3e-3), ("float32", 1e-6)])
@pytest.mark.parametrize("targets", [False, True], ids=["features", "targets"])
def test_the_cached_path_gives_the_live_loss_terms(case, dtype, tol, targets, tmp_path):
    make_teacher, make_student, pairs = CASES[case]
    torch.manual_seed(0)
    teacher, student = make_teacher(), make_student()
    views = [(0, _batches(seed=0)), (1, _batches(seed=1))]  # two views: the same indices, other images
    distiller = Distiller(teacher, student, pairs, kd=LogitKD(), sample_input=views[0][1][0][0]).eval()
    store = _filled(tmp_path, distiller, views, dtype, targets=targets)
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


def test_targets_are_stored_in_place_of_features_and_a_new_plan_reads_the_captured_shapes(tmp_path):
    """What a stored target is: attention transfer's [H*W] map (not the [C, H, W] feature), a ViT pair's patch
    tokens layer-normalised (no class token); a Distiller planned from that cache alone (the warm path) builds the
    same adapters and gives the live loss terms."""
    torch.manual_seed(0)
    views = [(0, _batches())]
    maps = CASES["maps"]
    distiller = Distiller(maps[0](), maps[1](), maps[2], kd=LogitKD(), sample_input=views[0][1][0][0]).eval()
    store = _filled(tmp_path / "maps", distiller, views, "float32", targets=True)
    shapes = {e.name: e.shape for e in store.entries}
    assert shapes["pair1"] == (16 * 16,) and shapes["pair0"] == (16, 8, 8)  # the at map; mse keeps the feature
    teacher_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=2, depth=2,
                                      embed_dim=32, num_heads=2, num_classes=10)  # 1 + 8x8 tokens vs 1 + 4x4
    vit_distiller = Distiller(teacher_model, vit(2, 16), [Pair("blocks.1", "blocks.1", normalize="teacher")],
                              sample_input=views[0][1][0][0]).eval()
    tstore = _filled(tmp_path / "tokens", vit_distiller, views, "float32", targets=True)
    x, y, index = views[0][1][0]
    raw = vit_distiller.teacher_source(vit_distiller._batch(x, y, index)).features[0]
    source = CachedTeacher(tstore, teacher_model, 10)
    source.bind(vit_distiller.pairs)
    target = source(vit_distiller._batch(x, y, index)).features[0]
    assert raw.shape[1] == target.shape[1] + 1  # the class token is not stored
    torch.testing.assert_close(target, F.layer_norm(raw[:, 1:], raw.shape[-1:]), rtol=1e-5, atol=1e-5)

    live = {}
    with torch.no_grad():
        for i, (x, y, index) in enumerate(views[0][1]):
            live[i] = distiller(x, y, index)
    torch.manual_seed(1)
    warm = Distiller(CachedTeacher(store, None, 10), maps[1](), maps[2], kd=LogitKD(),
                     sample_input=views[0][1][0][0]).eval()
    warm.load_state_dict(distiller.state_dict())  # the same student and adapters: only the teacher's side differs
    with torch.no_grad():
        for i, (x, y, index) in enumerate(views[0][1]):
            for name, value in warm(x, y, index).items():
                torch.testing.assert_close(value, live[i][name], rtol=1e-5, atol=1e-5, msg=name)
