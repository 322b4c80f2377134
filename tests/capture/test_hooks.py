"""FeatureHooks: capture rules, error messages, removal, pickling, torch.compile."""

import pickle

import pytest
import timm
import torch
import torchvision
from torch import nn

from featdistill import CaptureError, FeatureHooks, UnknownNameError, count_hooks, list_layers


class TupleNet(nn.Module):
    """A layer returning a tuple and a dict, and a layer called twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(self.conv(x))
        return self.act(h - 0.5)  # self.act runs twice, with a different output each time


class Pairwise(nn.Module):
    def forward(self, x):
        return x * 2, {"a": x + 1, "b": x - 1}


class Wrap(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = Pairwise()

    def forward(self, x):
        out, d = self.pair(x)
        return out + d["a"]


def test_unknown_layer_names_model_and_close_matches():
    model = torchvision.models.resnet18()
    with pytest.raises(UnknownNameError) as err:
        FeatureHooks(model, ["layer3.1.con2"])
    msg = str(err.value)
    assert "'layer3.1.con2'" in msg and "ResNet" in msg
    assert "layer3.1.conv2" in msg and "list_layers" in msg and "--list-layers" in msg
    assert count_hooks(model) == 0


def test_captures_output_input_and_pop_clears():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(3, 4)
    first, hidden = model[0](x), torch.relu(model[0](x))
    with FeatureHooks(model, ["0", "2"]) as hooks:
        out = model(x)
        feats = hooks.pop()
        assert set(feats) == {"0", "2"}
        assert torch.equal(feats["0"], first) and torch.equal(feats["2"], out)
        assert hooks.pop(strict=False) == {}
    with FeatureHooks(model, ["2"], capture="input") as hooks:
        model(x)
        assert torch.equal(hooks.pop()["2"], hidden)
    assert count_hooks(model) == 0


def test_capture_survives_inplace_relu_in_torchvision_resnet():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureHooks(model, ["bn1"]) as hooks, torch.no_grad():
        model(x)
        captured = hooks.pop()["bn1"]
        expected = model.bn1(model.conv1(x))
    assert (captured < 0).any(), "bn1 output must be captured before the in-place ReLU"
    assert torch.allclose(captured, expected, atol=1e-6)


def test_tuple_and_dict_outputs_need_select():
    model = Wrap()
    x = torch.randn(2, 3)
    with FeatureHooks(model, ["pair"]) as hooks:
        with pytest.raises(TypeError, match="tuple.*select="):
            model(x)
    with FeatureHooks(model, ["pair"], select=0) as hooks:
        model(x)
        assert torch.equal(hooks.pop()["pair"], x * 2)
    with FeatureHooks(model, ["pair"], select=lambda o: o[1]["b"]) as hooks:
        model(x)
        assert torch.equal(hooks.pop()["pair"], x - 1)
    with FeatureHooks(model, ["pair"], select={"pair": 5}) as hooks:
        with pytest.raises(CaptureError, match="select=5"):
            model(x)


def test_layer_called_twice_is_an_error_unless_a_policy_is_chosen():
    model = TupleNet()
    x = torch.randn(1, 3, 4, 4)
    with FeatureHooks(model, ["act"]) as hooks:
        with pytest.raises(CaptureError, match=r"'act' \(ReLU\) ran more than once.*repeat="):
            model(x)
    first = torch.relu(model.conv(x))
    last = torch.relu(first - 0.5)
    assert not torch.allclose(first, last)  # so swapping 'first' and 'last' would fail below
    for policy, check in [("first", first), ("last", last), ("stack", torch.stack([first, last]))]:
        with FeatureHooks(model, ["act"], repeat=policy) as hooks:
            model(x)
            got = hooks.pop()["act"]
            assert got.shape == check.shape and torch.allclose(got, check)


def test_layer_that_did_not_run_is_reported_on_pop():
    model = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    with FeatureHooks(model, ["used", "unused"]) as hooks:
        model["used"](torch.randn(1, 2))
        with pytest.raises(CaptureError, match="'unused'.*did not run"):
            hooks.pop()


def test_detach_and_remove():
    seq = nn.Sequential(nn.Linear(3, 3))
    hooks = FeatureHooks(seq, ["0"], detach=True)
    seq(torch.randn(2, 3))
    assert not hooks.pop()["0"].requires_grad
    assert count_hooks(seq) == 1
    hooks.remove()
    assert count_hooks(seq) == 0 and not hooks.attached


def test_hooked_model_pickles():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    hooks = FeatureHooks(model, ["0"])
    clone = pickle.loads(pickle.dumps(model))
    clone(torch.randn(1, 3))  # the copied hook writes into its own copy of the store
    model(torch.randn(1, 3))
    assert set(hooks.pop()) == {"0"}


def test_compiled_vit_captures_like_eager_with_no_graph_breaks():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureHooks(model, ["blocks.0", "blocks.1.mlp"]) as hooks:
        with torch.no_grad():
            model(x)
            eager = hooks.pop()
            torch._dynamo.reset()
            explain = torch._dynamo.explain(model)(x)
            hooks.clear()
            compiled = torch.compile(model, backend="eager", fullgraph=True)
            compiled(x)
            got = hooks.pop()
        torch._dynamo.reset()
    assert explain.graph_break_count == 0
    for name in eager:
        assert torch.allclose(eager[name], got[name], atol=1e-6)


def test_list_layers_reports_shapes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Flatten())
    rows = dict(list_layers(model, torch.randn(1, 3, 9, 9)))
    assert rows["0"] == "Conv2d [1, 8, 4, 4]" and rows["1"] == "Flatten [1, 128]"
    assert count_hooks(model) == 0


def test_auto_clone_copies_only_layers_modified_in_place():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.bn1(model.conv1(x))
    with FeatureHooks(model, ["bn1", "layer1"], clone="auto") as hooks, torch.no_grad():
        model(x)
        with pytest.warns(RuntimeWarning, match=r"\['bn1'\] was modified in place"):
            hooks.pop()
        assert hooks.inplace_layers == {"bn1"}
        model(x)
        captured = hooks.pop()["bn1"]
    assert torch.allclose(captured, expected, atol=1e-6)
