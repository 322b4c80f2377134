"""The training loop shared by the teacher stage and the distillation run.

Epochs of ``loss_fn(batch) -> {'loss': ..., <term>: ...}`` steps (``batch``: a :class:`~featdistill.data.Batch`)
with AdamW/SGD, linear warm-up then cosine decay (per step), gradient clipping, autocast, validation each epoch,
``metrics.jsonl`` and an atomic checkpoint each epoch that resumes exactly (weights, optimizer, scheduler, scaler,
RNG, position).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..data.batch import IGNORE_INDEX, Batch
from ..errors import FeatdistillError
from .checkpoint import CHECKPOINT, atomic_save, rng_state, set_rng_state


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
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none") -> float:
    """Top-1 accuracy of ``model`` over ``loader``, as a fraction: per image for logits ``[B, K]``, per predicted
    token (labels not ``IGNORE_INDEX``) for ``[B, T, V]``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for raw in loader:
        batch = Batch.of(raw).to(device)
        with autocast(device, amp):
            logits = batch.run(model)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        y = batch.labels
        counted = y != IGNORE_INDEX
        correct += ((logits.argmax(-1) == y) & counted).sum().item()
        total += counted.sum().item()
    model.train(was_training)
    return correct / max(total, 1)


class Trainer:
    """Trains ``module`` (a Distiller or a plain classifier) with ``loss_fn`` and validates ``eval_model``."""

    def __init__(self, module: nn.Module, loss_fn: Callable[[Batch], dict], loaders, train,
                 device: torch.device, eval_model: nn.Module, run_dir: Path | None = None, desc: str = "train",
                 quiet: bool = False):
        self.module, self.loss_fn, self.loaders, self.train = module, loss_fn, loaders, train
        self.device, self.eval_model, self.run_dir, self.desc, self.quiet = device, eval_model, run_dir, desc, quiet
        if train.amp == "fp16" and device.type != "cuda":
            raise FeatdistillError("train.amp='fp16' needs CUDA; use train.amp='bf16' on the CPU")
        self.optimizer = make_optimizer(module.parameters(), train)
        steps = len(loaders.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(round(train.warmup_epochs * steps), train.epochs * steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.amp == "fp16")
        self.start_epoch = 0
        self.history: list[dict] = []

    # -- checkpoints ------------------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        return {"epoch": epoch, "module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "history": json.dumps(self.history)}

    def resume(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FeatdistillError(f"cannot read checkpoint {str(path)!r} ({exc}); it may be damaged. "
                                   "Start a new run with another --out.") from None
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        self.history = json.loads(state["history"])
        self._trim_metrics(state["epoch"])

    def _trim_metrics(self, last_epoch: int) -> None:
        """Drop metric lines written after the checkpoint (by the run that crashed) before appending."""
        path = self.run_dir / "metrics.jsonl" if self.run_dir else None
        if path and path.exists():
            keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= last_epoch]
            path.write_text("".join(line + "\n" for line in keep))

    def _log(self, records: list[dict]) -> None:
        if self.run_dir:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train from ``start_epoch`` to ``train.epochs``; ``stop_after`` ends early (as a crash would)."""
        train, loaders = self.train, self.loaders
        steps = len(loaders.train)
        for epoch in range(self.start_epoch, train.epochs):
            if stop_after is not None and epoch >= stop_after:
                break
            loaders.set_epoch(epoch)
            self.module.train()
            sums: dict[str, float] = {}
            records: list[dict] = []  # written once per epoch, beside the checkpoint, not once per step
            seen, start = 0, time.perf_counter()
            bar = tqdm(loaders.train, desc=f"{self.desc} {epoch + 1}/{train.epochs}", leave=False,
                       disable=self.quiet, mininterval=1.0, dynamic_ncols=True)
            for i, raw in enumerate(bar):
                batch = Batch.of(raw).to(self.device, non_blocking=True)
                lr = self.scheduler.get_last_lr()[0]  # the rate this step trains at (step() advances it)
                terms = self.step(batch)
                n = batch.size
                seen += n
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                records.append({"kind": "step", "epoch": epoch, "step": epoch * steps + i,
                                "lr": lr, **terms})
                rate = seen / max(time.perf_counter() - start, 1e-9)
                shown = {k.replace("feat/", ""): f"{v / seen:.3f}" for k, v in sums.items()}
                bar.set_postfix(shown | {"img/s": f"{rate:.0f}"}, refresh=False)
            elapsed = time.perf_counter() - start
            val = evaluate(self.eval_model, loaders.val, self.device, train.amp)
            summary = {"kind": "epoch", "epoch": epoch, "val_accuracy": val, "epoch_seconds": elapsed,
                       "images_per_s": seen / max(elapsed, 1e-9), **{k: v / max(seen, 1) for k, v in sums.items()}}
            self.history.append(summary)
            self._log(records + [summary])
            if not self.quiet:
                shown = " ".join(f"{k.replace('feat/', '')}={summary[k]:.3f}" for k in sums)
                print(f"{self.desc} epoch {epoch + 1}/{train.epochs}: val {val:.2%}  {shown}  "
                      f"({elapsed:.1f} s, {summary['images_per_s']:.0f} img/s)", flush=True)
            if self.run_dir:
                atomic_save(self.state(epoch), self.run_dir / CHECKPOINT)
        return self.history

    def step(self, batch: Batch) -> dict[str, float]:
        with autocast(self.device, self.train.amp):
            terms = self.loss_fn(batch)
        # every term in one transfer: a single device sync per step
        values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
        if not math.isfinite(values["loss"]):
            raise FeatdistillError(f"the loss became {values['loss']} ({values}). "
                                   "Lower train.lr, enable train.clip_grad, or lower the feature weights.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.train.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.train.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values
