"""CRD (contrastive representation distillation): the NCE value and the bank update against loop-by-loop float64
versions of the paper's formulas, Z estimated once, negatives, index errors, tiny batches, any widths, float32
under autocast, exact resume from a state_dict, a Distiller step and a one-epoch run with num_samples filled in."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from featdistill import Distiller, FeatdistillError, LogitKD, Pair, ShapeError
from featdistill.losses import CRD, LOSSES, build_loss

N, DS, DT, FEAT, K = 20, 8, 12, 6, 5


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CRD(DS, DT, kwargs.pop("num_samples", N), **{"feat_dim": FEAT, "nce_k": K, **kwargs})


def feats(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, DS, generator=g), torch.randn(b, DT, generator=g)


def draws(b=4, seed=2):
    """Distinct positives and explicit negatives ``[B, K]`` (never the positive, repeats allowed)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(N, generator=g)[:b]
    neg = torch.randint(0, N, (b, K), generator=g)
    neg = torch.where(neg == index[:, None], (neg + 1) % N, neg)
    return index, neg


# -- an independent reference: plain Python floats, explicit loops ---------------------------------------------
def vec(x):
    return [float(v) for v in x]


def unit(v):
    norm = math.sqrt(sum(a * a for a in v))
    return [a / norm for a in v]


def embed(linear, x):
    w, b = linear.weight.tolist(), linear.bias.tolist()
    return [unit([sum(wi * xi for wi, xi in zip(w[o], vec(row))) + b[o] for o in range(len(w))]) for row in x]


def exp_scores(anchors, bank, rows, t):
    return [[math.exp(sum(a * m for a, m in zip(anchor, bank[j])) / t) for j in row]
            for anchor, row in zip(anchors, rows)]


def ref_nce(scores, z, n, eps=1e-7):
    """-1/B sum_i [log(P0 / (P0 + K/N + eps)) + sum_k log((K/N) / (Pk + K/N + eps))], P = exp score / Z."""
    total = 0.0
    for row in scores:
        p = [v / z for v in row]
        noise = (len(p) - 1) / n
        total += math.log(p[0] / (p[0] + noise + eps))
        for pk in p[1:]:
            total += math.log(noise / (pk + noise + eps))
    return -total / len(scores)


def ref_crd(loss, s_x, t_x, index, neg, z=None):
    """The loss, both Z (given, or estimated as N * the mean exp score) and both banks after the update."""
    s, t = embed(loss.embed_s, s_x), embed(loss.embed_t, t_x)
    bank_s, bank_t = loss.bank_s.tolist(), loss.bank_t.tolist()
    rows = [[int(i)] + [int(j) for j in r] for i, r in zip(index, neg)]
    h_s = exp_scores(s, bank_t, rows, loss.nce_t)  # student anchor against the teacher's bank
    h_t = exp_scores(t, bank_s, rows, loss.nce_t)
    if z is None:
        z = [N * sum(map(sum, h)) / sum(map(len, h)) for h in (h_s, h_t)]
    value = ref_nce(h_s, z[0], N) + ref_nce(h_t, z[1], N)
    m = loss.nce_mom
    for bank, emb in ((bank_s, s), (bank_t, t)):
        for i, e in zip(index.tolist(), emb):
            bank[i] = unit([m * old + (1 - m) * new for old, new in zip(bank[i], e)])
    return value, z, bank_s, bank_t


def close(tensor, ref, tol=1e-5):
    return torch.allclose(tensor, torch.tensor(ref, dtype=tensor.dtype), rtol=tol, atol=tol)


# -- the formula -----------------------------------------------------------------------------------------------
def test_nce_value_z_and_momentum_update_match_loops():
    loss = make()
    s_x, t_x = feats()
    index, neg = draws()
    value, z, bank_s, bank_t = ref_crd(loss, s_x, t_x, index, neg)
    untouched = [i for i in range(N) if i not in index.tolist()]
    before = loss.bank_s[untouched].clone(), loss.bank_t[untouched].clone()
    out = loss(s_x, t_x, index=index, negatives=neg)
    assert out.dim() == 0 and out.dtype == torch.float32
    assert math.isclose(out.item(), value, rel_tol=1e-5)
    assert close(loss.z, z)
    # only the batch's rows move: m * old + (1 - m) * new, renormalised
    assert close(loss.bank_s, bank_s) and close(loss.bank_t, bank_t)
    assert torch.equal(loss.bank_s[untouched], before[0]) and torch.equal(loss.bank_t[untouched], before[1])
    assert torch.allclose(loss.bank_s.norm(dim=1)[index], torch.ones(len(index)))


