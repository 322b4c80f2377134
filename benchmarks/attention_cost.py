"""What the `vit_to_vit` recipe's attention-map pairs cost per training step, and where that time goes.

The models are built as the runner builds them (the recipe file, `build_model`, `build_distiller`), with a
randomly initialised teacher (`--set teacher.pretrain=None`: nothing is trained). Three modes run full training
steps (forward, backward, gradient clipping, the recipe's optimizer) on one batch of the recipe's data at its batch
size, interleaved in one process (each round runs every mode once, shuffled) and reported as medians:

- `logit KD`: the recipe with `pairs=[]`;
- `attention (shipped)`: the recipe as shipped (maps `[B, heads, N, N]` recomputed from each hooked block's fused
  qkv output, the 'attention' adapter, `attention_kl`);
- `tokens (same blocks)`: the same blocks' token outputs `[B, N, C]` instead (`loss='mse'`, `normalize='teacher'`,
  the `tokens12` lever of RESULTS.md): what a pair on those blocks costs without recomputing attention.

Ratios are taken within each round against the logit-KD step, then the median over rounds, for the wall clock and
for this process's CPU time (on a shared machine the wall clock also counts waits for a core). A `torch.profiler` run of
the shipped mode then splits its step into named ranges: the teacher's and the student's forward, the qkv -> map
recompute on each side, the adapter, the feature loss; backward ops are charged to the range whose forward op made
them (matched by autograd sequence number), so "student qkv -> maps" backward is the backward through the recomputed
attention. Profiled times carry the profiler's per-op overhead: read them as shares, the medians as costs.

    python benchmarks/attention_cost.py --rounds 30
    python benchmarks/attention_cost.py --set train.batch_size=64 --rounds 20
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import functools
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import timm
import torch
from step_cost import measure
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from featdistill import Pair
from featdistill.capture import qkv
from featdistill.cli.build import build_distiller
from featdistill.data import make_loaders
from featdistill.distill.combiner import LossCombiner
from featdistill.models import build_model
from featdistill.recipe import apply_overrides, load_recipe
from featdistill.train.trainer import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
RECIPE = ROOT / "recipes" / "vit_to_vit.py"
PROFILED = ("logit KD", "attention (shipped)")


def token_pairs(pairs: list[Pair]) -> list[Pair]:
    """The blocks of ``pairs``' attention modules (``blocks.1.attn`` -> ``blocks.1``), paired on their token outputs."""
    def block(name: str) -> str:
        return name.removesuffix(".attn")

    return [Pair(student=block(p.student), teacher=block(p.teacher), loss="mse", normalize="teacher",
                 weight=p.weight) for p in pairs]


def build(recipe_path: Path, overrides: list[str], device: str):
    """``(recipe, {mode: Distiller}, x [B, C, S, S], y [B])``: one Distiller per mode on the same teacher; each
    student starts from the same weights."""
    recipe = apply_overrides(load_recipe(recipe_path), ["teacher.pretrain=None", *overrides])
    loaders = make_loaders(recipe.data, recipe.train.batch_size, seed=recipe.train.seed, num_workers=0)
    x, y = (t.to(device) for t in next(iter(loaders.train))[:2])
    torch.manual_seed(recipe.train.seed)
    teacher = build_model(recipe.teacher, loaders.num_classes, loaders.in_chans, where="teacher").to(device)
    torch.manual_seed(recipe.train.seed)
    student = build_model(recipe.student, loaders.num_classes, loaders.in_chans, where="student").to(device)
    pairs = {"logit KD": [], "attention (shipped)": list(recipe.pairs),
             "tokens (same blocks)": token_pairs(list(recipe.pairs))}
    distillers = {mode: build_distiller(replace(recipe, pairs=p), teacher, copy.deepcopy(student), x[:2],
                                        len(loaders.train.dataset)).train()
                  for mode, p in pairs.items()}
    return recipe, distillers, x, y


