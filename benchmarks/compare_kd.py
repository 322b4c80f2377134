"""Logit-only KD vs feature KD, same recipe, same cached teacher, same seeds (paired), judged by an interval.

For each recipe and seed, the student is trained in several modes that differ only in the loss:
    alone    the student with cross-entropy only           (--set kd=None --set pairs=[])
    logit    logit KD only                                 (--set pairs=[])
    feature  feature pairs + cross-entropy, no logit KD    (--set kd=None)
    both     the recipe as shipped: logit KD + feature pairs
    cached   `both` with the teacher's outputs recorded for 4 augmentation views and read back (--set
             teacher_cache.views=4; only when --modes names it); compare it with `both`, the live teacher
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

Language-model recipes (text data, e.g. recipes/lm_to_small_lm.py) run their own modes (student alone, forward KL,
forward KL + hidden states, reverse KL, JSD, the teacher's generated text alone and with forward KL: see
benchmarks/lm_modes.py), are judged by test bits per byte (lower is better; the paired difference is taken as
baseline - mode, so **wins** still means better) against forward KL, and train on text the teacher generates once,
before the workers start:

    python benchmarks/compare_kd.py recipes/lm_to_small_lm.py --seeds 5
    python benchmarks/compare_kd.py recipes/lm_to_small_lm.py --seeds 5 --modes alone forward_kl synthetic
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from journal import RunJournal
from kd_tables import LABELS, markdown, write  # noqa: F401 (LABELS: convergence.py imports it from here)
from lm_modes import ACCURACY, LM_MODES, SAMPLES, ensure_synthetic, is_text_recipe, lm_modes, metric_of
from methods import METHODS, method_modes
from paired import seed_range

from featdistill.cli.run import main as run_main
from featdistill.cli.run import pick_device
from featdistill.cli.teacher import cache_path, prepare_teacher
from featdistill.data import make_loaders
from featdistill.recipe import apply_overrides, check, load_recipe

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
MODES = {"alone": ["kd=None", "pairs=[]"], "logit": ["pairs=[]"], "feature": ["kd=None"], "both": [],
         "cached": ["teacher_cache.views=4"]}
ON_REQUEST = {"cached"}  # image modes run only when --modes names them


def start_worker(threads: int, parent: int) -> None:
    """A worker's setup: its thread count, and a watch that ends it when the main process is gone (killed by a
    signal, a worker would otherwise train on alone, unseen, competing with whatever runs next)."""
    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def train_once(recipe: Path, overrides: list[str], seed: int, workdir: Path) -> dict:
    """One quiet run; returns its summary plus the median seconds per epoch."""
    out = Path(tempfile.mkdtemp(prefix=f"{recipe.stem}-seed{seed}-", dir=workdir))  # unique across workers
    argv = [str(recipe), "--quiet", "--out", str(out), "--set", f"train.seed={seed}"]
    for item in overrides:
        argv += ["--set", item]
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = run_main(argv)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"run failed ({code}): {' '.join(argv)}\n{buffer.getvalue()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["epoch_seconds"] for r in records if r["kind"] == "epoch"]
    summary["epoch_seconds"] = statistics.median(seconds)
    summary["wall_seconds"] = wall  # the whole run: teacher loading, any cache recording, training, the report
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
    tables, metrics = {}, {recipe: metric_of(recipe) for recipe in recipes}

    def record(key: tuple, summary: dict) -> None:
        recipe, mode, seed = key
        summaries[key] = summary
        metric = metrics[recipe]
        print(f"  {recipe.stem} seed {seed} {mode:>10s}: {metric.show(summary['student_' + metric.name])}"
              f"{metric.unit}", flush=True)
        remaining[recipe] -= 1
        if remaining[recipe] == 0:
            tables[recipe.stem] = tabulate({m: [summaries[(recipe, m, s)] for s in seeds] for m in modes}, metric)
            tables[recipe.stem]["teacher_sha256"] = hashes[recipe.stem]
            on_recipe_done(recipe.stem, tables[recipe.stem])

    hashes = {}
    for recipe in recipes:
        print(f"{recipe.stem}: modes {list(modes)}, seeds {seeds}", flush=True)
        hashes[recipe.stem] = prepare_teachers(recipe, modes, extra)
    both_keys = [RunJournal.keys(a[0], a[1], a[2], threads, hashes[a[0].stem]) for a in args]
    keys = [k for k, _ in both_keys]
    found = [journal.find(ks) if journal is not None else None for ks in both_keys]
    kept = {k: summary for k, summary in zip(keys, found) if summary is not None}
    if kept:
        print(f"  {len(kept)} of {len(keys)} runs are already in {journal.path}: kept (delete it to train them "
              "again)", flush=True)
    elif journal is not None and (why := journal.none_reused(sorted({h for hs in hashes.values() for h in hs}))):
        print(why, flush=True)  # most often a teacher trained again, with other weights: say so before hours of runs

    def finished(key: tuple, journal_key: str, summary: dict) -> None:
        if journal is not None and journal.get(journal_key) is None:  # new, or found under its older key
            journal.add(journal_key, summary, hashes[key[0].stem])
        record(key, summary)

    if jobs == 1:  # in this process, with all its threads
        for key, a, k in zip(tasks, args, keys):
            finished(key, k, kept[k] if k in kept else train_once(*a))
        return tables
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                             initargs=(threads, os.getpid())) as pool:
        futures = [None if k in kept else pool.submit(train_once, *a) for a, k in zip(args, keys)]
        for key, k, future in zip(tasks, keys, futures):  # in submission order, so the log and tables stay in order
            finished(key, k, kept[k] if future is None else future.result())
    return tables


def tabulate(runs: dict[str, list[dict]], metric=ACCURACY) -> dict:
    """Per mode: the metric's mean +- std over seeds (test accuracy; bits per byte for text); paired difference to
    the baseline (`logit`; `forward_kl` for text), positive = better, with its 95% interval, Wilcoxon p and verdict;
    seconds/epoch ratio to the baseline."""
    key = metric.name
    results = {m: {key: [r[f"student_{key}"] for r in rs], "epoch_seconds": [r["epoch_seconds"] for r in rs]}
               for m, rs in runs.items()}
    base = metric.baseline if metric.baseline in results else None
    table = {}
    for mode, r in results.items():
        mean, std = stats(r[key])
        row = {f"{key}_mean": mean, f"{key}_std": std, key: r[key],
               "epoch_seconds_median": statistics.median(r["epoch_seconds"])}
        walls = [x["wall_seconds"] for x in runs[mode] if "wall_seconds" in x]  # older journal entries lack it
        if walls:
            row["wall_seconds_median"] = statistics.median(walls)
        if base and mode != base:
            diff = metric.gain(r[key], results[base][key])
            row.update(paired_diff_mean=diff.mean, paired_diff_std=diff.std, paired_diff_low=diff.low,
                       paired_diff_high=diff.high, wilcoxon_p=diff.p, verdict=diff.verdict)
        if base:
            row["time_ratio"] = row["epoch_seconds_median"] / statistics.median(results[base]["epoch_seconds"])
        table[mode] = row
    teacher = next(iter(runs.values()))[0][f"teacher_{key}"]
    return {"metric": key, "baseline": metric.baseline, f"teacher_{key}": teacher, "modes": table}


def best_lever(table: dict) -> str | None:
    """The mode (anything but `alone` and the baseline) with the largest mean paired gain over the baseline."""
    levers = {m: row["paired_diff_mean"] for m, row in table["modes"].items() if "paired_diff_mean" in row
              and m not in ("alone", table.get("baseline", "logit"))}
    return max(levers, key=levers.get) if levers else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", type=Path, help="default: every recipe in recipes/")
    p.add_argument("--seeds", type=int, default=10, help="how many seeds (paired across modes)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds run from here: check a table on seeds it does not list with --first-seed 40")
    p.add_argument("--select-seeds", type=seed_range, metavar="A-B",
                   help="choose the best feature mode on these seeds ...")
    p.add_argument("--confirm-seeds", type=seed_range, metavar="C-D", help="... and report it on these")
    p.add_argument("--modes", nargs="+", choices=list(dict.fromkeys([*MODES, *LM_MODES])),
                   help=f"default: every mode of the recipe's kind (images: "
                        f"{', '.join(m for m in MODES if m not in ON_REQUEST)}; language models: "
                        f"{', '.join(LM_MODES)}); each recipe runs those of its kind")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[;OVERRIDE]",
                   help="an extra mode: the recipe with these --set overrides, e.g. at=pairs.1.loss='at'")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"RepDistiller-style table: add these methods as modes ({', '.join(METHODS)}, or 'all'); see "
                        "benchmarks/methods.py for where each is placed")
    p.add_argument("--synthetic-samples", type=int, default=SAMPLES,
                   help="LM recipes: how many continuations the teacher writes for the synthetic modes")
    p.add_argument("--set", dest="extra", action="append", default=[], help="override applied to every mode")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--tag", default="compare_kd")
    p.add_argument("--jobs", type=int, help="parallel worker processes, each with cores/jobs threads (default: one "
                                            "per CPU core, or 1 with a GPU); 1 runs everything in this process")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="no training: combine earlier results (the modes they share) into one table and chart")
    args = p.parse_args(argv)
    # the runs' report.html without its analysis (dark knowledge, CKA): seconds per run that no table reads
    os.environ.setdefault("FEATDISTILL_REPORT_BUDGET", "0")
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
    recipes = args.recipes or shipped_recipes()
    methods = list(METHODS) if args.methods == ["all"] else args.methods
    per_recipe = {r.stem: modes_for(r, args, methods) for r in recipes}
    command = "python benchmarks/compare_kd.py " + shell_join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    synthetic = {r.stem: ensure_synthetic(r, per_recipe[r.stem], args.extra, args.synthetic_samples)
                 for r in recipes if is_text_recipe(r)}  # the teacher's text, before any worker needs it
    synthetic = {"synthetic_sha256": synthetic} if any(synthetic.values()) else {}
    if args.select_seeds is None:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        print(markdown(*measure(recipes, per_recipe, seeds, args, command, args.tag, synthetic)))
        return 0
    selected, meta = measure(recipes, per_recipe, args.select_seeds, args, command,
                             f"{args.tag}_select", synthetic)
    print("selection:\n" + markdown(selected, meta))
    chosen = {r.stem: best_lever(selected[r.stem]) for r in recipes}
    confirm = {r.stem: {m: o for m, o in per_recipe[r.stem].items()
                        if m in ("alone", metric_of(r).baseline, chosen[r.stem])} for r in recipes}
    confirmed, meta = measure(recipes, confirm, args.confirm_seeds, args, command, f"{args.tag}_confirm",
                              {"selected_on": args.select_seeds, "chosen": chosen, **synthetic})
    print(f"chosen on seeds {args.select_seeds[0]}-{args.select_seeds[-1]}: {chosen}\nconfirmation (the claim):\n"
          + markdown(confirmed, meta))
    return 0


def shipped_recipes() -> list[Path]:
    """Every recipe in recipes/ but those that already train on generated text (lm_synthetic.py): they are the
    synthetic modes of the recipe they derive from."""
    found = sorted((ROOT / "recipes").glob("*.py"))
    return [r for r in found if load_recipe(r).data.train_root is None]


def modes_for(recipe: Path, args, methods: list[str] | None) -> dict[str, list[str]]:
    """``{mode: overrides}`` for one recipe: the asked modes of its kind (all by default), the variants, the
    baseline every verdict is taken against (first), and the methods' modes for image recipes."""
    text = is_text_recipe(recipe)
    kind = LM_MODES if text else MODES
    names = [m for m in args.modes if m in kind] if args.modes else [m for m in kind if m not in ON_REQUEST]
    modes = lm_modes(recipe, names, args.extra, args.out, args.synthetic_samples) if text else \
        {m: MODES[m] for m in names}
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        modes[name] = [o for o in overrides.split(";") if o]
    base = metric_of(recipe).baseline
    if base not in modes:
        modes = {base: kind[base], **modes}  # every verdict is against the baseline
    if methods and text:
        raise SystemExit(f"--methods are image methods (RepDistiller's table); {recipe} is a language model")
    return {**modes, **(method_modes(recipe, methods) if methods else {})}


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


if __name__ == "__main__":
    raise SystemExit(main())
