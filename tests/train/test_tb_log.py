"""``train.log=['tensorboard']``: the Trainer writes every step's terms and every epoch's summary to
``<run_dir>/tensorboard/`` as scalars, the same numbers as ``metrics.jsonl``, read back here with TensorBoard's own
EventAccumulator; a resumed run purges what its checkpoint did not keep."""

import importlib.util
import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # the dev extra has it
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from featdistill.config import Train
from featdistill.errors import FeatdistillError
from featdistill.train import Trainer
from featdistill.train.tb_log import TensorBoardLog

G = torch.Generator().manual_seed(0)
X, Y = torch.randn(32, 6, generator=G), torch.randint(0, 3, (32,), generator=G)
TRAIN = Train(epochs=2, batch_size=8, lr=0.01, warmup_epochs=0, log=("tensorboard",))


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader

    def set_epoch(self, epoch: int) -> None:
        pass


def fit(run_dir, train=TRAIN, stop_after=None, resume=False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def loss_fn(batch):
        task = F.cross_entropy(batch.run(net), batch.labels)
        return {"loss": 2 * task, "task": task, "feat/a~b": task}

    data = TensorDataset(X, Y)
    trainer = Trainer(net, loss_fn, Loaders(DataLoader(data, batch_size=8), DataLoader(data, batch_size=16)), train,
                      torch.device("cpu"), net, run_dir=run_dir, quiet=True)
    if resume:
        trainer.resume(run_dir / "checkpoint.pt")
    return trainer.fit(stop_after=stop_after)


def scalars(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_step_and_epoch_is_a_scalar_with_the_metrics_values(tmp_path):
    fit(tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    found = scalars(tmp_path / "tensorboard")
    assert {"step/loss", "step/task", "step/feat/a~b", "step/lr", "epoch/val_accuracy", "epoch/loss",
            "epoch/epoch_seconds", "epoch/images_per_s"} <= set(found)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [s for s, _ in found["step/loss"]] == list(range(8))  # 4 steps per epoch, 2 epochs
    assert [v for _, v in found["step/loss"]] == pytest.approx([r["loss"] for r in steps])
    assert [v for _, v in found["step/lr"]] == pytest.approx([r["lr"] for r in steps])
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [s for s, _ in found["epoch/val_accuracy"]] == [3, 7]  # each epoch's last step: one x-axis with the steps
    assert [v for _, v in found["epoch/val_accuracy"]] == pytest.approx([r["val_accuracy"] for r in epochs])


def test_without_log_or_run_dir_nothing_is_written(tmp_path):
    fit(tmp_path, Train(epochs=1, batch_size=8, warmup_epochs=0))
    assert not (tmp_path / "tensorboard").exists()


def test_a_resumed_run_shows_each_step_once(tmp_path):
    fit(tmp_path, stop_after=1)
    fit(tmp_path, resume=True)
    found = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in found["step/loss"]] == list(range(8))
    assert [s for s, _ in found["epoch/loss"]] == [3, 7]


def test_purge_hides_what_a_stopped_run_wrote_past_its_checkpoint(tmp_path):
    log = TensorBoardLog(tmp_path, steps_per_epoch=4)
    log.write([{"kind": "step", "epoch": 1, "step": s, "loss": 1.0} for s in range(6)])
    log.close()
    log = TensorBoardLog(tmp_path, steps_per_epoch=4, purge_step=4)  # the checkpoint was at step 4
    log.write([{"kind": "step", "epoch": 1, "step": s, "loss": 2.0} for s in range(4, 8)])
    log.close()
    assert scalars(tmp_path)["step/loss"] == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0),
                                              (7, 2.0)]


def test_missing_tensorboard_is_a_clear_error_before_training(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(FeatdistillError, match="pip install tensorboard"):
        fit(tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