def test_z_is_estimated_once_then_fixed():
    loss = make()
    assert loss.z.tolist() == [-1.0, -1.0]
    s_x, t_x = feats()
    index, neg = draws()
    loss(s_x, t_x, index=index, negatives=neg)
    z = loss.z.clone()
    assert (z > 0).all()
    s2, t2 = feats(b=3, seed=5)
    index2, neg2 = draws(b=3, seed=6)
    value, z_used, bank_s, _ = ref_crd(loss, s2, t2, index2, neg2, z=z.tolist())
    out = loss(s2, t2, index=index2, negatives=neg2)
    assert torch.equal(loss.z, z) and z_used == z.tolist()
    assert math.isclose(out.item(), value, rel_tol=1e-5) and close(loss.bank_s, bank_s)


def test_eval_mode_reads_the_memory_without_moving_it():
    loss = make().eval()
    s_x, t_x = feats()
    index, neg = draws()
    banks = loss.bank_s.clone(), loss.bank_t.clone()
    value = ref_crd(loss, s_x, t_x, index, neg)[0]  # Z from this batch alone
    assert math.isclose(loss(s_x, t_x, index=index, negatives=neg).item(), value, rel_tol=1e-5)
    assert loss.z.tolist() == [-1.0, -1.0]
    assert torch.equal(loss.bank_s, banks[0]) and torch.equal(loss.bank_t, banks[1])


def test_defaults_bank_init_and_negative_count():
    loss = build_loss("crd", (32,), (64,), {"num_samples": 50000})
    assert (loss.feat_dim, loss.nce_k, loss.nce_t, loss.nce_mom) == (128, 16384, 0.07, 0.5)
    stdv = 1 / math.sqrt(128 / 3)
    assert loss.bank_s.shape == loss.bank_t.shape == (50000, 128)
    assert loss.bank_s.abs().max() <= stdv and loss.bank_s.abs().max() > 0.99 * stdv
    assert abs(loss.bank_s.norm(dim=1).mean().item() - 1.0) < 0.01  # rows start near unit norm
    assert build_loss("crd", (3,), (3,), {"num_samples": 100}).nce_k == 99  # capped at N - 1
    assert LOSSES.get("crd") is CRD and CRD.needs_index and CRD.relational and not CRD.channel_free


def test_negatives_are_uniform_over_the_other_samples():
    torch.manual_seed(0)
    loss = CRD(4, 4, num_samples=5, feat_dim=3)  # nce_k capped at 4
    index = torch.tensor([0, 2, 4])
    neg = loss.sample_negatives(torch.tensor([0, 2, 4]).repeat(2000))
    assert neg.shape == (6000, 4) and neg.dtype == torch.int64
    assert (neg != index.repeat(2000)[:, None]).all()  # never the positive
    counts = torch.bincount(neg[0::3].flatten(), minlength=5)  # rows whose positive is 0
    assert counts[0] == 0 and (counts[1:] - 2000).abs().max() < 200  # 8000 draws over 4 others


def test_sampled_negatives_give_the_same_loss_as_passing_them():
    torch.manual_seed(3)
    a, b = make(), make()
    s_x, t_x = feats()
    index = torch.tensor([1, 5, 9, 19])
    torch.manual_seed(7)
    out = a(s_x, t_x, index=index)
    torch.manual_seed(7)
    neg = b.sample_negatives(index)
    assert torch.equal(out, b(s_x, t_x, index=index, negatives=neg))


