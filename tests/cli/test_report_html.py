"""``report.html``: a run writes one self-contained page (checked here with the standard library's html.parser, no
browser): every image an inlined PNG, no reference outside the page, all text escaped; the analysis keeps to its
time budget. One tiny run (pairs='cka', TensorBoard on) serves every test; the ``browser`` test opens the page in
headless Chromium and is deselected where there is none."""

import base64
import importlib
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from featdistill.cli.report_analysis import Analysis, analyse_run
from featdistill.cli.report_html import page_problems, render
from featdistill.data import make_loaders
from featdistill.models import build_model
from featdistill.recipe import apply_overrides, load_recipe
from featdistill.run import main as run_main

ROOT = Path(__file__).resolve().parents[2]
VIT = ROOT / "recipes" / "vit_to_deit.py"
SETS = ["train.epochs=1", "teacher.pretrain.epochs=1", "pairs='cka'", "train.log=['tensorboard']"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("runs") / "vit_to_deit"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATDISTILL_CACHE", str(cache))
        mp.setenv("FEATDISTILL_REPORT_BUDGET", "30")  # tests run with 0 (conftest.py): this one shows the analysis
        assert run_main([str(VIT), *[x for s in SETS for x in ("--set", s)], "--quiet", "--out", str(out)]) == 0
    return out


class Page(HTMLParser):
    """Every tag with its attributes, the ids, the text and the CSS of a page."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.ids, self.text, self.css, self._style = [], set(), [], [], False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.ids.update(v for k, v in attrs if k == "id")
        self.css += [v for k, v in attrs if k == "style"]
        self._style = tag == "style"

    def handle_endtag(self, tag):
        self._style = False

    def handle_data(self, data):
        (self.css if self._style else self.text).append(data)


def test_the_run_writes_one_self_contained_page(run_dir):
    page = Page((run_dir / "report.html").read_text(encoding="utf-8"))
    names = [t for t, _ in page.tags]
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(names)
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == 3  # curves, dark knowledge, CKA map
    for attrs in images:
        head, data = attrs["src"].split(",", 1)
        assert head == "data:image/png;base64" and base64.b64decode(data, validate=True).startswith(PNG)
        assert attrs.get("alt")
    for _, attrs in page.tags:  # every other reference is an anchor to an element of the page
        for key in ("href", "src", "srcset", "action", "poster", "data"):
            if key in attrs and not attrs[key].startswith("data:image/png;base64,"):
                assert key == "href" and attrs[key].startswith("#") and attrs[key][1:] in page.ids, attrs
    assert not any("url(" in c or "@import" in c for c in page.css)
    assert {"summary", "plan", "training", "dark-knowledge", "layers", "recipe"} <= page.ids
    text = "".join(page.text)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['student_accuracy']:.2%}" in text and "of the teacher's accuracy" in text
    assert "pairs chosen automatically by linear CKA" in text and "<-> teacher blocks." in text  # the plan
    assert "suggested temperature T=" in text and "before -> after training" in text  # the analysis, in words
    assert page_problems((run_dir / "report.html").read_text(encoding="utf-8")) == []


def test_the_run_also_logs_to_tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/loss", "step/task", "step/kd", "step/lr", "epoch/val_accuracy"} <= tags
    assert any(t.startswith("step/feat/blocks.") for t in tags)


def test_all_text_is_escaped(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"text": "<script>alert('plan')</script>", "pairs": []}))
    (tmp_path / "run.json").write_text(json.dumps({"recipe_path": "a<b>.py", "overrides": ["x='<img src=x>'"]}))
    page = render(tmp_path, {"student_accuracy": 0.5, "note": "<i>"}, "keeps <50%",
                  Analysis("a <note> & more", cka_lines=["<td>"]))
    assert "<script>" not in page and "<img src=x>" not in page and "<note>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&#x27;plan&#x27;)&lt;/script&gt;" in page and "a &lt;note&gt; &amp; more" in page
    assert page_problems(page) == ["no images"]  # nothing was drawn: the notes say so, nothing refers outside


@pytest.mark.parametrize("snippet, words", [
    ('<script src="https://cdn.example/x.js"></script>', "<script> element"),
    ('<link rel="stylesheet" href="style.css">', "<link> element"),
    ('<img src="curves.png">', "not an inlined PNG"),
    ('<img src="data:image/png;base64,aGVsbG8=">', "not a PNG"),
    ('<a href="https://example.org">x</a>', "a reference outside the page"),
    ('<a href="#nowhere">x</a>', "no element has that id"),
    ('<div style="background: url(x.png)"></div>', "CSS refers outside the page"),
])
def test_page_problems_finds_each_kind_of_outside_reference(snippet, words):
    good = '<img alt="x" src="data:image/png;base64,' + base64.b64encode(PNG + b"rest").decode() + '">'
    assert page_problems(f"<html><body>{good}</body></html>") == []
    assert any(words in p for p in page_problems(f"<html><body>{good}{snippet}</body></html>"))


def test_the_analysis_keeps_to_its_budget(run_dir, monkeypatch):
    recipe = apply_overrides(load_recipe(VIT), ["train.epochs=1"])
    loaders = make_loaders(recipe.data, 64, num_workers=0)
    teacher = build_model(recipe.teacher, loaders.num_classes, loaders.in_chans)
    student = build_model(recipe.student, loaders.num_classes, loaders.in_chans)
    cpu = torch.device("cpu")
    monkeypatch.setenv("FEATDISTILL_REPORT_BUDGET", "0")
    off = analyse_run(recipe, teacher, student, loaders, cpu, run_dir, [])
    assert "turned off" in off.note and off.dark_png is None and off.cka_png is None
    monkeypatch.setenv("FEATDISTILL_REPORT_BUDGET", "0.0001")
    skipped = analyse_run(recipe, teacher, student, loaders, cpu, run_dir, [])
    assert "skipped" in skipped.note and "inspect --run" in skipped.note and skipped.cka_png is None


@pytest.mark.browser
def test_chromium_renders_the_page_with_its_images(run_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        screenshot = importlib.import_module("report_screenshot")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    shot = tmp_path / "shot.png"
    assert screenshot.check(run_dir, shot, 1280, 1600) == []
    assert shot.read_bytes().startswith(PNG)
