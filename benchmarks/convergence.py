"""Has the schedule converged? Final test metric of each mode against the schedule's length.

A claim that feature KD beats logit KD is only worth making where logit KD has stopped improving: short
schedules flatter feature KD (on digits, a +3.5 point gain at 15 epochs was +0.6 at 30). For each recipe, each
schedule length in ``--epochs`` and each mode, the student is trained from scratch on paired seeds (each length
a full run with its own warm-up and cosine decay, as a user would run it), and the final test metric is recorded:
accuracy for image recipes, bits per byte (lower is better) for language-model recipes, whose modes are
compare_kd's LM modes (default: forward_kl and forward_kl+hidden, the analogues of logit and both). The schedule has
converged where the baseline's curve flattens; the gap to the teacher at that point is what is left for
distillation to close. Writes JSON, a markdown table, a PNG of the curves and a run journal
(``<tag>.runs.jsonl``: a stopped curve resumes).

    python benchmarks/convergence.py recipes/resnet_to_resnet.py --set data.name="'digit_pairs'" \\
        --epochs 60 120 240 --seeds 2 --modes logit alone --tag pairs_resnet_convergence_long
    python benchmarks/convergence.py recipes/lm_to_small_lm.py --epochs 4 8 16 --modes forward_kl alone
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from compare_kd import LABELS, MODES, OUT, run_all, shell_join
from journal import RunJournal
from lm_modes import LM_LABELS, LM_MODES, METRICS, ensure_synthetic, is_text_recipe, lm_modes

DEFAULT_MODES = {False: ["logit", "both"], True: ["forward_kl", "forward_kl+hidden"]}  # by is_text_recipe


def recipe_modes(recipe: Path, names: list[str] | None, extra: list[str], out: Path) -> dict[str, list[str]]:
    """``{mode: overrides}``: the asked modes of the recipe's kind (image or language model), or its default pair."""
    text = is_text_recipe(recipe)
    kind = LM_MODES if text else MODES
    asked = names or DEFAULT_MODES[text]
    chosen = [m for m in asked if m in kind]
    if not chosen:
        raise SystemExit(f"{recipe}: none of --modes {' '.join(asked)} applies to a "
                         f"{'language-model' if text else 'image'} recipe; give some of: {', '.join(kind)}")
    return lm_modes(recipe, chosen, extra, out) if text else {m: MODES[m] for m in chosen}


def curves(recipe: Path, epochs: list[int], modes: dict[str, list[str]], seeds: list[int], extra: list[str],
           jobs: int, threads: int, out: dict, on_length_done, journal: RunJournal | None = None) -> None:
    """Fill ``out`` with ``{'modes': {mode: {E: table row}}}``, the metric's name and the teacher's value
    (``teacher_accuracy`` or ``teacher_bits_per_byte``) for one recipe, calling
    ``on_length_done()`` after each schedule length, so a long run keeps what it has. Runs the ``journal`` holds
    are not trained again: its keys are compare_kd's, so ``compare_kd.py --set train.epochs=E`` reuses them."""
    out["modes"] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for e in epochs:
            tables = {}
            run_all([recipe], modes, seeds, [*extra, f"train.epochs={e}"], Path(tmp), jobs, threads,
                    tables.__setitem__, journal)
            table = tables[recipe.stem]
            key = out["metric"] = table["metric"]
            out[f"teacher_{key}"], out["teacher_sha256"] = table[f"teacher_{key}"], table["teacher_sha256"]
            for mode, row in table["modes"].items():
                out["modes"][mode][e] = row
            on_length_done()


def markdown(results: dict, meta: dict) -> str:
    lines = [f"seeds {meta['seeds']}, {meta['date']}, {meta['machine']}, {meta['jobs']} jobs, "
             f"{meta['wall_minutes']} min, torch {meta['torch']}", f"command: `{meta['command']}`", ""]
    for recipe, res in results.items():
        epochs = sorted({e for rows in res["modes"].values() for e in rows}, key=int)
        metric = METRICS[res.get("metric", "accuracy")]
        lines += [f"**{recipe}** ({metric.column}; teacher {metric.show(res['teacher_' + metric.name])}"
                  f"{metric.unit}, sha256 "
                  f"{', '.join(h[:12] for h in res['teacher_sha256'])})", "",
                  "| mode | " + " | ".join(f"{e} epochs" for e in epochs) + " |",
                  "|---|" + "---:|" * len(epochs)]
        for mode, rows in res["modes"].items():
            cells = [f"{metric.show(rows[e][metric.name + '_mean'])} +- {metric.show(rows[e][metric.name + '_std'])}"
                     for e in epochs]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.8), squeeze=False)
    for ax, (recipe, res) in zip(axes[0], results.items()):
        metric = METRICS[res.get("metric", "accuracy")]
        labels = LABELS if metric.name == "accuracy" else LM_LABELS
        for mode, rows in res["modes"].items():
            epochs = sorted(rows, key=int)
            means = [metric.scale * rows[e][metric.name + "_mean"] for e in epochs]
            stds = [metric.scale * rows[e][metric.name + "_std"] for e in epochs]
            ax.errorbar([int(e) for e in epochs], means, yerr=stds, marker="o", capsize=3, label=labels.get(mode, mode))
        ax.axhline(metric.scale * res["teacher_" + metric.name], color="grey", linestyle="--", label="teacher")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("schedule length (epochs)")
        ax.set_ylabel(metric.axis)
        ax.set_title(recipe, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", type=Path)
    p.add_argument("--epochs", nargs="+", type=int, default=[10, 20, 40, 80], help="schedule lengths")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--modes", nargs="+", choices=list(dict.fromkeys([*MODES, *LM_MODES])),
                   help="default: logit both (images), forward_kl forward_kl+hidden (language models); each recipe "
                        "runs those of its kind")
    p.add_argument("--set", dest="extra", action="append", default=[], help="override applied to every run")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--tag", default="convergence")
    args = p.parse_args(argv)
    if any(e < 1 for e in args.epochs):
        p.error(f"--epochs must all be 1 or more, got {args.epochs}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = max(1, args.jobs)
    threads = torch.get_num_threads() if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
            "jobs": jobs, "torch": torch.__version__, "seeds": seeds, "epochs": args.epochs, "extra": args.extra,
            "command": "python benchmarks/convergence.py " + shell_join(sys.argv[1:] if argv is None else argv)}
    start, results = time.perf_counter(), {}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.tag

    def write() -> None:
        meta["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        stem.with_suffix(".md").write_text(markdown(results, meta))
        plot(results, stem.with_suffix(".png"))

    journal = RunJournal(args.out / f"{args.tag}.runs.jsonl")
    for recipe in args.recipes:
        modes = recipe_modes(recipe, args.modes, args.extra, args.out)
        ensure_synthetic(recipe, modes, args.extra)  # the teacher's text, before any worker needs it
        curves(recipe, args.epochs, modes, seeds, args.extra, jobs, threads, results.setdefault(recipe.stem, {}), write,
               journal)
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
