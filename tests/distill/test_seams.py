"""The seams the next methods plug into, each used the way its first user will: a logit loss registered by name,
a loss that needs sample indices fed from an ``(x, y, index)`` loader, a dict batch reaching a model that takes
``input_ids``, and a Teacher stand-in that replays recorded outputs instead of running a model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from featdistill import LOGIT_LOSSES, Batch, Distiller, LogitKD, LogitLoss, Loss, Pair, Teacher, TeacherOutputs
from featdistill.config import Train
from featdistill.errors import FeatdistillError
from featdistill.train import Trainer


def cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width, 5))


X = torch.randn(6, 1, 6, 6, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3, 4, 0])


class ProbL1(LogitLoss):
    """Sum over classes of |softmax(s/T) - softmax(t/T)|, mean over rows: a logit loss no shipped code knows."""

    formula = "L1(p_t, p_s; T={T})"

    def forward(self, student, teacher, labels=None):
        t = self.temperature
        return (student.float().div(t).softmax(-1) - teacher.float().div(t).softmax(-1)).abs().sum(-1).mean()


@pytest.fixture
def prob_l1():
    LOGIT_LOSSES.register("test_prob_l1")(ProbL1)  # as a plug-in module would, at import
    yield
    del LOGIT_LOSSES._items["test_prob_l1"]  # leave the shipped registry as it was for other tests


def test_a_logit_loss_registered_by_name_is_used_from_logitkd(prob_l1):
    assert LogitKD(loss="test_prob_l1").problems() == []
    assert "unknown logit loss 'test_prob_l1x'" in LogitKD(loss="test_prob_l1x").problems()[0]
    teacher, student = cnn(8, 0), cnn(4, 1)
    with Distiller(teacher, student, kd=LogitKD(temperature=2.0, alpha=0.25, loss="test_prob_l1")) as d:
        out = d(X, Y)
        assert "L1(p_t, p_s; T=2)" in d.plan()
    with torch.no_grad():
        s, t = student(X), teacher(X)
    hand = (s.div(2).softmax(-1) - t.div(2).softmax(-1)).abs().sum(-1).mean()
    torch.testing.assert_close(out["kd"], 0.75 * hand)
    torch.testing.assert_close(out["task"], 0.25 * F.cross_entropy(s, Y))


class IndexedMemory(Loss):
    """A loss with a per-sample memory (as contrastive methods keep): it needs each sample's dataset index."""

    needs_index = True

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("seen", torch.zeros(size, dtype=torch.long))
        self.batches: list[torch.Tensor] = []

    def forward(self, student, teacher, index=None):
        self.batches.append(index.clone())
        self.seen[index] += 1
        return F.mse_loss(student, teacher)


def test_a_loss_that_needs_indices_gets_them_from_an_indexed_loader():
    n = 10
    data = TensorDataset(torch.randn(n, 1, 6, 6), torch.randint(0, 5, (n,)), torch.arange(n))
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    teacher, student = cnn(8, 0), cnn(4, 1)
    loss = IndexedMemory(n)
    d = Distiller(teacher, student, [Pair("0", "0", loss=loss)], sample_input=X[:2])
    assert d.needs_index and d.feature_losses[0] is loss
    with pytest.raises(FeatdistillError, match="needs each sample's dataset index.*with_index=True"):
        d(X, Y)  # a loader without indices is told how to give them
    assert any(name.endswith("seen") for name in d.state_dict()), "the loss's memory is checkpointed with the student"

    class Loaders:  # what the Trainer needs of featdistill's loaders
        train = val = loader

        def set_epoch(self, epoch):
            pass

    trainer = Trainer(d, d, Loaders(), Train(epochs=1, batch_size=4, lr=1e-3), torch.device("cpu"), student,
                      quiet=True)
    trainer.fit()
    assert [len(b) for b in loss.batches] == [4, 4, 2]
    assert torch.cat(loss.batches).sort().values.tolist() == list(range(n))  # every sample once, by its index
    assert loss.seen.tolist() == [1] * n
    d.close()


def test_the_runner_loaders_yield_indices_on_request():
    from featdistill.data import Data, make_loaders

    loaders = make_loaders(Data(augment=False), batch_size=8, with_index=True)
    x, y, index = next(iter(loaders.train))
    dataset = loaders.train.dataset
    assert index.dtype == torch.int64 and index.shape == (8,)
    for j in range(3):  # each index names the very sample it came with
        xi, yi, ii = dataset[int(index[j])]
        assert torch.equal(xi, x[j]) and yi == int(y[j]) and ii == int(index[j])
    assert len(next(iter(make_loaders(Data(), batch_size=8).train))) == 2  # off by default


