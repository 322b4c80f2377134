"""Early exit: a teacher whose logits are not needed stops right after its deepest hooked layer, and every feature
(output, input, attention, value relation; layers that run twice) is exactly that of a full forward."""

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

from featdistill import Distiller, LogitKD, Pair
from featdistill.capture.early_exit import is_compiled
from featdistill.data.batch import Batch
from featdistill.distill.plan import teacher_run_line
from featdistill.distill.teachers import LiveTeacher

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2])


def vit(depth=12, width=192, heads=3):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=depth,
                             embed_dim=width, num_heads=heads, num_classes=10)


def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


class Calls:
    """Counts the forwards of one module."""

    def __init__(self, module: nn.Module):
        self.n = 0
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, *_):
        self.n += 1


def live(model, taps, **kwargs) -> LiveTeacher:
    """A LiveTeacher bound to ``taps``: ``(teacher layer, capture)`` or a Pair."""
    teacher = LiveTeacher(model, **kwargs)
    teacher.bind([t if isinstance(t, Pair) else Pair(t[0], t[0], capture=t[1]) for t in taps])
    return teacher


def flat(features):
    return [t for f in features for t in (f if isinstance(f, list) else [f])]


def assert_same(got, expected):
    got, expected = flat(got), flat(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and torch.equal(g, e)


# (model, taps, the layer it stops after, a module that must not run, the blocks line of the plan)
CASES = {
    "vit output": (vit, [("blocks.1.attn", "attention"), ("blocks.2.mlp.fc2", "input"), ("blocks.3", "output")],
                   "blocks.3", "blocks.4", "4 of 12 blocks run"),
    "vit input": (vit, [("blocks.1", "output"), ("blocks.2.attn", "value_relation"), ("blocks.3.mlp.fc2", "input")],
                  "blocks.3.mlp.fc2", "blocks.3.ls2", "4 of 12 blocks run (the last in part)"),
    "vit attention": (vit, [("blocks.1.norm1", "input"), ("blocks.2", "output"), ("blocks.3.attn", "attention")],
                      "blocks.3.attn.qkv", "blocks.3.attn.proj", "4 of 12 blocks run (the last in part)"),
    "vit value_relation": (vit, [("blocks.0", "output"), ("blocks.3.attn", "value_relation"),
                                 ("blocks.3.attn", "attention")],
                           "blocks.3.attn.qkv", "blocks.3.attn.proj", "4 of 12 blocks run (the last in part)"),
    # bn1 and the block outputs are changed in place by ReLU(inplace=True) after capture: copied, as in full
    "resnet output": (resnet, [("layer1.0.bn1", "output"), ("layer1.1.conv1", "input"), ("layer2", "output")],
                      "layer2", "layer3", "4 of 8 blocks run"),
    "resnet in place": (resnet, [("layer1", "output"), ("layer2.0.bn1", "output")],
                        "layer2.0.bn1", "layer2.0.conv2", "3 of 8 blocks run (the last in part)"),
    "resnet input": (resnet, [("layer1", "output"), ("layer2.1.conv1", "input")],
                     "layer2.1.conv1", "layer2.1.bn1", "4 of 8 blocks run (the last in part)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_early_exit_features_equal_the_full_forward_and_later_layers_do_not_run(case):
    build, taps, after, later, blocks = CASES[case]
    model = build()
    teacher = live(model, taps)
    head = model.head if hasattr(model, "head") else model.fc
    skipped, heads = Calls(model.get_submodule(later)), Calls(head)
    teacher(Batch(X), need_logits=False)  # the first feature-only call runs in full: it learns where to stop
    assert (skipped.n, heads.n) == (1, 1) and teacher.early_exit_after == after
    assert teacher_run_line(teacher, need_logits=False).endswith(f"stops after {after} when logits are not needed "
                                                                 f"(feature-only KD): {blocks}")
    stopped = teacher(Batch(X), need_logits=False)
    assert (skipped.n, heads.n) == (1, 1), "the layers after the deepest hooked one ran"
    assert stopped.logits is None
    full = teacher(Batch(X), need_logits=True)
    assert (skipped.n, heads.n) == (2, 2)
    assert_same(stopped.features, full.features)
    with torch.no_grad():
        assert torch.equal(full.logits, model(X))
    assert_same(teacher(Batch(X), need_logits=False).features, full.features)  # and again: nothing leaks
    assert heads.n == 3
    teacher.close()


class Twice(nn.Module):
    """``shared`` runs twice per forward, ``head`` last; ``laps`` sets how often the middle part repeats."""

    def __init__(self, laps: int = 1):
        super().__init__()
        self.laps = laps
        self.stem, self.shared, self.mid, self.head = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        x = self.shared(self.stem(x))
        for _ in range(self.laps):
            x = self.shared(self.mid(x).relu())
        return self.head(x)


@pytest.mark.parametrize("repeat", ["first", "last", "stack"])
def test_a_layer_that_runs_twice_stops_after_its_last_run(repeat):
    torch.manual_seed(0)
    model, x = Twice(), torch.randn(4, 8)
    teacher = live(model, [Pair("stem", "stem"), Pair("shared", "shared", repeat=repeat)])
    mids, heads = Calls(model.mid), Calls(model.head)
    teacher(Batch(x), need_logits=False)
    assert teacher.early_exit_after == "shared" and teacher.taps.early_exit.fires == 3  # stem, shared, shared
    stopped = teacher(Batch(x), need_logits=False)
    assert (mids.n, heads.n) == (2, 1)  # the second run of shared (after mid) was waited for; head never ran
    full = teacher(Batch(x), need_logits=True)
    assert_same(stopped.features, full.features)
    if repeat == "stack":
        assert stopped.features[1].shape == (2, 4, 8)


def test_a_fire_count_that_changes_falls_back_to_the_full_forward_for_good():
    torch.manual_seed(0)
    model, x = Twice(laps=2), torch.randn(4, 8)
    teacher = live(model, [Pair("shared", "shared", repeat="last")])
    heads = Calls(model.head)
    teacher(Batch(x), need_logits=False)
    assert teacher.taps.early_exit.fires == 3
    model.laps = 1  # now shared fires twice: the learned third fire never comes, the forward ends in full
    got = teacher(Batch(x), need_logits=False)
    assert heads.n == 2 and teacher.early_exit_after is None
    assert "fired 2 times in a forward, not 3" in teacher.early_exit_reason
    assert_same(got.features, teacher(Batch(x), need_logits=True).features)
    teacher(Batch(x), need_logits=False)
    assert heads.n == 4  # still in full


class Swallows(nn.Module):
    """A forward that catches every Exception of its first layer (and so the early-exit one)."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        try:
            x = self.a(x)
        except Exception:
            x = torch.zeros_like(x)
        return self.head(x)


def test_a_forward_that_swallows_the_stop_falls_back_to_the_full_forward():
    torch.manual_seed(0)
    model, x = Swallows(), torch.randn(4, 8)
    teacher = live(model, [Pair("a", "a")])
    teacher(Batch(x), need_logits=False)
    assert teacher.early_exit_after == "a"
    got = teacher(Batch(x), need_logits=False)
    assert teacher.early_exit_after is None and "caught" in teacher.early_exit_reason
    full = teacher(Batch(x), need_logits=True)
    assert_same(got.features, full.features)
    with torch.no_grad():
        assert torch.equal(full.logits, model(x))


def test_a_compiled_teacher_runs_in_full():
    torch.manual_seed(0)
    model, x = Twice(), torch.randn(4, 8)
    teacher = live(model, [Pair("shared", "shared", repeat="last")])
    teacher(Batch(x), need_logits=False)
    assert teacher.early_exit_after == "shared"
    assert is_compiled(torch.compile(Twice())) and not is_compiled(model)
    torch._dynamo.reset()
    model.compile(backend="eager")  # in place, as train.compile does
    try:
        heads = Calls(model.head)
        assert teacher.early_exit_after is None and "compiled" in teacher.early_exit_reason
        got = teacher(Batch(x), need_logits=False)
        assert heads.n == 1
        assert_same(got.features, teacher(Batch(x), need_logits=True).features)
    finally:
        model._compiled_call_impl = None
        torch._dynamo.reset()
    assert teacher.early_exit_after == "shared"


def test_a_forward_being_traced_does_not_stop(monkeypatch):
    model = Twice()
    teacher = live(model, [Pair("shared", "shared", repeat="last")])
    teacher(Batch(torch.randn(2, 8)), need_logits=False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert teacher.taps.early_exit.arm(True) is None and "compiled" in teacher.early_exit_reason


def test_early_exit_can_be_turned_off():
    model = Twice()
    teacher = live(model, [Pair("stem", "stem")], early_exit=False)
    heads = Calls(model.head)
    for _ in range(2):
        teacher(Batch(torch.randn(2, 8)), need_logits=False)
    assert heads.n == 2 and teacher.early_exit_after is None and "turned off" in teacher.early_exit_reason


def distillers(kind):
    """The same feature-only KD (kd=None) twice, the teacher with early exit on and off, equal students."""
    if kind == "vit":
        teacher = vit()
        torch.manual_seed(1)
        student = vit(depth=4, width=96)
        pairs = [Pair("blocks.1", "blocks.1"), Pair("blocks.3", "blocks.3", loss="cosine"),
                 Pair("blocks.2.attn", "blocks.2.attn", capture="attention", loss="attention_kl")]
    else:
        teacher = resnet()
        torch.manual_seed(1)
        student = torchvision.models.mobilenet_v3_small(num_classes=10)
        pairs = [Pair("features.1", "layer1"), Pair("features.3", "layer2", loss="at")]
    built = []
    for early_exit in (True, False):
        torch.manual_seed(2)  # the same adapters
        built.append(Distiller(LiveTeacher(teacher, early_exit=early_exit), copy.deepcopy(student), pairs, kd=None,
                               sample_input=X[:2]))
    return teacher, built


def step(d):
    d.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout masks in the student
    out = d(X, Y)
    out["loss"].backward()
    return {k: v.detach() for k, v in out.items()}, {n: p.grad for n, p in d.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_feature_only_distiller_gives_the_same_terms_and_gradients_with_early_exit(kind):
    teacher, (on, off) = distillers(kind)
    heads = Calls(teacher.head if kind == "vit" else teacher.fc)
    assert "teacher: stops after " in on.plan() and "runs in full" in off.plan()
    for _ in range(2):
        (terms, grads), n = step(on), heads.n
        assert heads.n == n  # the early-exit step did not run the head
        expected_terms, expected_grads = step(off)
        assert heads.n == n + 1
        assert terms.keys() == expected_terms.keys() and len(terms) >= 3
        for k in terms:
            assert torch.equal(terms[k], expected_terms[k]), k
        assert grads.keys() == expected_grads.keys() and len(grads) > 10
        for name in grads:
            assert torch.equal(grads[name], expected_grads[name]), name
    on.close()
    off.close()


def test_the_plan_says_where_the_teacher_stops_or_why_not():
    teacher, student = vit(), vit(depth=4)
    pairs = [Pair("blocks.1", "blocks.1"), Pair("blocks.3", "blocks.3")]
    with Distiller(teacher, student, pairs, kd=None, sample_input=X[:2]) as d:
        lines = d.plan().splitlines()
        assert lines[1] == ("teacher: stops after blocks.3 when logits are not needed (feature-only KD): "
                            "4 of 12 blocks run")
    with Distiller(LiveTeacher(teacher, early_exit=False), student, pairs, kd=None, sample_input=X[:2]) as d:
        assert d.plan().splitlines()[1] == ("teacher: runs in full although logits are not needed (feature-only "
                                            "KD): early exit is turned off (LiveTeacher(early_exit=False))")
    with Distiller(teacher, student, pairs, kd=LogitKD(), sample_input=X[:2]) as d:
        assert d.plan().splitlines()[1] == "teacher: runs in full: logit KD needs its logits"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hugging_face_attention_and_value_relations_stop_early(arch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_layer=3, n_embd=16, n_head=4, n_positions=16, vocab_size=40)
        model, blocks = transformers.GPT2LMHeadModel._from_config(config, attn_implementation="eager"), "transformer.h"
        attn, last = "attn", "transformer.h.1.attn.c_attn"  # GPT-2's value relation reads its fused c_attn
    else:
        config = transformers.LlamaConfig(num_hidden_layers=3, hidden_size=16, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=32, vocab_size=40,
                                          max_position_embeddings=16)
        model, blocks = transformers.LlamaForCausalLM._from_config(config, attn_implementation="eager"), "model.layers"
        attn, last = "self_attn", "model.layers.1.self_attn.v_proj"
    model.eval()
    inputs = {"input_ids": torch.randint(1, 40, (2, 7), generator=torch.Generator().manual_seed(1)),
              "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}
    teacher = live(model, [(f"{blocks}.0", "output"), (f"{blocks}.0.{attn}", "attention"),
                           (f"{blocks}.1.{attn}", "value_relation")])
    teacher.logits_from = lambda out: out.logits
    later = Calls(model.get_submodule(f"{blocks}.2"))
    teacher(Batch(inputs), need_logits=False)
    assert teacher.early_exit_after == last and later.n == 1
    stopped = teacher(Batch(inputs), need_logits=False)
    assert later.n == 1
    full = teacher(Batch(inputs), need_logits=True)
    assert_same(stopped.features, full.features)
    with torch.no_grad():  # a stopped forward left nothing behind in the model
        assert torch.equal(full.logits, model(**inputs).logits)