# -- errors ----------------------------------------------------------------------------------------------------
def test_index_errors_name_num_samples_and_the_fix():
    loss = make()
    s_x, t_x = feats()
    for bad in (torch.tensor([0, 1, 2, N]), torch.tensor([0, -1, 2, 3])):
        with pytest.raises(FeatdistillError, match=rf"num_samples={N}.*Set loss_kwargs num_samples"):
            loss(s_x, t_x, index=bad)
    with pytest.raises(FeatdistillError, match="needs each sample's dataset index"):
        loss(s_x, t_x)
    with pytest.raises(ShapeError, match="integer dataset indices"):
        loss(s_x, t_x, index=torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="batch sizes differ"):
        loss(s_x, t_x[:3], index=torch.arange(4))
    with pytest.raises(FeatdistillError, match=rf"num_samples={N}"):
        loss(s_x, t_x, index=torch.arange(4), negatives=torch.full((4, 2), N))
    assert loss.z.tolist() == [-1.0, -1.0]  # a rejected call changes nothing


def test_building_without_num_samples_or_with_bad_settings_is_a_clear_error():
    with pytest.raises(FeatdistillError, match=r"needs their number.*loss_kwargs=dict\(num_samples="):
        build_loss("crd", (8,), (12,))
    with pytest.raises(FeatdistillError, match="num_samples must be .* >= 2.*nce_t .* must be > 0"):
        build_loss("crd", (8,), (12,), {"num_samples": 1, "nce_t": 0})
    with pytest.raises(FeatdistillError, match="nce_mom"):
        build_loss("crd", (8,), (12,), {"num_samples": 10, "nce_mom": 1.0})
    teacher, student = tiny_cnn(16, 32), tiny_cnn(8, 12)
    with pytest.raises(FeatdistillError, match="needs their number"):  # from the API, at build time
        Distiller(teacher, student, [Pair("4", "4", loss="crd")], sample_input=torch.zeros(2, 3, 8, 8))
    with pytest.raises(FeatdistillError, match="loss_kwargs"):
        Distiller(teacher, student, [Pair("4", "4", loss="crd", loss_kwargs=dict(num_samples=8, nce_kk=3))],
                  sample_input=torch.zeros(2, 3, 8, 8))


# -- shapes, tiny batches, precision ---------------------------------------------------------------------------
def test_batch_of_two_is_finite_and_trains_the_student_and_both_heads():
    loss = make()
    s_x, t_x = feats(b=2)
    s_x.requires_grad_()
    t_x.requires_grad_()
    out = loss(s_x, t_x, index=torch.tensor([3, 11]))
    out.backward()
    assert torch.isfinite(out) and out.item() > 0
    assert torch.isfinite(s_x.grad).all() and s_x.grad.abs().sum() > 0
    assert t_x.grad is None  # the teacher's features are a fixed target
    for head in (loss.embed_s, loss.embed_t):  # the teacher's head trains too, as in the paper
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in loss.buffers())


def test_widths_and_trailing_shapes_may_differ():
    torch.manual_seed(0)
    loss = build_loss("crd", (3, 5, 5), (16, 2, 2), {"num_samples": 10, "feat_dim": 4})
    assert (loss.embed_s.in_features, loss.embed_t.in_features, loss.embed_s.out_features) == (75, 64, 4)
    out = loss(torch.randn(4, 3, 5, 5), torch.randn(4, 16, 2, 2), index=torch.tensor([0, 3, 6, 9]))
    assert torch.isfinite(out)
    tokens = build_loss("crd", (7, 12), (9, 24), {"num_samples": 10})
    assert torch.isfinite(tokens(torch.randn(3, 7, 12), torch.randn(3, 9, 24), index=torch.arange(3)))


def test_float32_math_under_autocast_and_half_inputs():
    s_x, t_x = feats()
    index, neg = draws()
    ref = make()(s_x, t_x, index=index, negatives=neg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make()(s_x, t_x, index=index, negatives=neg)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-5)
    assert make()(s_x.bfloat16(), t_x.half(), index=index, negatives=neg).dtype == torch.float32


