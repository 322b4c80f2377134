"""Distiller: four architecture pairings, the frozen teacher, parameters, hooks, autocast, errors."""

import gc
import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from featdistill import Distiller, FeatdistillError, LogitKD, Pair, ShapeError, UnknownNameError, count_hooks

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])


def vit(depth=4, width=192, heads=3, patch=8, **kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=patch, depth=depth,
                             embed_dim=width, num_heads=heads, num_classes=10, **kw)


def deit(depth=2):
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=4,
                             depth=depth, embed_dim=96, num_heads=3, num_classes=10)


SETUPS = {
    "cnn->cnn": (lambda: torchvision.models.resnet18(num_classes=10),
                 lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
                 [Pair("features.3", "layer2"), Pair("features.8", "layer3", loss="attention_transfer")]),
    "timm cnn->cnn": (lambda: timm.create_model("resnet26", pretrained=False, num_classes=10),
                      lambda: timm.create_model("resnet10t", pretrained=False, num_classes=10),
                      [Pair("layer2", "layer2"), Pair("layer3", "layer3", loss="cosine")]),
    "vit->vit": (vit, deit, [Pair("blocks.0", "blocks.1"), Pair("blocks.1", "blocks.3", loss="cosine")]),
    "cnn->vit": (lambda: torchvision.models.resnet18(num_classes=10), deit,
                 [Pair("blocks.0", "layer2"), Pair("blocks.1", "layer3", loss="smooth_l1")]),
    "vit->cnn": (vit, lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
                 [Pair("features.3", "blocks.1"), Pair("features.8", "blocks.3", adapter="map_to_tokens")]),
}


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_few_sgd_steps_train_student_and_adapters_only(setup):
    torch.manual_seed(0)
    make_teacher, make_student, pairs = SETUPS[setup]
    teacher, student = make_teacher(), make_student()
    before = snapshot(teacher)
    distiller = Distiller(teacher, student, pairs, kd=LogitKD(temperature=4.0, alpha=0.5), sample_input=X[:2])
    distiller.train()
    teacher.train()  # a user flipping the teacher must not matter: forward puts it back in eval
    opt = torch.optim.SGD(distiller.parameters(), lr=0.01)
    student_start = snapshot(student)
    for _ in range(3):
        out = distiller(X, Y)
        assert set(out) == {"loss", "task", "kd"} | {f"feat/{p.key}" for p in pairs}
        assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
        opt.zero_grad()
        out["loss"].backward()
        for adapter in distiller.adapters:
            grads = [p.grad for p in adapter.parameters()]
            assert all(g is not None for g in grads)
            assert sum(g.abs().sum() for g in grads) > 0 or not grads
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        opt.step()
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "teacher changed"
    assert any(not torch.equal(student_start[k], v) for k, v in student.state_dict().items())
    distiller.close()
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_parameters_are_exactly_student_plus_adapters():
    teacher, student = vit(depth=2), deit()
    d = Distiller(teacher, student, [Pair("blocks.1", "blocks.1", adapter="tokens")], sample_input=X[:2])
    expected = {id(p) for p in student.parameters()} | {id(p) for p in d.adapters.parameters()}
    assert {id(p) for p in d.parameters()} == expected
    assert not any(k.startswith("teacher") for k in d.state_dict())
    assert all(not p.requires_grad for p in teacher.parameters())
    d.close()


def test_features_are_released_after_each_step():
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
    d = Distiller(teacher, student, [Pair("1", "1")], sample_input=X[:2])
    opt = torch.optim.SGD(d.parameters(), lr=0.01)

    def live_tensors():
        gc.collect()
        with warnings.catch_warnings():  # isinstance() touches deprecated torch.distributed aliases
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    counts = []
    for step in range(200):
        opt.zero_grad()
        d(X, Y)["loss"].backward()
        opt.step()
        if step in (19, 199):
            counts.append(live_tensors())
        assert all(not h.store for taps in (d.student_taps, d.teacher_source.taps) for h in taps.hooks.values())
    assert counts[1] <= counts[0]
    d.close()


