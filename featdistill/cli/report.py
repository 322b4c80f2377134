"""The end of a run: latency, the summary (JSON and printed), the curves plot and ``report.html``
(:mod:`.report_html`); for text runs the held-out language-model figures come from :mod:`.lm_report`."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ..config import Recipe
from ..data import Batch, is_text, sample_batch
from ..models import count_params
from ..train import METRICS, evaluate
from .lm_report import lm_lines, lm_results
from .report_html import write_report


@torch.no_grad()
def cpu_latency(models: dict[str, nn.Module], sample, rounds: int = 30) -> dict[str, float]:
    """Median forward time in ms per model on the CPU for ``sample`` (an image batch, or a dict of token tensors:
    ``model(**sample)``), models interleaved per round so machine noise hits all alike."""
    models = {k: m.to("cpu").eval() for k, m in models.items()}
    sample = Batch.of(sample).to("cpu")
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds + 3):
        for name, model in models.items():
            start = time.perf_counter()
            sample.run(model)
            if r >= 3:  # warm-up rounds
                times[name].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def summarize(summary: dict) -> str:
    """The printed summary: what share of the teacher's accuracy (or, for text, bits per byte) the student keeps,
    at what size and speed."""
    if "student_bits_per_byte" in summary:
        return "\n".join(lm_lines(summary))
    t_acc, s_acc = summary["teacher_accuracy"], summary["student_accuracy"]
    keeps = s_acc / t_acc if t_acc else float("nan")
    size = summary["student_params"] / summary["teacher_params"]
    speed = summary["teacher_latency_ms"] / summary["student_latency_ms"]
    return "\n".join([
        f"teacher: {t_acc:.2%} test accuracy, {summary['teacher_params']:,} params, "
        f"{summary['teacher_latency_ms']:.2f} ms/image (CPU)",
        f"student: {s_acc:.2%} test accuracy, {summary['student_params']:,} params, "
        f"{summary['student_latency_ms']:.2f} ms/image (CPU)",
        f"the student keeps {keeps:.0%} of the teacher's accuracy at {size:.0%} of its size, "
        f"running {speed:.1f}x {'faster' if speed >= 1 else 'slower'} on the CPU",
    ])


def plot_curves(metrics_path: Path, out: Path) -> None:
    """Loss terms per epoch (left) and validation accuracy, or bits per byte for text (right), from
    ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in map(json.loads, metrics_path.read_text().splitlines()) if r["kind"] == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    keys = [k for k in epochs[0] if k not in ("kind", "epoch", "epoch_seconds", "images_per_s", "images_per_s_rank")
            and not k.startswith("val_")]
    xs = [r["epoch"] + 1 for r in epochs]
    for key in keys:
        ax_loss.plot(xs, [r[key] for r in epochs], label=key, marker=".")
    ax_loss.set(xlabel="epoch", ylabel="mean term per image", title="loss terms", yscale="log")
    ax_loss.legend(fontsize=8)
    if "val_bits_per_byte" in epochs[0]:
        ax_acc.plot(xs, [r["val_bits_per_byte"] for r in epochs], marker=".", color="tab:green")
        ax_acc.set(xlabel="epoch", ylabel="validation bits per byte", title="student bits per byte (lower is better)")
    else:
        ax_acc.plot(xs, [100 * r["val_accuracy"] for r in epochs], marker=".", color="tab:green")
        ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="student accuracy")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def finish(recipe: Recipe, teacher: nn.Module, student: nn.Module, loaders, device: torch.device, run_dir: Path,
           teacher_source: str, history: list[dict], teacher_accuracy: float | None = None) -> dict:
    """Test accuracies, sizes and CPU latencies of both models: ``summary.json``, ``curves.png``, ``report.html``
    (:mod:`.report_html`), the dict. Text:
    also test loss, perplexity and bits per byte of both, their ratio and a sample each (:func:`lm_results`);
    accuracies are per token and the latency is one forward of one block."""
    amp = recipe.train.amp
    lm = lm_results(recipe, teacher, student, loaders, device) if is_text(recipe.data) else None
    if lm:
        student_acc, teacher_acc = lm.pop("student_accuracy"), lm.pop("teacher_accuracy")
    else:
        student_acc = evaluate(student, loaders.test, device, amp)
        if not recipe.eval_teacher:
            teacher_acc = float("nan")
        elif teacher_accuracy is not None:  # measured when a teacher-output cache was filled: the same weights
            teacher_acc = teacher_accuracy
        else:
            teacher_acc = evaluate(teacher, loaders.test, device, amp)
    one = sample_batch(recipe.data, 1)
    latency = cpu_latency({"teacher": teacher, "student": student}, one)
    teacher.to(device), student.to(device)
    summary = {
        "teacher_accuracy": teacher_acc, "student_accuracy": student_acc,
        "teacher_params": count_params(teacher), "student_params": count_params(student),
        "teacher_latency_ms": latency["teacher"], "student_latency_ms": latency["student"],
        "teacher_source": teacher_source, "epochs": recipe.train.epochs, "seed": recipe.train.seed,
        "val_accuracy_history": [e["val_accuracy"] for e in history],  # restored from the checkpoint on --resume
    }
    summary["student_keeps"] = student_acc / teacher_acc if teacher_acc else None
    summary["size_ratio"] = summary["student_params"] / summary["teacher_params"]
    summary["speedup"] = latency["teacher"] / latency["student"]
    if lm:
        summary |= {"block_size": recipe.data.block_size, **lm,
                    "val_bits_per_byte_history": [e["val_bits_per_byte"] for e in history]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(run_dir / METRICS, run_dir / "curves.png")
    write_report(run_dir, recipe, summary, summarize(summary), teacher, student, loaders, device)  # report.html
    return summary