def make_train_step(distiller, train, x, y):
    """One step as :meth:`featdistill.train.Trainer.step` takes it (fp32): loss, backward, clipping, optimizer."""
    opt = make_optimizer(distiller.parameters(), train)

    def step():
        with record_function("forward (Distiller)"):
            loss = distiller(x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            if train.clip_grad:
                nn.utils.clip_grad_norm_(distiller.parameters(), train.clip_grad)
            opt.step()

    return step


def cpu_timed(step, into: list[float]):
    """``step`` that also appends this process's CPU time for it to ``into``: on a shared machine the wall clock
    also counts the time the process waited for a core, its CPU time does not."""
    def run():
        start = time.process_time()
        step()
        into.append(time.process_time() - start)

    return run


# -- profile: named ranges, backward charged to the range that made each autograd node ----------------------------
def _labelled(fn, label):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with record_function(label if isinstance(label, str) else label()):
            return fn(*args, **kwargs)

    return run


def _side() -> str:
    return "student" if torch.is_grad_enabled() else "teacher"  # the teacher's hooks run under no_grad


@contextlib.contextmanager
def ranges(distillers):
    """Wrap the pieces of each of ``distillers``' steps in ``record_function`` ranges (undone on exit)."""
    patched = []

    def patch(owner, name, label):
        is_class = isinstance(owner, type)
        old = owner.__dict__.get(name)  # None for a method an instance inherits: deleting the wrapper restores it
        setattr(owner, name, _labelled(old if is_class else getattr(owner, name), label))
        patched.append((owner, name, old))

    for cls in qkv.TRANSFORMS.values():
        patch(cls, "__call__", lambda: f"{_side()} qkv -> maps")
    patch(LossCombiner, "__call__", "loss terms (CE, logit KD)")
    for d in distillers:
        patch(d.teacher, "forward", "teacher forward")
        patch(d.student, "forward", "student forward")
        for adapter in d.adapters:
            patch(adapter, "forward", "adapter (student maps)")
            patch(adapter, "target", "adapter target (teacher maps)")
        for loss in d.feature_losses:
            patch(loss, "forward", "feature loss")
    try:
        yield
    finally:
        for owner, name, old in reversed(patched):
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


LABELS = ("teacher forward", "teacher qkv -> maps", "adapter target (teacher maps)", "student forward",
          "student qkv -> maps", "adapter (student maps)", "feature loss", "loss terms (CE, logit KD)",
          "forward (Distiller)", "backward", "optimizer")


def _label_of(event) -> str | None:
    while event is not None and event.name not in LABELS:
        event = event.cpu_parent
    return None if event is None else event.name


def breakdown(steps: dict, rounds: int) -> dict[str, dict[str, float]]:
    """``{mode: {range: ms per step}}`` over ``rounds`` profiled rounds (each runs every mode once, interleaved like
    the timing): forward ranges exclusive of the ranges nested in them; ``backward: <range>`` for the backward nodes
    made in that range, ``backward: other`` for the rest (gradient accumulation)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            for mode, step in steps.items():
                with record_function(f"step: {mode}"):
                    step()
    events = prof.events()
    made_in: dict[int, str | None] = {}
    for e in events:  # the forward op that made each autograd node (its backward node carries the same number)
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::engine") and _label_of(e) != "backward":
            made_in.setdefault(e.sequence_nr, _label_of(e))
    total = {mode: collections.defaultdict(float) for mode in steps}
    for e in events:
        if e.name in LABELS:
            key = e.name
            time_us = e.cpu_time_total - sum(c.cpu_time_total for c in _nested(e))
        elif e.name.startswith("autograd::engine::evaluate_function"):
            key, time_us = f"backward: {made_in.get(e.sequence_nr) or 'other'}", e.cpu_time_total
        else:
            continue
        root = e
        while root.cpu_parent is not None:
            root = root.cpu_parent
        total[root.name.removeprefix("step: ")][key] += time_us
    return {mode: {k: v / 1000 / rounds for k, v in t.items()} for mode, t in total.items()}


def _nested(event):
    """The labelled ranges and backward nodes directly inside ``event`` (not inside another labelled range)."""
    for child in event.cpu_children:
        if child.name in LABELS or child.name.startswith("autograd::engine::evaluate_function"):
            yield child
        else:
            yield from _nested(child)


ROWS = (  # (table row, profile keys): the first four are in every KD step, the next eight come with attention pairs
    ("teacher forward (model)", ["teacher forward"]),
    ("student forward + backward (model)", ["student forward", "backward: student forward"]),
    ("CE + logit KD terms, fwd + bwd", ["loss terms (CE, logit KD)", "backward: loss terms (CE, logit KD)"]),
    ("optimizer + clipping", ["optimizer"]),
    ("teacher qkv -> maps (no_grad)", ["teacher qkv -> maps"]),
    ("student qkv -> maps, forward", ["student qkv -> maps"]),
    ("student qkv -> maps, backward", ["backward: student qkv -> maps"]),
    ("adapter target (teacher maps)", ["adapter target (teacher maps)"]),
    ("adapter (student maps), forward", ["adapter (student maps)"]),
    ("adapter (student maps), backward", ["backward: adapter (student maps)"]),
    ("feature loss, forward", ["feature loss"]),
    ("feature loss, backward", ["backward: feature loss"]),
    ("rest (Distiller glue, autograd engine, gradient accumulation)", None),  # every key not named above
)


def render(meta: dict, modes: dict, profiled: dict, rows: dict) -> str:
    """The markdown of one run: the step times, then the profile's parts (what attention pairs add to a step)."""
    lines = [f"attention pair cost ({meta['recipe']}, {meta['device']}, {meta['threads']} thread(s), batch "
             f"{meta['batch']}, input {meta['input']}, {meta['rounds']} interleaved rounds after {meta['warmup']} "
             "warm-up; ratio = median over rounds of (mode / logit-KD step))"]
    if meta["note"]:
        lines.append(f"note: {meta['note']}")
    lines += ["", "| mode | median step ms | vs logit KD | CPU time ms | CPU time vs logit KD |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {mode} | {m['median_ms']:.1f} | {m['ratio']:.3f}x | {m['cpu_median_ms']:.1f} | "
              f"{m['cpu_ratio']:.3f}x |" for mode, m in modes.items()]
    a, b = profiled["logit KD"], profiled["attention (shipped)"]
    lines += ["", f"profile ({meta['profile_steps']} interleaved steps each, ms per step, profiler overhead "
              f"included: logit KD {sum(a.values()):.1f}, attention {sum(b.values()):.1f})", "",
              "| part of the step | logit KD | attention (shipped) | extra | extra / logit-KD step |",
              "|---|---:|---:|---:|---:|"]
    for row, cells in rows.items():
        extra = cells["attention (shipped)"] - cells["logit KD"]
        lines.append(f"| {row} | {cells['logit KD']:.2f} | {cells['attention (shipped)']:.2f} | {extra:+.2f} | "
                     f"{100 * extra / sum(a.values()):+.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override, as the runner's --set (teacher.pretrain=None is always set)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--note", default="", help="a line about the machine or the code state, printed above")
    parser.add_argument("--tag", default="attention_cost", help="output file stem under --out")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    recipe, distillers, x, y = build(args.recipe, args.overrides, args.device)
    steps = {mode: make_train_step(d, recipe.train, x, y) for mode, d in distillers.items()}
    cpu = {mode: [] for mode in steps}
    times = measure({mode: cpu_timed(step, cpu[mode]) for mode, step in steps.items()}, args.rounds, args.warmup,
                    args.device)
    cpu = {mode: ts[args.warmup:] for mode, ts in cpu.items()}
    modes = {mode: {"median_ms": 1000 * statistics.median(times[mode]),
                    # the ratio within each round, then the median over rounds: drift between rounds cancels
                    "ratio": statistics.median(t / b for t, b in zip(times[mode], times["logit KD"])),
                    "cpu_median_ms": 1000 * statistics.median(cpu[mode]),
                    "cpu_ratio": statistics.median(t / b for t, b in zip(cpu[mode], cpu["logit KD"]))}
             for mode in steps}
    with ranges([distillers[mode] for mode in PROFILED]):
        profiled = breakdown({mode: steps[mode] for mode in PROFILED}, args.profile_steps)
    for d in distillers.values():
        d.close()
    named = {k for _, keys in ROWS if keys for k in keys}
    rows = {row: {mode: sum(v for k, v in p.items() if (k in keys if keys else k not in named))
                  for mode, p in profiled.items()} for row, keys in ROWS}
    meta = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "device": args.device, "torch": torch.__version__,
        "timm": timm.__version__, "recipe": str(args.recipe.relative_to(ROOT) if args.recipe.is_absolute()
                                                 and args.recipe.is_relative_to(ROOT) else args.recipe),
        "overrides": ["teacher.pretrain=None", *args.overrides], "batch": recipe.train.batch_size,
        "input": list(x.shape), "rounds": args.rounds, "warmup": args.warmup, "profile_steps": args.profile_steps,
        "note": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "modes": modes, "profile_ms": profiled,
                                                           "profile_rows_ms": rows}, indent=2))
    table = render(meta, modes, profiled, rows)
    (args.out / f"{args.tag}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