def test_autocast_bf16_on_cpu():
    torch.manual_seed(0)
    d = Distiller(torchvision.models.resnet18(num_classes=10), deit(),
                  [Pair("blocks.1", "layer3")], sample_input=X[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(X, Y)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in d.adapters.parameters())
    d.close()


def test_export_student_is_plain_and_distilled_deit_averages_heads():
    student = deit()
    with Distiller(vit(depth=2), student, [Pair("blocks.0", "blocks.0")], sample_input=X[:2]) as d:
        s_out = d.student.train()(X)
        assert isinstance(s_out, tuple)  # class head and distillation head in training
        exported = d.export_student()
    assert exported is student and count_hooks(student) == 0 and not exported.training
    assert exported(X).shape == (4, 10)


def test_no_kd_and_no_labels_variants():
    teacher, student = vit(depth=2), vit(depth=1, width=96)
    with Distiller(teacher, student, [Pair("blocks.0", "blocks.1")], kd=None, sample_input=X[:2]) as d:
        assert set(d(X, Y)) == {"loss", "task", "feat/blocks.0~blocks.1"}
        assert "CE(s, y) + 1*mse(" in repr(d.combiner)
    with Distiller(teacher, student, kd=LogitKD(temperature=2.0)) as d:
        out = d(X)  # no labels: the soft term alone
        assert set(out) == {"loss", "kd"}


def test_combiner_repr_prints_formula_with_weights():
    with Distiller(vit(depth=2), deit(), [Pair("blocks.1", "blocks.1", weight=0.25, loss="cosine")],
                   kd=LogitKD(temperature=2.0, alpha=0.3), sample_input=X[:2]) as d:
        text = repr(d.combiner)
        assert text.startswith("loss = 0.3*CE(s, y) + 0.7*KL(t||s; T=2)*T^2 + 0.25*cosine(TokensToTokens(blocks.1)")
        assert "blocks.1 [66, 96] -> TokensToTokens" in d.plan()


def test_build_errors_list_every_problem_and_leave_no_hooks():
    teacher, student = vit(depth=2), deit()
    with pytest.raises(FeatdistillError) as err:
        Distiller(teacher, student, [Pair("blocks.0", "blocks.0", loss="mse2", weight=-1)],
                  kd=LogitKD(temperature=0, alpha=1.5))
    msg = str(err.value)
    for part in ("temperature must be > 0", "alpha must be in [0, 1]", "unknown loss 'mse2'", "'mse'",
                 "weight must be a number >= 0", "sample_input="):
        assert part in msg
    with pytest.raises(UnknownNameError, match="'blocks.9' not found in VisionTransformer"):
        Distiller(teacher, student, [Pair("blocks.0", "blocks.9")], sample_input=X[:2])
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_unbridgeable_pair_names_the_pair_and_shapes():
    teacher = nn.Sequential(nn.Flatten(0), nn.Linear(3 * 32 * 32 * 2, 10))  # 1-D output: no batch layout
    with pytest.raises(ShapeError, match="pair 'blocks.0~0'.*identity"):
        Distiller(teacher, deit(), [Pair("blocks.0", "0", adapter="identity")], sample_input=X[:2])
    assert count_hooks(teacher) == 0


def test_teacher_follows_to():
    teacher, student = vit(depth=1), vit(depth=1)
    d = Distiller(teacher, student)
    d.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64


def test_auto_weight_calibrates_to_the_ratio_then_freezes():
    torch.manual_seed(0)
    teacher, student = vit(depth=2), deit()
    pairs = [Pair("blocks.0", "blocks.0", weight="auto", auto_ratio=0.5), Pair("blocks.1", "blocks.1", weight=3.0)]
    d = Distiller(teacher, student, pairs, sample_input=X[:2], calibration_steps=4)
    assert "auto(ratio=0.5, calibrating 0/4)" in repr(d.combiner)
    opt = torch.optim.SGD(d.parameters(), lr=0.01)
    kd_sum = feat_sum = 0.0
    for _ in range(4):
        out = d(X, Y)
        kd_sum += out["kd"].item()
        feat_sum += out["feat/blocks.0~blocks.0"].item() / d.auto_weights.weights[0].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    weight = d.auto_weights.weights[0].item()
    assert abs(weight * feat_sum - 0.5 * kd_sum) < 1e-4 * max(1.0, kd_sum)
    assert d.auto_weights.weights[1].item() == 3.0
    d(X, Y)  # after calibration the weight is frozen
    assert d.auto_weights.weights[0].item() == weight and "[auto]" in repr(d.combiner)
    assert "auto_weights.weights" in d.state_dict()
    d.close()


def test_auto_pairs_by_relative_depth_show_in_the_plan():
    from featdistill import AutoPairs

    with Distiller(vit(depth=4), deit(depth=2), AutoPairs(loss="cosine"), sample_input=X[:2]) as d:
        assert [(p.student, p.teacher) for p in d.pairs] == [("blocks.0", "blocks.1"), ("blocks.1", "blocks.3")]
        plan = d.plan()
        assert "chosen automatically by relative depth" in plan and "student blocks.1 (2/2)" in plan
        assert all(p.loss == "cosine" for p in d.pairs)
        assert torch.isfinite(d(X, Y)["loss"])
    with Distiller(vit(depth=2), deit(depth=2), "auto", sample_input=X[:2]) as d:
        assert len(d.pairs) == 2
    problems = "\n".join(AutoPairs(n_pairs=0, loss="mse2", weight=-1).problems())
    assert "n_pairs must be an integer >= 1" in problems and "unknown loss 'mse2'" in problems
    assert "weight must be a number >= 0" in problems


def test_the_plan_says_what_the_loss_compares_when_it_is_not_the_teachers_shape():
    # vit: 16 patches of 8 px + a class token [17, 192]; deit: 64 patches of 4 px + class and distillation tokens
    on_student = dict(adapter_kwargs={"compare_on": "student"})
    pairs = [Pair("blocks.0", "blocks.1"), Pair("blocks.1", "blocks.3", **on_student)]
    with Distiller(vit(depth=4), deit(depth=2), pairs, sample_input=X[:2]) as d:
        lines = [line for line in d.plan().splitlines() if "-> TokensToTokens" in line]
        assert len(lines) == 2
        assert lines[0].endswith("-> blocks.1 [17, 192]  loss=mse weight=1 compared=[16, 192]")  # class token out
        assert lines[1].endswith("-> blocks.3 [17, 192]  loss=mse weight=1 compared=[64, 192]")  # student's grid
    with Distiller(vit(depth=4), vit(depth=2, width=96), [Pair("blocks.1", "blocks.3")], sample_input=X[:2]) as d:
        assert "compared=" not in d.plan()  # same tokens on both sides: nothing to say


def test_attention_pairs_recompute_maps_from_qkv_and_train():
    torch.manual_seed(0)
    teacher, student = vit(depth=2, heads=6), deit(depth=2)  # 6 vs 3 heads, 17 vs 66 tokens
    pairs = [Pair("blocks.1.attn", "blocks.1.attn", capture="attention", loss="attention_kl"),
             Pair("blocks.0.attn", "blocks.0.attn", capture="value_relation", loss="value_relation_kl")]
    with Distiller(teacher, student, pairs, sample_input=X[:2]) as d:
        assert "blocks.1.attn [3, 66, 66] -> AttentionAdapter" in d.plan()
        out = d(X, Y)
        assert out["feat/blocks.1.attn~blocks.1.attn"] > 0
        out["loss"].backward()
        assert student.blocks[1].attn.qkv.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for p in d.adapters.parameters())
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_distiller_copies_only_captures_that_inplace_ops_would_overwrite():
    teacher, student = torchvision.models.resnet18(num_classes=10), torchvision.models.resnet18(num_classes=10)
    seen = {}

    def recording_mse(s, t):
        seen["student_min"], seen["teacher_min"] = s.min().item(), t.min().item()
        return torch.nn.functional.mse_loss(s, t)

    pairs = [Pair("bn1", "bn1", loss=recording_mse, adapter="identity"), Pair("layer1", "layer1")]
    with Distiller(teacher, student, pairs, sample_input=X[:2]) as d:
        student_hooks, teacher_hooks = (next(iter(taps.hooks.values())) for taps in (d.student_taps,
                                                                                       d.teacher_source.taps))
        assert student_hooks.inplace_layers == {"bn1"} == teacher_hooks.inplace_layers
        d(X, Y)["loss"].backward()  # would fail if the captured student tensor were the one ReLU overwrote
    assert seen["student_min"] < 0 and seen["teacher_min"] < 0, "bn1 must be captured before the in-place ReLU"


