"""Logit-only KD vs feature KD, same recipe, same cached teacher, same seeds (paired), judged by an interval.

For each recipe and seed, the student is trained in several modes that differ only in the loss:
    alone    the student with cross-entropy only           (--set kd=None --set pairs=[])
    logit    logit KD only                                 (--set pairs=[])
    feature  feature pairs + cross-entropy, no logit KD    (--set kd=None)
    both     the recipe as shipped: logit KD + feature pairs
Reported per mode: test accuracy mean +- std over seeds; the paired difference to `logit` (seed by seed) with
its 95% t-interval, a Wilcoxon p-value from 6 seeds on, and the verdict read from the interval: **wins** (all
above 0), **loses** (all below) or **within noise**; each mode's seconds per epoch as a ratio to `logit`; the
teacher's test accuracy and the sha256 of its weights, so tables made with different teachers cannot be
confused. Writes JSON, a markdown table and a PNG chart.

    python benchmarks/compare_kd.py                                   # every shipped recipe, seeds 0-9
    python benchmarks/compare_kd.py recipes/vit_to_deit.py --seeds 3 --modes alone both
    python benchmarks/compare_kd.py recipes/resnet_to_resnet.py --modes logit both \\
        --variant at12="pairs=[{'student': 'layer1', 'teacher': 'layer1', 'loss': 'at'}]" \\
        --select-seeds 0-9 --confirm-seeds 10-19   # choose the best lever on 0-9, report it on 10-19
    python benchmarks/compare_kd.py recipes/resnet_to_resnet.py --seeds 5 --modes alone logit --methods all
                                               # RepDistiller-style: every method, alone and with KD

With `--select-seeds A-B --confirm-seeds C-D`, every mode runs on the selection seeds, the feature mode with the
largest mean paired gain is chosen there, and only `logit` (plus `alone` if asked) and that mode run on the
confirmation seeds: the confirmation table is the claim, the selection table shows how it was chosen.

Runs go to --jobs worker processes (default: one per CPU core, each single-threaded; 1 when a GPU is
visible). These models are too small to keep two cores busy in one process, so two one-thread workers
finish about 1.5x sooner. The thread count changes float summation order, so a seed's accuracy can differ
from a plain `featdistill.run` with more threads; tables are comparable when made with the same --jobs
(recorded in the JSON). Each teacher is trained (or loaded) once in the main process before the workers
start, so they never race for the cache. Each finished run is kept in `<out>/<tag>.runs.jsonl`: the same command
run again (after a crash, a Ctrl-C or the end of a session) trains only the runs that are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from journal import RunJournal
from methods import METHODS, method_modes
from paired import paired, seed_range

from featdistill.cli.run import main as run_main
from featdistill.cli.run import pick_device
from featdistill.cli.teacher import cache_path, prepare_teacher
from featdistill.data import make_loaders
from featdistill.recipe import apply_overrides, check, load_recipe

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
MODES = {"alone": ["kd=None", "pairs=[]"], "logit": ["pairs=[]"], "feature": ["kd=None"], "both": []}
LABELS = {"alone": "student alone", "logit": "logit KD", "feature": "feature KD (no logit KD)",
          "both": "logit + feature KD (recipe)"}


def train_once(recipe: Path, overrides: list[str], seed: int, workdir: Path) -> dict:
    """One quiet run; returns its summary plus the median seconds per epoch."""
    out = Path(tempfile.mkdtemp(prefix=f"{recipe.stem}-seed{seed}-", dir=workdir))  # unique across workers
    argv = [str(recipe), "--quiet", "--out", str(out), "--set", f"train.seed={seed}"]
    for item in overrides:
        argv += ["--set", item]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run_main(argv)
    if code != 0:
        raise SystemExit(f"run failed ({code}): {' '.join(argv)}\n{buffer.getvalue()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["epoch_seconds"] for r in records if r["kind"] == "epoch"]
    summary["epoch_seconds"] = statistics.median(seconds)
    return summary


def shell_join(argv: list[str]) -> str:
    """A command line to paste: like shlex.join, but Python literals with single quotes go in double quotes."""
    return " ".join(f'"{a}"' if shlex.quote(a) != a and not set(a) & set('"$`\\!') else shlex.quote(a)
                    for a in argv)


def stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def prepare_teachers(recipe: Path, modes: dict[str, list[str]], extra: list[str]) -> list[str]:
    """Train (or find) every teacher the modes need, here, before any worker asks the cache for it; the sha256 of
    each distinct teacher's weights (its cache file, or its checkpoint)."""
    seen: dict[Path, str] = {}
    for overrides in modes.values():
        resolved = check(apply_overrides(load_recipe(recipe), extra + overrides), str(recipe))
        path = cache_path(resolved) if resolved.teacher.pretrain is not None else resolved.teacher.checkpoint
        if path is None or Path(path) in seen:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            prepare_teacher(resolved, make_loaders(resolved.data, 1), pick_device("auto"), quiet=True)
        seen[Path(path)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return list(dict.fromkeys(seen.values()))


def run_all(recipes: list[Path], modes: dict[str, list[str]], seeds: list[int], extra: list[str], workdir: Path,
            jobs: int, threads: int, on_recipe_done, journal: RunJournal | None = None) -> dict:
    """Every (recipe, seed, mode) run; ``on_recipe_done(name, table)`` is called as each recipe completes. Runs the
    ``journal`` already holds are not trained again; each new one is added to it as it finishes."""
    tasks = [(recipe, mode, seed) for recipe in recipes for seed in seeds for mode in modes]  # seed-major
    args = [(recipe, extra + modes[mode], seed, workdir) for recipe, mode, seed in tasks]
    summaries: dict[tuple, dict] = {}
    remaining = {recipe: len(seeds) * len(modes) for recipe in recipes}
    tables = {}

    def record(key: tuple, summary: dict) -> None:
        recipe, mode, seed = key
        summaries[key] = summary
        print(f"  {recipe.stem} seed {seed} {mode:>10s}: {summary['student_accuracy']:.2%}", flush=True)
        remaining[recipe] -= 1
        if remaining[recipe] == 0:
            tables[recipe.stem] = tabulate({m: [summaries[(recipe, m, s)] for s in seeds] for m in modes})
            tables[recipe.stem]["teacher_sha256"] = hashes[recipe.stem]
            on_recipe_done(recipe.stem, tables[recipe.stem])

    hashes = {}
    for recipe in recipes:
        print(f"{recipe.stem}: modes {list(modes)}, seeds {seeds}", flush=True)
        hashes[recipe.stem] = prepare_teachers(recipe, modes, extra)
    keys = [RunJournal.key(a[0], a[1], a[2], threads, hashes[a[0].stem]) for a in args]
    kept = {k: journal.get(k) for k in keys if journal is not None and journal.get(k) is not None}
    if kept:
        print(f"  {len(kept)} of {len(keys)} runs are already in {journal.path}: kept (delete it to train them "
              "again)", flush=True)

    def finished(key: tuple, journal_key: str, summary: dict) -> None:
        if journal is not None and journal_key not in kept:
            journal.add(journal_key, summary)
        record(key, summary)

    if jobs == 1:  # in this process, with all its threads
        for key, a, k in zip(tasks, args, keys):
            finished(key, k, kept[k] if k in kept else train_once(*a))
        return tables
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = [None if k in kept else pool.submit(train_once, *a) for a, k in zip(args, keys)]
        for key, k, future in zip(tasks, keys, futures):  # in submission order, so the log and tables stay in order
            finished(key, k, kept[k] if future is None else future.result())
    return tables


def tabulate(runs: dict[str, list[dict]]) -> dict:
    """Per mode: accuracy mean +- std over seeds; paired difference to `logit` with its 95% interval, Wilcoxon p and
    verdict; seconds/epoch ratio to `logit`."""
    results = {m: {"accuracy": [r["student_accuracy"] for r in rs], "epoch_seconds": [r["epoch_seconds"] for r in rs]}
               for m, rs in runs.items()}
    base = "logit" if "logit" in results else None
    table = {}
    for mode, r in results.items():
        mean, std = stats(r["accuracy"])
        row = {"accuracy_mean": mean, "accuracy_std": std, "accuracy": r["accuracy"],
               "epoch_seconds_median": statistics.median(r["epoch_seconds"])}
        if base and mode != base:
            diff = paired(r["accuracy"], results[base]["accuracy"])
            row.update(paired_diff_mean=diff.mean, paired_diff_std=diff.std, paired_diff_low=diff.low,
                       paired_diff_high=diff.high, wilcoxon_p=diff.p, verdict=diff.verdict)
        if base:
            row["time_ratio"] = row["epoch_seconds_median"] / statistics.median(results[base]["epoch_seconds"])
        table[mode] = row
    teacher_acc = next(iter(runs.values()))[0]["teacher_accuracy"]
    return {"teacher_accuracy": teacher_acc, "modes": table}


def best_lever(table: dict) -> str | None:
    """The feature mode (anything but `alone` and `logit`) with the largest mean paired gain over `logit`."""
    levers = {m: row["paired_diff_mean"] for m, row in table["modes"].items() if "paired_diff_mean" in row
              and m != "alone"}
    return max(levers, key=levers.get) if levers else None


def markdown(all_results: dict, meta: dict) -> str:
    how = f"{meta['jobs']} jobs x {meta['threads_per_job']} threads" if "jobs" in meta else "1 job"
    wall = f", {meta['wall_minutes']} min" if "wall_minutes" in meta else ""
    lines = [f"seeds {meta['seeds']}, {meta['date']}, {meta['machine']}, {how}{wall}, torch {meta['torch']}",
             f"command: `{meta['command']}`", "",
             "| recipe | mode | test accuracy (mean +- std) | paired diff to logit KD [95% CI] | verdict | "
             "time/epoch vs logit KD |",
             "|---|---|---:|---:|---|---:|"]
    for recipe, res in all_results.items():
        for mode, row in res["modes"].items():
            diff = (f"{100 * row['paired_diff_mean']:+.2f} [{100 * row['paired_diff_low']:+.2f}, "
                    f"{100 * row['paired_diff_high']:+.2f}]" if "paired_diff_mean" in row else "-")
            p = f" (p={row['wilcoxon_p']:.3f})" if row.get("wilcoxon_p") is not None else ""
            ratio = f"{row['time_ratio']:.2f}x" if "time_ratio" in row else "-"
            lines.append(f"| {recipe} | {mode} | {100 * row['accuracy_mean']:.2f} +- {100 * row['accuracy_std']:.2f} "
                         f"| {diff} | {row.get('verdict', 'baseline') + p if 'verdict' in row else '-'} | {ratio} |")
        hashes = ", ".join(h[:12] for h in res.get("teacher_sha256", [])) or "?"
        lines.append(f"| {recipe} | teacher | {100 * res['teacher_accuracy']:.2f} | sha256 {hashes} | | |")
    return "\n".join(lines) + "\n"


def plot(all_results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(all_results)
    modes = list(dict.fromkeys(m for r in recipes for m in all_results[r]["modes"]))  # a confirmation may differ
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(recipes), 4))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        rows = [all_results[r]["modes"].get(mode, {"accuracy_mean": math.nan, "accuracy_std": 0.0}) for r in recipes]
        means, stds = [100 * row["accuracy_mean"] for row in rows], [100 * row["accuracy_std"] for row in rows]
        ax.bar([j + i * width for j in range(len(recipes))], means, width, yerr=stds, capsize=3,
               label=LABELS.get(mode, mode))
    lows = [100 * min(row["accuracy_mean"] - row["accuracy_std"] for row in all_results[r]["modes"].values())
            for r in recipes]
    ax.set_ylim(max(0, min(lows) - 5), 100)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(recipes))], recipes)
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title("student alone vs logit KD vs feature KD (mean +- std over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", type=Path, help="default: every recipe in recipes/")
    p.add_argument("--seeds", type=int, default=10, help="how many seeds (paired across modes)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds run from here: check a table on seeds it does not list with --first-seed 40")
    p.add_argument("--select-seeds", type=seed_range, metavar="A-B",
                   help="choose the best feature mode on these seeds ...")
    p.add_argument("--confirm-seeds", type=seed_range, metavar="C-D", help="... and report it on these")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[;OVERRIDE]",
                   help="an extra mode: the recipe with these --set overrides, e.g. at=pairs.1.loss='at'")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"RepDistiller-style table: add these methods as modes ({', '.join(METHODS)}, or 'all'); see "
                        "benchmarks/methods.py for where each is placed")
    p.add_argument("--set", dest="extra", action="append", default=[], help="override applied to every mode")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--tag", default="compare_kd")
    p.add_argument("--jobs", type=int, help="parallel worker processes, each with cores/jobs threads (default: one "
                                            "per CPU core, or 1 with a GPU); 1 runs everything in this process")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="no training: combine earlier results (the modes they share) into one table and chart")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 1 if torch.cuda.is_available() else (os.cpu_count() or 1)
    if args.jobs < 1:
        p.error(f"--jobs must be 1 or more, got {args.jobs}")
    if (args.select_seeds is None) != (args.confirm_seeds is None):
        p.error("--select-seeds and --confirm-seeds go together")
    if args.select_seeds and set(args.select_seeds) & set(args.confirm_seeds):
        p.error("selection and confirmation seeds must not overlap: a lever chosen on a seed says nothing there")
    if args.merge:
        return merge(args.merge, args.out / args.tag)
    recipes = args.recipes or sorted((ROOT / "recipes").glob("*.py"))
    modes = {m: MODES[m] for m in args.modes}
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        modes[name] = [o for o in overrides.split(";") if o]
    if "logit" not in modes:
        modes = {"logit": MODES["logit"], **modes}  # every verdict is against logit KD
    methods = list(METHODS) if args.methods == ["all"] else args.methods
    per_recipe = {r.stem: {**modes, **(method_modes(r, methods) if methods else {})} for r in recipes}
    command = "python benchmarks/compare_kd.py " + shell_join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.select_seeds is None:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        print(markdown(*measure(recipes, per_recipe, seeds, args, command, args.tag)))
        return 0
    selected, meta = measure(recipes, per_recipe, args.select_seeds, args, command,
                             f"{args.tag}_select")
    print("selection:\n" + markdown(selected, meta))
    chosen = {r.stem: best_lever(selected[r.stem]) for r in recipes}
    confirm = {r.stem: {m: o for m, o in per_recipe[r.stem].items() if m in ("alone", "logit", chosen[r.stem])}
               for r in recipes}
    confirmed, meta = measure(recipes, confirm, args.confirm_seeds, args, command, f"{args.tag}_confirm",
                              {"selected_on": args.select_seeds, "chosen": chosen})
    print(f"chosen on seeds {args.select_seeds[0]}-{args.select_seeds[-1]}: {chosen}\nconfirmation (the claim):\n"
          + markdown(confirmed, meta))
    return 0