class TinyLM(nn.Module):
    """A causal-LM-shaped model: ``forward(input_ids [B, T], attention_mask) -> {'logits': [B, T, V]}``."""

    def __init__(self, vocab: int, width: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.head(torch.tanh(self.mix(self.embed(input_ids))))}


def test_a_dict_batch_reaches_a_model_that_takes_input_ids_and_terms_are_per_token():
    vocab, temp, alpha = 11, 2.0, 0.5
    teacher, student = TinyLM(vocab, 16, 0), TinyLM(vocab, 8, 1)
    ids = torch.randint(0, vocab, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, 0] = -100  # a real token nothing is predicted at
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    # 'mix' gives a [B, T, C] sequence: no patch grid, so 'auto' projects each token (width 8 -> 16)
    with Distiller(teacher, student, [Pair("mix", "mix", loss="cosine")], kd=LogitKD(temp, alpha),
                   sample_input={"input_ids": ids, "attention_mask": mask}) as d:
        assert d.planned[0].adapter_name == "LastDim"
        out = d(batch)
        adapter = d.adapters[0]
        with torch.no_grad():
            s, t = student(ids)["logits"], teacher(ids)["logits"]
            s_mix, t_mix = student.mix(student.embed(ids)), teacher.mix(teacher.embed(ids))
            # feature terms count real tokens (attention mask), labels aside: 10 of the 15 positions
            feat = (1 - F.cosine_similarity(adapter(s_mix), t_mix, dim=-1))[mask == 1].mean()
    keep = (mask == 1) & (labels != -100)  # 9 tokens count, not 15 positions
    assert int(keep.sum()) == 9
    s_k, t_k, y_k = s[keep], t[keep], labels[keep]
    p_t = t_k.div(temp).softmax(-1)
    kl = (p_t * (p_t.log() - s_k.div(temp).log_softmax(-1))).sum(-1).mean()  # per kept token
    torch.testing.assert_close(out["kd"], (1 - alpha) * kl * temp**2)
    torch.testing.assert_close(out["task"], alpha * F.cross_entropy(s_k, y_k))
    torch.testing.assert_close(out["feat/mix~mix"], feat)


class Recorded(Teacher):
    """A Teacher stand-in: replays outputs recorded earlier, by sample index; never runs a model."""

    def __init__(self, records: dict[int, tuple[torch.Tensor, list[torch.Tensor]]]):
        self.records = records
        self.calls = 0

    def __call__(self, batch: Batch, need_logits: bool = True) -> TeacherOutputs:
        self.calls += 1
        rows = [self.records[int(i)] for i in batch.index]
        logits = torch.stack([r[0] for r in rows])
        features = [torch.stack([r[1][k] for r in rows]) for k in range(len(self.pairs))]
        return TeacherOutputs(logits if need_logits else None, features)


def test_a_teacher_stand_in_replays_recorded_outputs_instead_of_running_a_model():
    teacher = cnn(8, 0)
    pairs = [Pair("0", "0"), Pair("4", "4", loss="cosine")]
    index = torch.arange(len(X))
    taps = {}
    hooks = [teacher[int(n)].register_forward_hook(lambda m, a, o, n=n: taps.__setitem__(n, o.detach()))
             for n in ("0", "4")]
    with torch.no_grad():
        logits = teacher(X)
    for h in hooks:
        h.remove()
    records = {int(i): (logits[i], [taps["0"][i], taps["4"][i]]) for i in index}

    live_student, replay_student = cnn(4, 1), cnn(4, 1)
    torch.manual_seed(5)  # the same adapter initialisation for both
    with Distiller(teacher, live_student, pairs, sample_input=(X[:2])) as live:
        expected = live(X, Y, index)
    stand_in = Recorded(records)
    torch.manual_seed(5)
    with Distiller(stand_in, replay_student, pairs, sample_input=Batch(X[:2], index=index[:2])) as replay:
        assert replay.teacher is None and "teacher" not in replay.plan().split("\n")[0]
        got = replay(X, Y, index)
    assert stand_in.calls == 2  # the dry run and the step: the recorded outputs served both
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_a_batch_reads_every_loader_shape():
    x, y, i = torch.zeros(2, 3), torch.tensor([1, 0]), torch.tensor([5, 7])
    assert Batch.of((x, y)).index is None and Batch.of((x, y, i)).index is i
    mapping = Batch.of({"input_ids": x.long(), "attention_mask": torch.ones(2, 3), "labels": y, "index": i})
    assert set(mapping.inputs) == {"input_ids", "attention_mask"} and mapping.labels is y and mapping.index is i
    assert mapping.size == 2 and mapping.mask is not None and Batch.of((x, y)).mask is None
    with pytest.raises(TypeError, match="4 items"):
        Batch.of((x, y, i, i))