@pytest.mark.parametrize("alpha, trained, untouched", [(1.0, "head", "head_dist"), (0.0, "head_dist", "head")])
def test_distilled_deit_ce_on_class_head_kd_on_distillation_head(alpha, trained, untouched):
    torch.manual_seed(0)
    student = deit()
    with Distiller(vit(depth=1), student, kd=LogitKD(alpha=alpha)) as d:
        d(X, Y)["loss"].backward()
    assert getattr(student, trained).weight.grad.abs().sum() > 0
    assert getattr(student, untouched).weight.grad is None or getattr(student, untouched).weight.grad.abs().sum() == 0


def test_attention_and_value_relation_on_one_module_keep_their_own_maps():
    torch.manual_seed(0)
    teacher, student = vit(depth=1), vit(depth=1)
    student.load_state_dict(teacher.state_dict())  # identical models: each term compares a map with itself
    seen = {}

    def recorder(kind):
        def loss(s, t):
            seen[kind] = t
            return (s - t).abs().mean()
        return loss

    pairs = [Pair("blocks.0.attn", "blocks.0.attn", capture="attention", loss=recorder("attention"), name="a"),
             Pair("blocks.0.attn", "blocks.0.attn", capture="value_relation", loss=recorder("values"), name="v")]
    with Distiller(teacher, student, pairs, sample_input=X[:2]) as d, torch.no_grad():
        d.eval()
        out = d(X, Y)
    assert out["feat/a"] == 0 and out["feat/v"] == 0
    assert not torch.allclose(seen["attention"], seen["values"]), "value relations must not reuse attention maps"


def test_attention_transfer_on_a_single_position_map_is_refused():
    """A 1x1 map normalises to a constant: the term would be 0 forever, so the plan refuses it up front."""
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10)
    student = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    with pytest.raises(ShapeError, match=r"one position.*spatial size above 1x1"):
        Distiller(teacher, student, [Pair("layer4", "layer4", loss="attention_transfer")],
                  sample_input=torch.randn(2, 3, 32, 32))