def measure(recipes: list[Path], modes: dict[str, dict[str, list[str]]], seeds: list[int], args, command: str,
            tag: str, extra_meta: dict | None = None) -> tuple[dict, dict]:
    """Run every recipe's modes on ``seeds``; write ``<tag>.json/.md/.png`` as each recipe completes."""
    runs = sum(len(m) for m in modes.values()) * len(seeds)
    jobs = max(1, min(args.jobs, runs))
    threads = torch.get_num_threads() if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "jobs": jobs, "threads_per_job": threads, "torch": torch.__version__, "seeds": seeds,
            "modes": {r: list(m) for r, m in modes.items()}, "overrides": {m: o for ms in modes.values()
                                                                            for m, o in ms.items()},
            "extra": args.extra, "command": command, **(extra_meta or {})}
    results: dict = {}
    start = time.perf_counter()

    def done(name: str, table: dict) -> None:  # written after each recipe: a long run keeps what it has
        results[name] = table
        meta["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)
        write(results, meta, args.out / tag)

    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes:
            run_all([recipe], modes[recipe.stem], seeds, args.extra, Path(tmp), jobs, threads, done,
                    RunJournal(args.out / f"{tag}.runs.jsonl"))
    return results, meta


def merge(paths: list[Path], stem: Path) -> int:
    loaded = [json.loads(p.read_text()) for p in paths]
    tables = [res["modes"] for d in loaded for res in d["results"].values()]
    shared = [m for m in tables[0] if all(m in t for t in tables)]
    results = {name: {**res, "modes": {m: res["modes"][m] for m in shared}}
               for d in loaded for name, res in d["results"].items()}
    meta = {**loaded[0]["meta"], "command": "; ".join(d["meta"]["command"] for d in loaded)}
    stem.parent.mkdir(parents=True, exist_ok=True)
    write(results, meta, stem)
    print(markdown(results, meta))
    return 0


def write(all_results: dict, meta: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": all_results}, indent=2))
    stem.with_suffix(".md").write_text(markdown(all_results, meta))
    plot(all_results, stem.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main())
