"""The training loop shared by the teacher stage and the distillation run.

Epochs of ``loss_fn(batch) -> {'loss': ..., <term>: ...}`` steps (``batch``: a :class:`~featdistill.data.Batch`)
with AdamW/SGD, linear warm-up then cosine decay (per step), gradient clipping, autocast, validation each epoch,
``metrics.jsonl`` (and TensorBoard scalars with ``train.log=['tensorboard']``, :mod:`.tb_log`) and an atomic
checkpoint each epoch that resumes exactly (weights, optimizer, scheduler, scaler, RNG, position).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..data.batch import IGNORE_INDEX, Batch
from ..errors import FeatdistillError
from . import speedups
from .checkpoint import CHECKPOINT, METRICS, atomic_save, read_checkpoint, rng_state, set_rng_state, trim_metrics
from .distributed import World, average, sum_counts, wait_for_main
from .interrupt import Interrupted, StopRequest
from .lm_eval import evaluate_lm, is_text_loader, logits_of
from .tb_log import TB_DIR, TensorBoardLog, require_tensorboard


def autocast(device: torch.device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_optimizer(params, train) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                               nesterov=train.momentum > 0)  # torch refuses Nesterov without momentum
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


class WarmupCosine:
    """LR factor at a step: linear from ~0 to 1 over the warm-up, then cosine down to 1% (picklable)."""

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup, self.total = warmup_steps, max(total_steps, 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none", world: World | None = None) -> float:
    """Top-1 accuracy of ``model`` over ``loader``, as a fraction: per image for logits ``[B, K]``, per predicted
    token (labels not ``IGNORE_INDEX``) for ``[B, T, V]``. With a distributed ``world``, every rank takes every
    ``world.size``-th batch and the counts are summed: the same accuracy, computed in ``1 / world.size`` of the time."""
    world = world or World()
    was_training = model.training
    model.eval()
    correct = total = 0
    for i, raw in enumerate(loader):
        if i % world.size != world.rank:
            continue
        batch = Batch.of(raw).to(device)
        with autocast(device, amp):
            logits = batch.run(model)
        if isinstance(logits, (tuple, list, Mapping)):  # a Hugging Face ModelOutput is a Mapping
            logits = logits_of(logits)
        y = batch.labels
        counted = y != IGNORE_INDEX
        correct += ((logits.argmax(-1) == y) & counted).sum().item()
        total += counted.sum().item()
    model.train(was_training)
    correct, total = sum_counts([correct, total], device, world)
    return correct / max(total, 1)


class NonFiniteLoss(FeatdistillError):
    """The loss became NaN or infinite; ``term`` is the first term that did, ``values`` all terms of that step."""

    def __init__(self, term: str, values: dict[str, float], position: tuple[int, int], hint: str):
        self.term, self.values, self.position = term, values, position
        epoch, batch = position
        self.what = (f"the loss became {values['loss']} at epoch {epoch + 1}, batch {batch + 1}; the first "
                     f"non-finite term is {term!r} ({values})")
        super().__init__(f"{self.what}. {hint}")


class Trainer:
    """Trains ``module`` (a Distiller or a plain classifier) with ``loss_fn`` and validates ``eval_model``.

    With a ``run_dir`` it writes ``metrics.jsonl`` and, after each epoch and when stopped by a signal, a checkpoint
    that :meth:`resume` continues from exactly (the position within the epoch included). With a distributed
    ``world`` (:mod:`.distributed`; ``loss_fn`` then the DDP-wrapped ``module``), the terms and the stop signal are
    averaged over the ranks each step, validation is sharded, and images/s count every rank."""

    def __init__(self, module: nn.Module, loss_fn: Callable[[Batch], dict], loaders, train,
                 device: torch.device, eval_model: nn.Module, run_dir: Path | None = None, desc: str = "train",
                 quiet: bool = False, world: World | None = None):
        self.world, self._request, self._agreed = world or World(), None, None
        self.module, self.loss_fn, self.loaders, self.train = module, loss_fn, loaders, train
        self.device, self.eval_model, self.run_dir, self.desc, self.quiet = device, eval_model, run_dir, desc, quiet
        if train.amp == "fp16" and device.type != "cuda":
            raise FeatdistillError("train.amp='fp16' needs CUDA; use train.amp='bf16' on the CPU")
        self.optimizer = make_optimizer(module.parameters(), train)
        self.steps = len(loaders.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._schedule())
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.amp == "fp16")
        self.memory_format = speedups.memory_format(train)  # image batches in the models' layout
        self.start: tuple[int, int] = (0, 0)  # (epoch, batches already done in it)
        self.partial: dict = {}  # sums of a part-done epoch, restored by resume
        self._pending_rng: dict | None = None  # mid-epoch resume: restored once the epoch's iterator exists
        self.history: list[dict] = []
        self._unit = "seq/s" if is_text_loader(loaders.val) else "img/s"  # a text sample is one block of tokens
        self._tb: TensorBoardLog | None = None  # train.log=['tensorboard']: opened at the first record
        if run_dir is not None and "tensorboard" in getattr(train, "log", ()):
            require_tensorboard()  # now, not after the first epoch

    def _schedule(self) -> WarmupCosine:
        return WarmupCosine(round(self.train.warmup_epochs * self.steps), self.train.epochs * self.steps)

    # -- checkpoints ------------------------------------------------------------------------
    def state(self, position: tuple[int, int], partial: dict | None = None) -> dict:
        return {"position": list(position), "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "history": json.dumps(self.history),
                "partial": json.dumps(partial or {})}

    def resume(self, path: Path, state: dict | None = None) -> None:
        """Continue from the checkpoint at ``path`` (``state``: its contents, when already read). The learning rate,
        epochs and clip_grad come from this Trainer's ``train`` settings (a resumed run may change them); with the
        saved ones, nothing changes."""
        state = state if state is not None else read_checkpoint(path)
        try:
            self.module.load_state_dict(state["module"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as exc:
            raise FeatdistillError(f"checkpoint {str(path)!r} does not fit this run's models: "
                                   f"{str(exc).splitlines()[0]}. Start a new run with another --out.") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.lr_lambdas = [self._schedule()]  # the saved schedule object would pin the old epochs
        self.scheduler.base_lrs = [self.train.lr for _ in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.scaler.load_state_dict(state["scaler"])
        self.start = tuple(state["position"])
        self.history = json.loads(state["history"])
        self.partial = json.loads(state.get("partial", "{}"))
        if self.world.rank:
            pass  # the checkpoint holds rank 0's random state; other ranks keep the streams derived from the seed
        elif self.start[1]:
            self._pending_rng = state["rng"]  # after the epoch's data iterator is made: it draws a seed
        else:
            set_rng_state(state["rng"])
        if self.run_dir:
            trim_metrics(self.run_dir / METRICS, self.start[0], self.start[0] * self.steps + self.start[1])

    def _log(self, records: list[dict]) -> None:
        if self.run_dir:
            with open(self.run_dir / METRICS, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
            if "tensorboard" in getattr(self.train, "log", ()):
                self._tensorboard().write(records)

    def _tensorboard(self) -> TensorBoardLog:
        """The writer of ``run_dir/tensorboard`` (:mod:`.tb_log`). A resumed run purges the events past the point
        its checkpoint continues from, as ``metrics.jsonl`` is trimmed there."""
        if self._tb is None:
            folder = self.run_dir / TB_DIR
            purge = self.start[0] * self.steps + self.start[1] if folder.exists() else None
            self._tb = TensorBoardLog(folder, self.steps, purge)
        return self._tb

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None, stop: StopRequest | None = None) -> list[dict]:
        """Train from ``start`` to ``train.epochs``; ``stop_after`` ends after that many epochs (as a crash would);
        a signal caught by ``stop`` ends after the step in flight, with a checkpoint there (:class:`Interrupted`)."""
        train, loaders = self.train, self.loaders
        self._request = stop  # read by step(): a signal on any rank stops every rank at the same step
        for epoch in range(self.start[0], train.epochs):
            if stop_after is not None and epoch >= stop_after:
                break
            skip = self.start[1] if epoch == self.start[0] else 0
            if skip:
                loaders.set_epoch(epoch, skip_batches=skip)
            else:
                loaders.set_epoch(epoch)
            self.module.train()
            partial = self.partial if skip else {}
            sums: dict[str, float] = dict(partial.get("sums", {}))
            seen, before = partial.get("seen", 0), partial.get("elapsed", 0.0)
            records: list[dict] = []  # written once per epoch, beside the checkpoint, not once per step
            start = time.perf_counter()
            batches = iter(loaders.train)
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            bar = tqdm(batches, desc=f"{self.desc} {epoch + 1}/{train.epochs}", total=self.steps, initial=skip,
                       leave=False, disable=self.quiet, mininterval=1.0, dynamic_ncols=True)
            for i, raw in enumerate(bar, start=skip):
                batch = Batch.of(raw).to(self.device, non_blocking=True, memory_format=self.memory_format)
                lr = self.scheduler.get_last_lr()[0]  # the rate this step trains at (step() advances it)
                terms = self.step(batch, (epoch, i))
                n = batch.size
                seen += n
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                records.append({"kind": "step", "epoch": epoch, "step": epoch * self.steps + i, "lr": lr, **terms})
                rate = seen * self.world.size / max(time.perf_counter() - start, 1e-9)
                shown = {k.replace("feat/", ""): f"{v / seen:.3f}" for k, v in sums.items()}
                bar.set_postfix(shown | {self._unit: f"{rate:.0f}"}, refresh=False)
                if self._signalled(stop) is not None and i + 1 < self.steps:
                    self._stop(self._signalled(stop), (epoch, i + 1), records, {
                        "sums": sums, "seen": seen, "elapsed": before + time.perf_counter() - start})
            elapsed = before + time.perf_counter() - start
            rank_rate = seen / max(elapsed, 1e-9)
            total_rate, = sum_counts([rank_rate], self.device, self.world)  # every rank's images, as measured
            lm = evaluate_lm(self.eval_model, loaders.val, self.device, train.amp, self.world) \
                if is_text_loader(loaders.val) else None  # text: held-out loss and bits per byte, token accuracy
            val = lm["accuracy"] if lm else evaluate(self.eval_model, loaders.val, self.device, train.amp, self.world)
            lm_keys = {f"val_{k}": lm[k] for k in ("loss", "perplexity", "bits_per_byte")} if lm else {}
            summary = {"kind": "epoch", "epoch": epoch, "val_accuracy": val, **lm_keys, "epoch_seconds": elapsed,
                       "images_per_s": total_rate, "images_per_s_rank": rank_rate,
                       **{k: v / max(seen, 1) for k, v in sums.items()}}
            self.history.append(summary)
            self._log(records + [summary])
            if not self.quiet:
                shown = " ".join(f"{k.replace('feat/', '')}={summary[k]:.3f}" for k in sums)
                held = f"val {val:.2%}" if lm is None else \
                    f"val {lm['loss']:.3f} nats/token, {lm['bits_per_byte']:.3f} bits/byte"
                print(f"{self.desc} epoch {epoch + 1}/{train.epochs}: {held}  {shown}  "
                      f"({elapsed:.1f} s, {summary['images_per_s']:.0f} {self._unit})", flush=True)
            if self.run_dir:
                atomic_save(self.state((epoch + 1, 0)), self.run_dir / CHECKPOINT)
            if self.world.distributed:
                wait_for_main()  # however long rank 0 takes to write the checkpoint: beyond the collectives' timeout
            if self._signalled(stop) is not None:
                raise Interrupted(self._signalled(stop), (epoch + 1, 0), self.run_dir is not None, self.run_dir)
        if self._tb is not None:  # every record is written (flushed as it went): complete the event file
            self._tb.close()
            self._tb = None
        return self.history

    def _signalled(self, stop: StopRequest | None) -> int | None:
        """The signal to stop on: this process's, or in a distributed job the one the ranks agreed on at the last
        step (a signal seen by one rank between two steps must not stop it alone)."""
        if stop is None:
            return None
        return self._agreed if self.world.distributed else stop.signum

    def _stop(self, signum: int, position: tuple[int, int], records: list[dict], partial: dict) -> None:
        """Write what this epoch did so far and a checkpoint at ``position``, then end the loop."""
        if self.run_dir:
            self._log(records)
            atomic_save(self.state(position, partial), self.run_dir / CHECKPOINT)
        raise Interrupted(signum, position, self.run_dir is not None, self.run_dir)

    def step(self, batch: Batch, position: tuple[int, int] = (0, 0)) -> dict[str, float]:
        with autocast(self.device, self.train.amp):
            terms = self.loss_fn(batch)
        # every term in one transfer (averaged over the ranks, with their stop signals): one device sync per step
        request = self._request
        stacked = torch.stack([v.detach().float() for v in terms.values()])
        averaged, self._agreed = average(stacked, request.signum if request is not None else None, self.world)
        values = dict(zip(terms, averaged))
        if not math.isfinite(values["loss"]):
            term = next((k for k, v in values.items() if k != "loss" and not math.isfinite(v)), "loss")
            hint = "Lower train.lr" + ("" if self.train.clip_grad else ", set train.clip_grad (e.g. 1.0)") + \
                ", or lower the weight of that term."
            raise NonFiniteLoss(term, values, position, hint)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.train.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.train.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values
