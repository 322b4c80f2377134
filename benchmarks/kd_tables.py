"""compare_kd.py's outputs: the markdown table (one per metric: test accuracy for images, bits per byte for
language models) and the bar chart, written beside the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lm_modes import LM_LABELS, METRICS

LABELS = {"alone": "student alone", "logit": "logit KD", "feature": "feature KD (no logit KD)",
          "both": "logit + feature KD (recipe)", "cached": "recipe, teacher outputs from the cache"}


def markdown(all_results: dict, meta: dict) -> str:
    how = f"{meta['jobs']} jobs x {meta['threads_per_job']} threads" if "jobs" in meta else "1 job"
    wall = f", {meta['wall_minutes']} min" if "wall_minutes" in meta else ""
    lines = [f"seeds {meta['seeds']}, {meta['date']}, {meta['machine']}, {how}{wall}, torch {meta['torch']}",
             f"command: `{meta['command']}`"]
    for name in dict.fromkeys(res.get("metric", "accuracy") for res in all_results.values()):  # a table per metric
        metric = METRICS[name]
        lines += ["", f"| recipe | mode | {metric.column} (mean +- std) | {metric.diff_column} [95% CI] | verdict | "
                      f"time/epoch vs {metric.baseline_label} |", "|---|---|---:|---:|---|---:|"]
        for recipe, res in all_results.items():
            if res.get("metric", "accuracy") == name:
                lines += table_rows(recipe, res, metric)
    return "\n".join(lines) + "\n"


def table_rows(recipe: str, res: dict, metric) -> list[str]:
    lines, key, show = [], metric.name, metric.show
    for mode, row in res["modes"].items():
        diff = (f"{show(row['paired_diff_mean'], True)} [{show(row['paired_diff_low'], True)}, "
                f"{show(row['paired_diff_high'], True)}]" if "paired_diff_mean" in row else "-")
        p = f" (p={row['wilcoxon_p']:.3f})" if row.get("wilcoxon_p") is not None else ""
        ratio = f"{row['time_ratio']:.2f}x" if "time_ratio" in row else "-"
        lines.append(f"| {recipe} | {mode} | {show(row[key + '_mean'])} +- {show(row[key + '_std'])} "
                     f"| {diff} | {row.get('verdict', 'baseline') + p if 'verdict' in row else '-'} | {ratio} |")
    hashes = ", ".join(h[:12] for h in res.get("teacher_sha256", [])) or "?"
    lines.append(f"| {recipe} | teacher | {show(res['teacher_' + key])} | sha256 {hashes} | | |")
    return lines


def chart_title(metric_name: str, modes: list[str]) -> str:
    """The panel's title names the modes it shows, when few enough to read; the legend always does."""
    if metric_name != "accuracy":
        return "LM distillation modes"
    if len(modes) > 3:
        return "student test accuracy per mode"
    return " vs ".join(LABELS.get(m, m) for m in modes)


def plot(all_results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}  # one panel per metric
    for recipe, res in all_results.items():
        groups.setdefault(res.get("metric", "accuracy"), []).append(recipe)
    fig, axes = plt.subplots(1, len(groups), squeeze=False,
                             figsize=(sum(2.5 + 2.2 * len(g) + 1.5 * (n != "accuracy") for n, g in groups.items()), 4))
    for ax, (name, recipes) in zip(axes[0], groups.items()):
        metric, labels = METRICS[name], LABELS if name == "accuracy" else LM_LABELS
        modes = list(dict.fromkeys(m for r in recipes for m in all_results[r]["modes"]))  # a confirmation may differ
        width = 0.8 / len(modes)
        rows = {m: [all_results[r]["modes"].get(m, {f"{name}_mean": math.nan, f"{name}_std": 0.0}) for r in recipes]
                for m in modes}
        for i, mode in enumerate(modes):
            means = [metric.scale * row[f"{name}_mean"] for row in rows[mode]]
            stds = [metric.scale * row[f"{name}_std"] for row in rows[mode]]
            ax.bar([j + i * width for j in range(len(recipes))], means, width, yerr=stds, capsize=3,
                   label=labels.get(mode, mode))
        spans = [metric.scale * (row[f"{name}_mean"] + k * row[f"{name}_std"]) for rs in rows.values() for row in rs
                 for k in (-1, 1) if math.isfinite(row[f"{name}_mean"])]
        if name == "accuracy":
            ax.set_ylim(max(0, min(spans) - 5), 100)
        else:
            pad = 0.2 * (max(spans) - min(spans)) + 0.01
            ax.set_ylim(min(spans) - pad, max(spans) + pad)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(recipes))], recipes)
        ax.set_ylabel(metric.axis)
        ax.set_title(chart_title(name, modes))
        ax.legend(fontsize=8, loc="lower right" if metric.higher_is_better else "upper right")
    fig.suptitle("mean +- std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(all_results: dict, meta: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": all_results}, indent=2))
    stem.with_suffix(".md").write_text(markdown(all_results, meta))
    plot(all_results, stem.with_suffix(".png"))
