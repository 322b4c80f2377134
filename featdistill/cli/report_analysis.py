"""The report's analysis of a finished run: the teacher's dark knowledge and the CKA map of the student before and
after training, as ``python -m featdistill.inspect --run`` computes them, on a small held-out batch sized to a time
budget so that the report never costs more than a few seconds.

The budget is ``REPORT_BUDGET_S`` seconds (``$FEATDISTILL_REPORT_BUDGET`` overrides it; ``0`` turns the analysis
off). One probe forward of each model on a few held-out images gives the time per image; the batch is as many
images as fit the budget (at most ``MAX_SAMPLES``), and when fewer than ``MIN_SAMPLES`` would, the analysis is
skipped and the page says so and how to get it (``inspect --run``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import analysis as an
from ..config import Pair, Recipe
from ..data import Batch, is_text
from ..errors import FeatdistillError
from ..models import build_model

REPORT_BUDGET_S = 5.0
MAX_SAMPLES = 256
MIN_SAMPLES = 32  # below this the CKA map and the class-by-class matrix are mostly noise
PROBE = 8  # images in the timing probe


@dataclass
class Analysis:
    """What the report shows beside the curves: PNG paths (None when not computed), the findings in words, and a
    note saying what was measured on what, or why nothing was."""

    note: str
    dark_png: Path | None = None
    dark_lines: list[str] = field(default_factory=list)
    cka_png: Path | None = None
    cka_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


def budget_s() -> float:
    """``$FEATDISTILL_REPORT_BUDGET`` seconds, else ``REPORT_BUDGET_S``."""
    text = os.environ.get("FEATDISTILL_REPORT_BUDGET", "")
    try:
        return max(0.0, float(text)) if text else REPORT_BUDGET_S
    except ValueError:
        raise FeatdistillError(f"$FEATDISTILL_REPORT_BUDGET must be a number of seconds (0 turns the report's "
                               f"analysis off), got {text!r}") from None


def held_out_batch(loaders, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` held-out images (validation split, else test) ``x [n, C, S, S]`` and labels ``y [n]``."""
    split = loaders.val if len(loaders.val.dataset) else loaders.test
    xs, ys, have = [], [], 0
    for raw in split:
        batch = Batch.of(raw)
        xs.append(batch.inputs)
        ys.append(batch.labels)
        have += batch.size
        if have >= n:
            break
    return torch.cat(xs)[:n].to(device), torch.cat(ys)[:n].to(device)


@torch.no_grad()
def _seconds_per_image(models: list[nn.Module], x: torch.Tensor) -> float:
    """One eval forward of each model on ``x`` (the probe), in seconds per image, all models together; each model
    runs once before, so that one-off costs (allocations, kernel choice) do not count."""
    for model in dict.fromkeys(models):
        model.eval()(x)
    start = time.perf_counter()
    for model in models:
        model.eval()(x)
    return (time.perf_counter() - start) / x.shape[0]


def run_pairs(recipe: Recipe, saved: list[dict]) -> list[Pair]:
    """The pairs the run trained: the recipe's own, or the automatic ones as the run recorded them (``saved``:
    ``[{'student': [...], 'teacher': [...]}, ...]`` from plan.json, captured as outputs)."""
    if isinstance(recipe.pairs, tuple):
        return list(recipe.pairs)
    return [Pair(tuple(p["student"]) if len(p["student"]) > 1 else p["student"][0],
                 tuple(p["teacher"]) if len(p["teacher"]) > 1 else p["teacher"][0]) for p in saved]


