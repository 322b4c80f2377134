"""Distiller options, each checked against a hand-written formula: Pair(normalize=), label_smoothing=,
Pair(loss_kwargs=), Pair(adapter_kwargs=), logits_from= and Pair(weight='auto') resumed mid-calibration."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featdistill import Distiller, FeatdistillError, LogitKD, Pair, count_hooks

G = torch.Generator().manual_seed(0)
X_MAP = torch.randn(4, 3, 6, 5, generator=G)  # H=6, W=5, C=8 inside: every dim distinct
X_VEC = torch.randn(4, 6, generator=G)
Y = torch.tensor([0, 1, 2, 4])


def cnn(seed, width=8, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def mlp(seed, width=8, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, classes))


class Grab:
    """A forward hook of our own: keeps a detached copy of the module's last output."""

    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.value = output.detach().clone()


def channel_ln(x, eps=1e-5):
    """Parameter-free LayerNorm over channels (dim 1 of maps [B, C, H, W], the last dim of vectors), by hand."""
    dim = 1 if x.dim() == 4 else -1
    mean = x.mean(dim, keepdim=True)
    var = ((x - mean) ** 2).mean(dim, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def kl_by_hand(student_logits, teacher_logits, temperature):
    p_t = torch.softmax(teacher_logits / temperature, dim=-1)
    log_p_s = torch.log_softmax(student_logits / temperature, dim=-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(dim=-1).mean()  # batchmean
    return kl * temperature**2


# -- normalize= ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["map", "vector"])
@pytest.mark.parametrize("normalize", ["teacher", "both"])
def test_normalize_layer_norms_features_over_channels(kind, normalize):
    make, x = (cnn, X_MAP) if kind == "map" else (mlp, X_VEC)
    teacher, student = make(1), make(2)
    pair = Pair("2", "2", adapter="identity", normalize=normalize, name="f")
    with Distiller(teacher, student, [pair], sample_input=x[:2]) as d:
        s_hook, t_hook = Grab(student[2]), Grab(teacher[2])
        out = d(x, Y)
        s, t = s_hook.value, t_hook.value
        expected_s = channel_ln(s) if normalize == "both" else s
        torch.testing.assert_close(out["feat/f"], F.mse_loss(expected_s, channel_ln(t)), rtol=1e-5, atol=1e-7)
        # the option matters: without it the term is the plain mse, which differs
        assert abs(out["feat/f"].item() - F.mse_loss(s, t).item()) > 1e-3
        if kind == "map":  # normalising over another dim (e.g. W) would give another value
            wrong = F.layer_norm(t, t.shape[-1:])
            assert abs(out["feat/f"].item() - F.mse_loss(expected_s, wrong).item()) > 1e-3


# -- label_smoothing= ---------------------------------------------------------------------------
@pytest.mark.parametrize("kd, task_weight", [(LogitKD(temperature=2.0, alpha=0.3), 0.3), (None, 1.0)])
def test_label_smoothing_in_the_task_term(kd, task_weight):
    ls = 0.2
    teacher, student = cnn(1), cnn(2)
    with Distiller(teacher, student, kd=kd, label_smoothing=ls) as d:
        logits_hook = Grab(student)
        out = d(X_MAP, Y)
        z = logits_hook.value
        log_p = torch.log_softmax(z, dim=-1)
        nll = -log_p.gather(1, Y[:, None]).squeeze(1)
        uniform = -log_p.mean(dim=-1)
        smoothed = ((1 - ls) * nll + ls * uniform).mean()
        torch.testing.assert_close(out["task"], task_weight * smoothed, rtol=1e-5, atol=1e-7)
        assert abs(out["task"].item() - task_weight * nll.mean().item()) > 1e-3


# -- loss_kwargs= -------------------------------------------------------------------------------
def huber_by_hand(s, t, beta):
    d = (s - t).abs()
    return torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).mean()


def test_loss_kwargs_reach_the_feature_loss():
    teacher, student = cnn(1), cnn(2)
    pair = Pair("2", "2", adapter="identity", loss="smooth_l1", loss_kwargs={"beta": 0.1}, name="f")
    with Distiller(teacher, student, [pair], sample_input=X_MAP[:2]) as d:
        s_hook, t_hook = Grab(student[2]), Grab(teacher[2])
        out = d(X_MAP, Y)
        s, t = s_hook.value, t_hook.value
        diff = (s - t).abs()
        assert ((diff > 0.1) & (diff < 1.0)).any(), "the features must span the range where beta matters"
        torch.testing.assert_close(out["feat/f"], huber_by_hand(s, t, 0.1), rtol=1e-5, atol=1e-7)
        assert abs(out["feat/f"].item() - huber_by_hand(s, t, 1.0).item()) > 1e-3


def test_unknown_loss_kwarg_is_refused_when_the_distiller_is_built():
    teacher, student = cnn(1), cnn(2)
    pair = Pair("2", "2", adapter="identity", loss="smooth_l1", loss_kwargs={"gamma": 0.1})
    # the dry run calls the loss once, so the mistake shows before any teacher stage or training step
    with pytest.raises(FeatdistillError, match=r"pair '2~2'.*'smooth_l1'.*gamma.*Fix the pair's loss_kwargs"):
        Distiller(teacher, student, [pair], sample_input=X_MAP[:2])
    assert count_hooks(teacher) == count_hooks(student) == 0


# -- adapter_kwargs= ----------------------------------------------------------------------------
def test_adapter_kwargs_reach_the_adapter_factory():
    teacher, student = mlp(1, width=10), mlp(2, width=6)
    with Distiller(teacher, student, [Pair("2", "2", adapter="mlp")], sample_input=X_VEC[:2]) as d:
        default = d.adapters[0].proj
        assert default[0].out_features == 10  # max(6, 10) without kwargs
    with Distiller(teacher, student, [Pair("2", "2", adapter="mlp", adapter_kwargs={"hidden": 7}, name="f")],
                   sample_input=X_VEC[:2]) as d:
        proj = d.adapters[0].proj
        linears = [m for m in proj if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(6, 7), (7, 10)]
        s_hook, t_hook = Grab(student[2]), Grab(teacher[2])
        out = d(X_VEC, Y)
        with torch.no_grad():
            expected = F.mse_loss(d.adapters[0](s_hook.value), t_hook.value)
        torch.testing.assert_close(out["feat/f"], expected, rtol=1e-5, atol=1e-7)


# -- logits_from= -------------------------------------------------------------------------------
class DictOut(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return {"out": self.body(x)}


def test_logits_from_reads_dict_outputs_and_kd_matches_hinton():
    teacher, student = DictOut(cnn(1)), DictOut(cnn(2))
    kd = LogitKD(temperature=3.0, alpha=0.25)
    with Distiller(teacher, student, kd=kd) as plain, pytest.raises(TypeError, match="logits_from"):
        plain(X_MAP, Y)  # a dict without 'logits': the Distiller cannot guess
    with Distiller(teacher, student, kd=kd, logits_from=lambda o: o["out"]) as d:
        s_hook, t_hook = Grab(student.body), Grab(teacher.body)
        out = d(X_MAP, Y)
        s, t = s_hook.value, t_hook.value
        assert not torch.allclose(s, t)
        torch.testing.assert_close(out["kd"], 0.75 * kl_by_hand(s, t, 3.0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out["task"], 0.25 * F.cross_entropy(s, Y), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out["loss"], out["kd"] + out["task"])


# -- weight='auto' resumed mid-calibration -----------------------------------------------------
BATCHES = [(torch.randn(4, 3, 6, 5, generator=G), torch.randint(0, 5, (4,), generator=G)) for _ in range(5)]


def auto_distiller():
    teacher, student = cnn(1), cnn(2)
    pairs = [Pair("2", "2", adapter="identity", weight="auto", auto_ratio=0.5, name="a"),
             Pair("0", "0", adapter="identity", weight=2.0, name="fixed")]
    return Distiller(teacher, student, pairs, kd=LogitKD(temperature=2.0, alpha=0.5), sample_input=X_MAP[:2],
                     calibration_steps=4).train()


def run_steps(d, batches):
    opt = torch.optim.SGD(d.parameters(), lr=0.05)  # no momentum: no optimizer state to carry over
    for x, y in batches:
        out = d(x, y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()


def test_auto_weight_resumed_mid_calibration_matches_an_uninterrupted_run():
    with auto_distiller() as full:
        run_steps(full, BATCHES[:4])
        expected = full.auto_weights.weights.clone()
        assert expected[1].item() == 2.0 and expected[0].item() != 1.0

        with auto_distiller() as first:
            run_steps(first, BATCHES[:2])
            state = {k: v.clone() for k, v in first.state_dict().items()}
            assert int(first.auto_weights.seen) == 2 and first.auto_weights.calibrating

        with auto_distiller() as resumed:
            resumed.load_state_dict(state)
            run_steps(resumed, BATCHES[2:4])
            assert torch.equal(resumed.auto_weights.weights, expected)
            assert not resumed.auto_weights.calibrating
            run_steps(resumed, BATCHES[4:])  # a 5th step: calibration is over, the weights stay
            assert torch.equal(resumed.auto_weights.weights, expected)
            assert int(resumed.auto_weights.seen) == 4

        # a Distiller that already froze its weights calibrates again from a mid-calibration checkpoint
        assert not full.auto_weights.calibrating
        full.load_state_dict(state)
        assert full.auto_weights.calibrating
        run_steps(full, BATCHES[2:4])
        assert torch.equal(full.auto_weights.weights, expected)

    # the test can fail: without the calibration buffers (same student weights) the weights differ
    with auto_distiller() as lost:
        lost.load_state_dict({k: v for k, v in state.items() if not k.startswith("auto_weights.")}, strict=False)
        run_steps(lost, BATCHES[2:4])
        assert not torch.allclose(lost.auto_weights.weights, expected)