# -- with the Distiller ----------------------------------------------------------------------------------------
def tiny_cnn(width, embed):
    """conv -> pool -> '4': the pre-logit embedding [B, embed] -> logits."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, embed), nn.ReLU(), nn.Linear(embed, 10))


def distiller(seed=0, n=16):
    torch.manual_seed(seed)
    teacher, student = tiny_cnn(16, 32), tiny_cnn(8, 12)
    pair = Pair("4", "4", loss="crd", weight=0.8, loss_kwargs=dict(num_samples=n, feat_dim=8, nce_k=6))
    return Distiller(teacher, student, [pair], kd=LogitKD(temperature=4.0), sample_input=torch.zeros(2, 3, 8, 8))


def data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_distiller_step_with_indices_no_adapter_and_trainable_heads():
    x, y = data()
    with distiller() as d:
        assert d.needs_index and [p.adapter_name for p in d.planned] == ["Identity"]
        assert "Identity (0 params)" in d.plan() and "loss=crd" in d.plan()
        assert d.planned[0].student_shape == (12,) and d.planned[0].teacher_shape == (32,)
        names = set(d.state_dict())
        assert {"feature_losses.0.bank_s", "feature_losses.0.bank_t", "feature_losses.0.z"} <= names
        heads = {n for n, _ in d.named_parameters() if n.startswith("feature_losses.0.embed_")}
        assert heads == {f"feature_losses.0.embed_{s}.{p}" for s in "st" for p in ("weight", "bias")}
        with pytest.raises(FeatdistillError, match="needs each sample's dataset index"):
            d(x[:4], y[:4])
        out = d(x[:4], y[:4], torch.tensor([0, 5, 10, 15]))
        assert torch.isfinite(out["loss"]) and out["feat/4~4"].item() > 0
        out["loss"].backward()
        crd = d.feature_losses[0]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crd.parameters())
        assert d.student[4].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in d.teacher.parameters())
        assert (crd.z > 0).all()


def step(d, opt, x, y, index):
    out = d(x, y, index)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    return out["loss"].detach()


def test_resume_from_a_state_dict_is_exact():
    """k steps, save (module, optimizer, RNG), one more step; a fresh Distiller loaded from the save takes the very
    same step: equal loss, banks, Z and weights."""
    x, y = data()
    batches = [torch.tensor(b) for b in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [3, 7, 9, 2])]
    with distiller(seed=0) as d:
        opt = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9)
        for b in batches[:4]:
            step(d, opt, x[b], y[b], b)
        saved = copy.deepcopy({"module": d.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()})
        b = batches[4]
        loss = step(d, opt, x[b], y[b], b)
        after = {k: v.clone() for k, v in d.state_dict().items()}
    with distiller(seed=123) as fresh:  # other weights, other banks, Z unset: all replaced by the load
        opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
        assert not torch.equal(fresh.feature_losses[0].bank_s, saved["module"]["feature_losses.0.bank_s"])
        fresh.teacher.load_state_dict(d.teacher.state_dict())  # frozen, outside state_dict: the runner reloads it
        fresh.load_state_dict(saved["module"])
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])  # the trainer's checkpoint restores it (negatives are drawn from it)
        assert torch.equal(step(fresh, opt, x[b], y[b], b), loss)
        state = fresh.state_dict()
        assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in after)
        assert (state["feature_losses.0.z"] > 0).all()


# -- the runner ------------------------------------------------------------------------------------------------
def test_runner_fills_num_samples_and_trains_one_epoch(tmp_path, monkeypatch, capsys):
    from featdistill.data import make_loaders
    from featdistill.recipe import load_recipe
    from featdistill.run import main

    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    base = Path(__file__).resolve().parents[2] / "recipes" / "resnet_to_resnet.py"
    recipe = tmp_path / "crd.py"
    recipe.write_text(  # an untrained teacher as small as the student: the run checks plumbing, not accuracy
        "from dataclasses import replace\nfrom featdistill import Pair\nfrom featdistill.recipe import load_recipe\n"
        f"base = load_recipe({str(base)!r})\n"
        "recipe = replace(base, teacher=replace(base.student, pretrain=None), pairs=[Pair('global_pool', "
        "'global_pool', loss='crd', weight=0.8, loss_kwargs=dict(feat_dim=16))])\n")
    tiny = ["--set", "train.epochs=1", "--set", "data.image_size=8", "--set", "train.batch_size=128", "--quiet"]
    assert main([str(recipe), *tiny, "--dry-run"]) == 0
    assert "loss=crd" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main([str(recipe), *tiny, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and all(math.isfinite(r["feat/global_pool~global_pool"]) for r in steps)
    state = torch.load(out / "checkpoint.pt", weights_only=True)["module"]
    train = make_loaders(load_recipe(recipe).data, 128).train.dataset
    assert state["feature_losses.0.bank_s"].shape == (len(train), 16)  # one row per training sample
    assert (state["feature_losses.0.z"] > 0).all()
