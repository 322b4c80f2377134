"""Trainer: the warm-up/cosine schedule and the lr it logs, gradient clipping, bf16 autocast on the CPU, the
non-finite-loss guard and exact resume from checkpoint.pt."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from featdistill.config import Train
from featdistill.data import Batch
from featdistill.errors import FeatdistillError
from featdistill.train import Trainer, WarmupCosine, autocast, evaluate

CPU = torch.device("cpu")
G = torch.Generator().manual_seed(0)
X = torch.randn(32, 6, generator=G)
Y = torch.randint(0, 3, (32,), generator=G)


@dataclass
class Loaders:
    """The two loaders and the ``set_epoch`` the Trainer uses."""

    train: DataLoader
    val: DataLoader

    def set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.train, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def loaders(batch_size=8, shuffle=True, dtype=torch.float32):
    data = TensorDataset(X.to(dtype), Y)
    return Loaders(DataLoader(data, batch_size=batch_size, shuffle=shuffle), DataLoader(data, batch_size=16))


def model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def ce_loss(net, scale=1.0):
    def loss_fn(batch: Batch) -> dict:
        loss = scale * F.cross_entropy(batch.run(net), batch.labels)
        return {"loss": loss, "task": loss}

    return loss_fn


def trainer(net, loss_fn, train, run_dir=None, batch_size=8, shuffle=True, dtype=torch.float32):
    return Trainer(net, loss_fn, loaders(batch_size, shuffle, dtype), train, CPU, net, run_dir=run_dir, desc="test",
                   quiet=True)


def flat(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- schedule -----------------------------------------------------------------------------------
def cosine_by_hand(step, warmup, total):
    progress = min((step - warmup) / (total - warmup), 1.0)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_is_linear_then_cosine_down_to_one_percent():
    f = WarmupCosine(warmup_steps=4, total_steps=20)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(cosine_by_hand(12, 4, 20))
    assert f(12) == pytest.approx(0.505)  # half-way through the decay
    assert f(19) == pytest.approx(cosine_by_hand(19, 4, 20))
    assert f(20) == pytest.approx(0.01) and f(25) == pytest.approx(0.01)
    after = [f(s) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert WarmupCosine(0, 10)(0) == pytest.approx(1.0)  # no warm-up: full lr from the first step


def test_trainer_steps_and_logs_the_scheduled_lr(tmp_path):
    """4 steps per epoch, 2 epochs, 1 warm-up epoch: the lr of step s is lr * WarmupCosine(4, 8)(s), and the
    metrics record of step s reports the lr that step used."""
    net = model()
    train = Train(epochs=2, batch_size=8, lr=0.1, optimizer="adamw", weight_decay=0.0, warmup_epochs=1,
                  clip_grad=None)
    used = []
    loss_fn = ce_loss(net)

    def recording(batch):
        used.append(t.optimizer.param_groups[0]["lr"])  # the lr this step's update will use
        return loss_fn(batch)

    t = trainer(net, recording, train, run_dir=tmp_path)
    t.fit()
    expected = [0.1 * WarmupCosine(4, 8)(s) for s in range(8)]
    assert used == pytest.approx(expected)
    steps = [r for r in read_metrics(tmp_path) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(8))
    assert [r["lr"] for r in steps] == pytest.approx(expected)


# -- clip_grad ----------------------------------------------------------------------------------
def first_sgd_step(clip, momentum=0.5, lr=0.1, scale=1000.0):
    """One full-batch step of nesterov SGD from a fixed init, in float64 so that rounding cannot blur the bound:
    (delta of the parameters, the unclipped gradient)."""
    net = model().double()
    reference = model().double()
    F.cross_entropy(reference(X.double()), Y).mul(scale).backward()
    grad = torch.cat([p.grad.flatten() for p in reference.parameters()])
    before = flat(net)
    train = Train(epochs=1, batch_size=32, lr=lr, optimizer="sgd", momentum=momentum, weight_decay=0.0,
                  warmup_epochs=0, clip_grad=clip)
    trainer(net, ce_loss(net, scale), train, batch_size=32, shuffle=False, dtype=torch.float64).fit()
    return flat(net) - before, grad


def test_clip_grad_bounds_the_first_sgd_step():
    lr, m, clip = 0.1, 0.5, 0.01
    delta, grad = first_sgd_step(clip, m, lr)
    assert grad.norm() > 100 * clip  # the clip is active
    # nesterov, first step: the momentum buffer starts as the gradient, so the update is lr * (1 + m) * g
    bound = lr * (1 + m) * clip
    assert delta.norm() <= bound * (1 + 1e-9)
    assert delta.norm() >= bound * (1 - 1e-3)  # clipped to the bound, not below it
    torch.testing.assert_close(delta, -lr * (1 + m) * grad * clip / grad.norm(), rtol=1e-6, atol=1e-12)

    unclipped, _ = first_sgd_step(None, m, lr)
    torch.testing.assert_close(unclipped, -lr * (1 + m) * grad, rtol=1e-9, atol=1e-12)
    assert unclipped.norm() > 100 * bound


def test_sgd_without_momentum_is_plain_sgd_or_refused_by_validation():
    """``Train(optimizer='sgd', momentum=0)``: either ``problems()`` names the momentum, or training runs as plain
    SGD. It must not pass validation and then fail inside torch (nesterov needs momentum > 0)."""
    train = Train(epochs=1, batch_size=32, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                  warmup_epochs=0, clip_grad=None)
    if any("momentum" in p for p in train.problems()):
        return
    net, reference = model(), model()
    F.cross_entropy(reference(X), Y).backward()
    grad = torch.cat([p.grad.flatten() for p in reference.parameters()])
    before = flat(net)
    trainer(net, ce_loss(net), train, batch_size=32, shuffle=False).fit()
    torch.testing.assert_close(flat(net) - before, -0.1 * grad, rtol=1e-4, atol=1e-7)


# -- autocast -----------------------------------------------------------------------------------
def test_bf16_autocast_on_cpu():
    layer = nn.Linear(6, 3)
    with autocast(CPU, "bf16"):
        assert layer(X).dtype == torch.bfloat16
    with autocast(CPU, "none"):
        assert layer(X).dtype == torch.float32
    assert layer(X).dtype == torch.float32  # nothing leaks out of the context


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("none", torch.float32)])
def test_trainer_runs_its_steps_under_the_asked_autocast(amp, dtype):
    net = model()
    seen = []
    loss_fn = ce_loss(net)

    def recording(batch):
        seen.append(batch.run(net).dtype)
        return loss_fn(batch)

    start = flat(net)
    train = Train(epochs=1, batch_size=8, lr=0.01, amp=amp, warmup_epochs=0)
    history = trainer(net, recording, train).fit()
    assert seen == [dtype] * 4
    assert math.isfinite(history[-1]["loss"]) and math.isfinite(history[-1]["task"])
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast leaves the weights in float32
    assert not torch.equal(flat(net), start)
    assert 0.0 <= evaluate(net, loaders().val, CPU, amp) <= 1.0


def test_fp16_on_cpu_is_refused_with_the_fix():
    net = model()
    with pytest.raises(FeatdistillError, match="bf16"):
        trainer(net, ce_loss(net), Train(amp="fp16"))


# -- non-finite loss ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_before_the_update(bad):
    net = model()

    def loss_fn(batch):
        loss = batch.run(net).sum() * bad  # attached to the graph: a backward would spread it to the weights
        return {"loss": loss, "task": loss.detach()}

    t = trainer(net, loss_fn, Train(epochs=1, batch_size=8, lr=0.1, warmup_epochs=0, clip_grad=None))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(FeatdistillError) as info:
        t.fit()
    message = str(info.value)
    assert "train.lr" in message and "clip_grad" in message
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert t.optimizer.state_dict()["state"] == {}  # the optimizer never stepped
    assert t.scheduler.last_epoch == 0


# -- exact resume -------------------------------------------------------------------------------
TIMING = ("epoch_seconds", "images_per_s", "images_per_s_rank")


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    """Dropout and a shuffled loader draw from the global RNG, AdamW carries moments and the schedule has a
    warm-up: all of them must come back from checkpoint.pt for the weights to match bit for bit."""
    train = Train(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", warmup_epochs=1, clip_grad=1.0)
    (tmp_path / "full").mkdir()
    (tmp_path / "split").mkdir()

    torch.manual_seed(0)
    full = model(dropout=0.3)
    full_history = trainer(full, ce_loss(full), train, run_dir=tmp_path / "full").fit()

    torch.manual_seed(0)
    first = model(dropout=0.3)
    trainer(first, ce_loss(first), train, run_dir=tmp_path / "split").fit(stop_after=1)
    assert (tmp_path / "split" / "checkpoint.pt").is_file()
    assert not torch.equal(flat(first), flat(full))  # one epoch is not two

    second = model(seed=123, dropout=0.3)  # a new process: other weights, other RNG state
    torch.manual_seed(123)
    resumed = trainer(second, ce_loss(second), train, run_dir=tmp_path / "split")
    resumed.resume(tmp_path / "split" / "checkpoint.pt")
    assert resumed.start == (1, 0)
    history = resumed.fit()

    for a, b in zip(full.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert without_timing(history) == without_timing(full_history)
    assert without_timing(read_metrics(tmp_path / "split")) == without_timing(read_metrics(tmp_path / "full"))