def _initial_student(recipe: Recipe, loaders, device: torch.device) -> nn.Module:
    """The student as the run started it (the recipe's seed); the global random state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe.train.seed)
        return build_model(recipe.student, loaders.num_classes, loaders.in_chans, where="student").to(device).eval()


def analyse_run(recipe: Recipe, teacher: nn.Module, student: nn.Module, loaders, device: torch.device,
                out: Path, pairs: list[Pair]) -> Analysis:
    """Dark knowledge (``out/dark_knowledge.png``) and the CKA map before/after training (``out/cka.png``) within the
    time budget; never raises for the analysis itself (a failure becomes the note: the run's results stand)."""
    if is_text(recipe.data):
        return Analysis("Dark knowledge and the CKA map are computed for image recipes only (as in "
                        "`python -m featdistill.inspect`); this run is a language model.")
    start = time.perf_counter()
    try:
        budget = budget_s()
        if budget <= 0:
            return Analysis("Dark knowledge and the CKA map were turned off ($FEATDISTILL_REPORT_BUDGET=0).")
        return _analyse(recipe, teacher, student, loaders, device, out, pairs, budget, start)
    except Exception as exc:  # noqa: BLE001 - a report must not fail a finished run
        print(f"report: the analysis failed ({type(exc).__name__}: {exc}); report.html has the rest",
              file=sys.stderr)
        return Analysis(f"Dark knowledge and the CKA map could not be computed: {type(exc).__name__}: {exc}",
                        seconds=time.perf_counter() - start)


def _analyse(recipe: Recipe, teacher: nn.Module, student: nn.Module, loaders, device: torch.device, out: Path,
             pairs: list[Pair], budget: float, start: float) -> Analysis:
    from .inspect_output import LayerReport, plot_cka, plot_dark_knowledge  # matplotlib: only when drawing

    x, y = held_out_batch(loaders, MAX_SAMPLES, device)
    initial = _initial_student(recipe, loaders, device)
    # teacher twice (logits, features), each student once for its layers and once for its pairs
    per_image = _seconds_per_image([teacher, teacher, student, student, initial, initial], x[:PROBE])
    left = budget - (time.perf_counter() - start)
    n = min(x.shape[0], int(left / max(per_image, 1e-9)))
    if n < MIN_SAMPLES:
        need = (time.perf_counter() - start) + MIN_SAMPLES * per_image
        return Analysis(f"Dark knowledge and the CKA map were skipped: even {MIN_SAMPLES} held-out images would take "
                        f"about {need:.0f} s here, over the report's budget of {budget:g} s "
                        "($FEATDISTILL_REPORT_BUDGET raises it). `python -m featdistill.inspect --run RUN_DIR` "
                        "computes them.", seconds=time.perf_counter() - start)
    x, y = x[:n], y[:n]
    dk = an.analyse(an.model_logits(teacher, x).cpu(), y.cpu())
    plot_dark_knowledge(dk, out / "dark_knowledge.png")

    s_layers, t_layers = an.candidate_layers(student), an.candidate_layers(teacher)
    t_feats = an.layer_features(teacher, t_layers, x)
    before = an.cka_matrix(an.layer_features(initial, s_layers, x), t_feats).float().cpu()
    after = an.cka_matrix(an.layer_features(student, s_layers, x), t_feats).float().cpu()
    marked = an.marked_pairs(pairs, s_layers, t_layers)
    pair_before, t_pair = an.pair_cka(pairs, teacher, initial, x) if pairs else ({}, None)
    report = LayerReport(s_layers, t_layers, before, an.best_pairing(before),
                         an.uniform_pairing(len(s_layers), len(t_layers)), marked, pair_before, n, cka_after=after,
                         pair_after=an.pair_cka(pairs, teacher, student, x, t_pair)[0] if pairs else {})
    plot_cka(report, out / "cka.png")
    seconds = time.perf_counter() - start
    return Analysis(f"Measured on the first {n} held-out images in {seconds:.1f} s (the report's budget is "
                    f"{budget:g} s; $FEATDISTILL_REPORT_BUDGET changes it, `python -m featdistill.inspect --run "
                    "RUN_DIR` measures on more).", out / "dark_knowledge.png", dk.lines(), out / "cka.png",
                    report.lines(), seconds)
