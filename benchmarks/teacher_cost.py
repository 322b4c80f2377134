"""What the teacher costs per epoch, and what a teacher-output cache saves: for each recipe, one training epoch of
    alone   the student with cross-entropy only (the floor: no teacher at all)
    live    the recipe as shipped (logit KD + its feature pairs), the teacher running on every batch
    cached  the same, the teacher's outputs read from a `TeacherCache` (recorded first, timed apart)
    cached_logit  logit KD only (pairs=[]) from its own cache: what is left is the student's own side of KD, so
            cached - cached_logit is what the feature pairs cost and cached_logit - alone what the logit term and
            reading the cache cost
over the recipe's real training loader (data loading included). Each round runs one epoch of every mode in a
shuffled order (drift on a shared machine hits all alike); the table gives median epoch seconds and each mode's
median ratio to `alone` within a round. The cache's recording (one teacher pass per view) is timed once, beside.

    cd benchmarks && python teacher_cost.py ../recipes/vit_to_deit.py ../recipes/resnet_to_resnet.py --rounds 5

Teachers come from the teacher cache ($FEATDISTILL_CACHE), trained first if missing; the output cache is written
to a temporary folder and removed, so every run records it afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from journal import machine
from step_cost import measure

from featdistill.cli.build import build_distiller
from featdistill.cli.run import train_loaders
from featdistill.cli.teacher import prepare_teacher
from featdistill.data import Batch, sample_batch
from featdistill.models import build_model
from featdistill.recipe import apply_overrides, load_recipe
from featdistill.train.trainer import make_optimizer

OUT = Path(__file__).resolve().parent / "out"


def epoch_of(loaders, module, loss_of, optimizer, round_box, device):
    """One training epoch of ``module`` over the train loader, at the epoch ``round_box[0]`` (views follow it)."""
    def run():
        loaders.set_epoch(round_box[0])
        module.train()
        for raw in loaders.train:
            loss = loss_of(Batch.of(raw).to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return run


def recipe_cost(path: str, views: int, rounds: int, warmup: int, device: torch.device, overrides: list[str]) -> dict:
    # imported here: it reads $FEATDISTILL_CACHE, which main() points at a temporary folder for the output cache
    from featdistill.cli.teacher_outputs import cached_distiller

    recipe = apply_overrides(load_recipe(Path(path)), [f"teacher_cache.views={views}", *overrides])
    loaders = train_loaders(recipe)
    teacher, source = prepare_teacher(recipe, loaders, device, quiet=True)
    sample = Batch.of(sample_batch(recipe.data, 2)).to(device).inputs
    students = {}
    for mode in ("alone", "live", "cached", "cached_logit"):
        torch.manual_seed(recipe.train.seed)
        students[mode] = build_model(recipe.student, loaders.num_classes, loaders.in_chans,
                                     where="student").to(device)
    live = build_distiller(recipe, teacher, students["live"], sample, len(loaders.train.dataset))
    start = time.perf_counter()
    cached, _, note = cached_distiller(recipe, teacher, students["cached"], loaders, device, sample)
    record_s = time.perf_counter() - start
    logit_only = apply_overrides(recipe, ["pairs=[]"])
    cached_logit, _, _ = cached_distiller(logit_only, teacher, students["cached_logit"], loaders, device, sample)
    loaders.on_epoch.append(cached.teacher_source.set_epoch)
    loaders.on_epoch.append(cached_logit.teacher_source.set_epoch)
    box = [0]
    alone = students["alone"]
    modes = {
        "alone": epoch_of(loaders, alone, lambda b: F.cross_entropy(alone(b.inputs), b.labels),
                          make_optimizer(alone.parameters(), recipe.train), box, device),
        "live": epoch_of(loaders, live, lambda b: live(b)["loss"], make_optimizer(live.parameters(), recipe.train),
                         box, device),
        "cached": epoch_of(loaders, cached, lambda b: cached(b)["loss"],
                           make_optimizer(cached.parameters(), recipe.train), box, device),
        "cached_logit": epoch_of(loaders, cached_logit, lambda b: cached_logit(b)["loss"],
                                 make_optimizer(cached_logit.parameters(), recipe.train), box, device),
    }
    rounds_done = []

    def advancing(name, fn):
        def run():
            fn()
            rounds_done.append(name)
            if len(rounds_done) % len(modes) == 0:
                box[0] += 1  # the next round is the next epoch: the cached mode moves to the next view
        return run

    times = measure({k: advancing(k, v) for k, v in modes.items()}, rounds, warmup, device.type)
    ratios = {k: statistics.median(t / a for t, a in zip(times[k], times["alone"])) for k in modes}
    live.close(), cached.close(), cached_logit.close()
    return {"recipe": Path(path).stem, "views": views, "teacher": source, "record_seconds": record_s,
            "train_samples": len(loaders.train.dataset), "cache_note": note,
            "median_epoch_s": {k: statistics.median(v) for k, v in times.items()}, "ratio_to_alone": ratios,
            "epoch_s": times}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"teacher cost per epoch ({meta['device']}, {meta['threads']} thread(s), {meta['rounds']} interleaved "
             f"rounds after {meta['warmup']} warm-up; {meta['machine']})", "",
             "| recipe | mode | median epoch s | vs student alone |", "|---|---|---:|---:|"]
    for r in results:
        for mode in ("alone", "live", "cached", "cached_logit"):
            lines.append(f"| {r['recipe']} | {mode} | {r['median_epoch_s'][mode]:.2f} | "
                         f"{r['ratio_to_alone'][mode]:.3f}x |")
        lines.append(f"| {r['recipe']} | recording {r['views']} view(s) | {r['record_seconds']:.2f} | "
                     f"(once; {r['train_samples']:,} samples per view) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--tag", default="teacher_cost")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        teachers = Path(os.environ.get("FEATDISTILL_CACHE", Path.home() / ".cache" / "featdistill")) / "teachers"
        os.environ["FEATDISTILL_CACHE"] = tmp  # the output cache goes here; the teachers stay where they are
        (Path(tmp) / "teachers").symlink_to(teachers, target_is_directory=True)
        for path in args.recipes:
            results.append(recipe_cost(path, args.views, args.rounds, args.warmup, device, args.overrides))
            print(markdown(results[-1:], {"device": device.type, "threads": torch.get_num_threads(),
                                          "rounds": args.rounds, "warmup": args.warmup, "machine": ""}), flush=True)
    meta = {"device": device.type, "threads": torch.get_num_threads(), "rounds": args.rounds, "warmup": args.warmup,
            "machine": machine(), "command": " ".join(sys.argv),
            "torch": torch.__version__}
    table = markdown(results, meta)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / f"{args.tag}.md").write_text(f"```\n{meta['command']}\n```\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
