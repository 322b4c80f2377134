"""``report.html``: one self-contained page per run directory, written at the end of a run.

The page holds the plan, the summary (accuracy, size, speed of both models), the loss curves and validation
accuracy, the teacher's dark knowledge and the CKA map of the student before and after training
(:mod:`.report_analysis`), and the recipe. It makes no network request: images are PNGs inlined as base64
``data:`` URIs, the style is inline, there is no script, and every link is an anchor within the page. All text is
escaped with :func:`html.escape`. :func:`page_problems` checks a page for exactly these properties.
"""

from __future__ import annotations

import base64
import html
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..config import Recipe
from ..train import METRICS
from .report_analysis import Analysis, analyse_run, run_pairs

REPORT = "report.html"
PLAN = "plan.json"  # the plan as the runner printed it, and the pairs it trained

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 0 24px 48px; color: #1d2430; background: #fbfbfd; }
header { border-bottom: 2px solid #d8dde6; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 24px 0 4px; } h2 { font-size: 20px; margin: 28px 0 8px; }
.meta { color: #5b6575; font-size: 13px; margin: 0 0 10px; }
nav a { margin-right: 14px; color: #2b5fb4; text-decoration: none; font-size: 14px; }
section { background: #fff; border: 1px solid #e3e7ee; border-radius: 8px; padding: 4px 20px 16px;
          margin-top: 16px; }
pre { background: #f3f5f9; padding: 12px; border-radius: 6px; font-size: 12.5px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
pre.findings { background: none; padding: 0 4px; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border-bottom: 1px solid #e3e7ee; padding: 4px 14px 4px 0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.note { color: #5b6575; font-size: 13px; } .lead { font-size: 16px; }
"""


def save_plan(run_dir: Path, distiller) -> None:
    """Record the plan as printed and the pairs the Distiller trains (what ``report.html`` shows)."""
    pairs = [{"student": list(p.layers("student")), "teacher": list(p.layers("teacher")), "key": p.key}
             for p in distiller.pairs]
    (run_dir / PLAN).write_text(json.dumps({"text": distiller.plan(), "pairs": pairs}, indent=2))


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _png(path: Path | None, alt: str) -> str:
    """An ``<img>`` of the PNG at ``path`` inlined as a base64 data: URI, or a note when there is none."""
    if path is None or not path.is_file():
        return f'<p class="note">{html.escape(alt)}: not available.</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


LABELS = {"accuracy": "test accuracy", "params": "parameters", "latency_ms": "latency, ms per input (CPU)",
          "student_keeps": "the student keeps (of the teacher's accuracy)", "size_ratio": "student size / teacher size",
          "speedup": "student speed-up on the CPU"}


def _fmt(key: str, value) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if "accuracy" in key or key in ("student_keeps", "size_ratio"):
            return f"{value:.2%}"
        return f"{value:.2f}x" if key == "speedup" else f"{value:.4g}"
    return str(value)


def _summary_tables(summary: dict) -> str:
    """Teacher and student side by side (the figures both have: ``teacher_X`` and ``student_X``), then every other
    scalar."""
    scalar = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
    names = [k.removeprefix("teacher_") for k in scalar if k.startswith("teacher_") and
             f"student_{k.removeprefix('teacher_')}" in scalar]
    paired = {f"{side}_{n}" for n in names for side in ("teacher", "student")}
    rows = "".join(f"<tr><th>{html.escape(LABELS.get(n, n.replace('_', ' ')))}</th>"
                   + "".join(f'<td class="num">{html.escape(_fmt(n, scalar[f"{side}_{n}"]))}</td>'
                             for side in ("teacher", "student")) + "</tr>" for n in names)
    other = "".join(f"<tr><th>{html.escape(LABELS.get(k, k.replace('_', ' ')))}</th>"
                    f"<td>{html.escape(_fmt(k, v))}</td></tr>" for k, v in scalar.items() if k not in paired)
    return (f"<table><tr><th></th><th>teacher</th><th>student</th></tr>{rows}</table>"
            f"<table>{other}</table>")


def _epoch_table(metrics: Path) -> str:
    """One row per epoch from ``metrics.jsonl``: the validation figure, the loss, the time and the throughput."""
    try:
        epochs = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("kind") == "epoch"]
    except (OSError, ValueError):
        return '<p class="note">metrics.jsonl could not be read.</p>'
    if not epochs:
        return ""
    keys = [k for k in ("val_accuracy", "val_bits_per_byte", "loss", "task", "kd", "epoch_seconds",
                        "images_per_s") if k in epochs[0]]
    head = "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in keys)
    body = "".join("<tr><td>" + str(r["epoch"] + 1) + "</td>" + "".join(
        f'<td class="num">{html.escape(_fmt(k, r.get(k)))}</td>' for k in keys) + "</tr>" for r in epochs)
    return f"<table><tr><th>epoch</th>{head}</tr>{body}</table>"


def _lines(lines: list[str]) -> str:
    """Findings as ``inspect`` prints them (aligned tables among them): preformatted, wrapped."""
    return f'<pre class="findings">{html.escape(chr(10).join(lines))}</pre>' if lines else ""


def render(run_dir: Path, summary: dict, summary_text: str, analysis: Analysis) -> str:
    """The page, from what the run directory holds (plan.json, metrics.jsonl, curves.png, recipe.json, run.json)."""
    run = _read_json(run_dir / "run.json") or {}
    plan = _read_json(run_dir / PLAN) or {}
    recipe_json = (run_dir / "recipe.json").read_text() if (run_dir / "recipe.json").is_file() else "{}"
    meta = " · ".join(html.escape(str(v)) for v in (
        f"run directory {run_dir.resolve()}", f"recipe {run.get('recipe_path', '?')}",
        f"started {run.get('created', '?')}", f"featdistill {__version__}", f"torch {torch.__version__}"))
    plan_text = plan.get("text") or "The plan was not recorded (a run directory from before report.html)."
    sections = [
        ("summary", "Summary", f'<p class="lead">{"<br>".join(map(html.escape, summary_text.splitlines()))}</p>'
         + _summary_tables(summary)),
        ("plan", "Plan", f"<pre>{html.escape(plan_text)}</pre>"),
        ("training", "Training", _png(run_dir / "curves.png", "loss terms per epoch and validation accuracy")
         + _epoch_table(run_dir / METRICS)),
        ("dark-knowledge", "Dark knowledge", f'<p class="note">{html.escape(analysis.note)}</p>'
         + _png(analysis.dark_png, "the teacher's soft targets per temperature and class by class")
         + _lines(analysis.dark_lines)),
        ("layers", "Layer similarity (linear CKA)", f'<p class="note">{html.escape(analysis.note)}</p>'
         + _png(analysis.cka_png, "linear CKA of student and teacher layers, before and after training")
         + _lines(analysis.cka_lines)),
        ("recipe", "Recipe", f"<details><summary>recipe.json (the recipe with its overrides: "
         f"{html.escape(', '.join(run.get('overrides', [])) or 'none')})</summary>"
         f"<pre>{html.escape(recipe_json)}</pre></details>"),
    ]
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    title = f"featdistill run {run_dir.name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body><header>"
            f"<h1>{html.escape(title)}</h1><p class=\"meta\">{meta}</p><nav>{nav}</nav></header>\n{body}\n"
            f'<p class="note">One self-contained page: images are inlined, nothing is loaded from the network.</p>'
            "</body></html>\n")


def write_report(run_dir: Path, recipe: Recipe, summary: dict, summary_text: str, teacher: nn.Module,
                 student: nn.Module, loaders, device: torch.device) -> Path:
    """Compute the analysis (within its time budget) and write ``run_dir/report.html``; returns its path."""
    plan = _read_json(run_dir / PLAN) or {}
    analysis = analyse_run(recipe, teacher, student, loaders, device, run_dir, run_pairs(recipe, plan.get("pairs", [])))
    path = run_dir / REPORT
    path.write_text(render(run_dir, summary, summary_text, analysis), encoding="utf-8")
    return path


# -- checking a page -----------------------------------------------------------------------------------------------
_URL_ATTRS = ("src", "href", "srcset", "poster", "data", "action", "formaction", "background", "xlink:href",
              "manifest", "ping")
_FORBIDDEN_TAGS = ("script", "link", "iframe", "frame", "object", "embed", "base", "audio", "video", "source")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[str] = []
        self.styles: list[str] = []
        self.ids: set[str] = set()
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("id", "name"):
                self.ids.add(value or "")
            if name in _URL_ATTRS:
                self.refs.append((tag, name, value or ""))
            if name == "style":
                self.styles.append(value or "")

    def handle_endtag(self, tag):
        self._in_style = False if tag == "style" else self._in_style

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def page_problems(text: str) -> list[str]:
    """Why ``text`` is not a self-contained page, one line each (empty when it is): a script, stylesheet link, frame
    or other embed; a ``src``/``href``/... outside the page (only ``data:`` images and ``#anchors`` to an element of
    the page are allowed);
    an ``<img>`` whose data: URI is not a base64 PNG; a CSS ``url(`` or ``@import``."""
    parser = _Refs()
    parser.feed(text)
    parser.close()
    found = [f"<{t}> element (would load or run something)" for t in parser.tags if t in _FORBIDDEN_TAGS]
    images = 0
    for tag, attr, value in parser.refs:
        if tag == "img" and attr == "src":
            images += 1
            head, _, data = value.partition(",")
            if head != "data:image/png;base64":
                found.append(f"<img src={value[:60]!r}>: not an inlined PNG")
                continue
            try:
                raw = base64.b64decode(data, validate=True)
            except ValueError:
                found.append("<img>: its base64 does not decode")
                continue
            if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
                found.append("<img>: its data is not a PNG")
        elif not (attr == "href" and value.startswith("#")):
            found.append(f"<{tag} {attr}={value[:60]!r}>: a reference outside the page")
        elif value[1:] not in parser.ids:
            found.append(f"<{tag} href={value!r}>: no element has that id")
    found += [f"CSS refers outside the page: {s.strip()[:60]!r}" for s in parser.styles
              if "url(" in s.lower() or "@import" in s.lower()]
    if not images:
        found.append("no images")
    return found
