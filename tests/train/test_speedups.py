"""Speed settings change how a step runs, not what it computes: torch.compile with hooks attached (no graph breaks,
the same captures, losses and gradients as eager), channels-last memory, and both through the CLI."""

import functools
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from featdistill import Distiller, FeatureHooks, LogitKD, Pair
from featdistill.data import Batch
from featdistill.run import main
from featdistill.train import speedups

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "train.epochs=1", "--set", "teacher.pretrain.epochs=1", "--quiet"]
# aot_eager traces forward and backward exactly as inductor would, without generating C++ (fast, no compiler)
BACKEND = "aot_eager"


def cnn(width: int) -> nn.Module:
    """Two conv stages; ReLU(inplace) after each stage's output, as in ResNets, so a capture must be copied."""
    def stage(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout))

    return nn.Sequential(stage(3, width), nn.ReLU(inplace=True), stage(width, 2 * width), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


def vit(dim: int) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2,
                             embed_dim=dim, num_heads=2, num_classes=10)


def pairs_for(kind):
    if kind == "cnn":
        return [Pair("0", "0"), Pair("2", "2", loss="at")]
    return [Pair("blocks.1", "blocks.1"),
            Pair("blocks.0.attn", "blocks.1.attn", capture="attention", loss="attention_kl")]


def build(kind):
    torch.manual_seed(0)
    teacher, student = (cnn(16), cnn(8)) if kind == "cnn" else (vit(32), vit(16))
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    return Distiller(teacher, student, pairs_for(kind), kd=LogitKD(), sample_input=x[:2]), x, y


def step(d, x, y):
    """One step's terms and every trainable gradient."""
    d.zero_grad(set_to_none=True)
    out = d(x, y)
    out["loss"].backward()
    return {k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in d.named_parameters()
                                                      if p.grad is not None}


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_compiled_step_has_no_graph_break_and_equals_eager(kind):
    torch._dynamo.reset()
    d, x, y = build(kind)
    keys = list(d.student.state_dict())
    eager_terms, eager_grads = step(d, x, y)
    # fullgraph=True raises at the first graph break: the hooked forward must trace as one graph
    speedups.compile_in_place([d.student, d.teacher], backend=BACKEND, fullgraph=True)
    for _ in range(2):  # the second call runs the cached graph
        terms, grads = step(d, x, y)
        assert terms.keys() == eager_terms.keys()
        for k in terms:
            torch.testing.assert_close(terms[k], eager_terms[k], rtol=1e-5, atol=1e-6)
        assert grads.keys() == eager_grads.keys() and len(grads) > 4
        for n in grads:
            torch.testing.assert_close(grads[n], eager_grads[n], rtol=1e-4, atol=1e-6)
    assert list(d.student.state_dict()) == keys  # compiled in place: no _orig_mod. prefix
    d.close()
    torch._dynamo.reset()


def test_compiled_model_captures_the_same_tensors_as_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = cnn(8).eval(), torch.randn(3, 3, 16, 16)
    with FeatureHooks(model, ["0", "2", "4"]) as hooks, torch.no_grad():
        model(x)
        eager = hooks.pop()
        speedups.compile_in_place([model], backend=BACKEND, fullgraph=True)
        model(x)
        compiled = hooks.pop()
    assert compiled.keys() == eager.keys()
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name])
    # the ReLU(inplace) after stage "0" must not have changed its capture: pre-activation values stay negative
    assert (compiled["0"] < 0).any()
    assert speedups.uncompile(model)._compiled_call_impl is None
    torch._dynamo.reset()


def test_channels_last_moves_conv_weights_and_batches_and_changes_no_value():
    d, x, y = build("cnn")
    eager_terms, eager_grads = step(d, x, y)
    speedups.apply(type("T", (), {"channels_last": True})(), d.student, d.teacher, extra=[d.adapters])
    conv = d.student[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert d.teacher[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = Batch(x, y).to("cpu", memory_format=torch.channels_last)
    assert batch.inputs.is_contiguous(memory_format=torch.channels_last) and batch.labels.equal(y)
    terms, grads = step(d, batch.inputs, y)
    for k in terms:
        torch.testing.assert_close(terms[k], eager_terms[k], rtol=1e-5, atol=1e-6)
    for n in grads:
        torch.testing.assert_close(grads[n].contiguous(), eager_grads[n].contiguous(), rtol=1e-4, atol=1e-6)
    d.close()


def test_batch_layout_leaves_non_image_inputs_alone():
    ids = {"input_ids": torch.ones(2, 5, dtype=torch.long), "pixels": torch.randn(2, 3, 4, 4)}
    moved = Batch(ids).to("cpu", memory_format=torch.channels_last).inputs
    assert moved["input_ids"].equal(ids["input_ids"])
    assert moved["pixels"].is_contiguous(memory_format=torch.channels_last)
    assert Batch(torch.randn(2, 7)).to("cpu", memory_format=torch.channels_last).inputs.shape == (2, 7)


def test_cli_compiles_both_models_after_the_dry_run_and_exports_them_plain(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    compiled = []
    real = functools.partial(speedups.compile_in_place, backend="eager")  # the wiring, at dynamo's cost only

    def spy(modules, **kw):
        modules = list(modules)
        compiled.append([type(m).__name__ for m in modules])
        real(modules, **kw)

    monkeypatch.setattr(speedups, "compile_in_place", spy)
    torch._dynamo.reset()
    out = tmp_path / "run"
    recipe = str(ROOT / "recipes" / "resnet_to_resnet.py")
    code = main([recipe, *TINY, "--out", str(out), "--set", "train.compile=True", "--set", "train.channels_last=True",
                 "--set", "train.amp=bf16"])
    assert code == 0, capsys.readouterr().err
    assert compiled == [["ResNet", "ResNet"]]  # the student and the teacher, once; the teacher stage stays eager
    saved = json.loads((out / "recipe.json").read_text())["train"]
    assert saved["compile"] is True and saved["channels_last"] is True and saved["amp"] == "bf16"
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["student_accuracy"] <= 1.0
    torch._dynamo.reset()


def test_train_settings_left_at_default_are_not_saved_and_bad_values_are_named():
    from featdistill.config import Train
    from featdistill.recipe import to_dict

    assert "compile" not in to_dict(Train()) and "channels_last" not in to_dict(Train())
    problems = Train(compile="yes", channels_last=1).problems()
    assert any("train.compile must be True or False" in p for p in problems)
    assert any("train.channels_last must be True or False" in p for p in problems)
