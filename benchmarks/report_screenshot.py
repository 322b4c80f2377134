"""report.html in a real browser: headless Chromium opens a run's report, the DOM it built is checked, and a
screenshot is saved.

Without --run it first runs the default recipe (recipes/vit_to_deit.py) for a short schedule (--set options are
passed on; the teacher comes from the cache). Then:

1. the report's own text is checked (featdistill.cli.report_html.page_problems): no script, stylesheet link, frame
   or embed; every src/href inside the page (data: URIs, #anchors that exist); every <img> a base64 PNG;
2. `chromium --headless --dump-dom` loads the page and the DOM it built gets the same check, and must still hold
   every image and section (nothing failed to load or parse);
3. `chromium --headless --screenshot` saves the rendered page: benchmarks/out/report_screenshot.png.

Chromium runs with --no-sandbox (needed as root in a container) and no network: the page must need none.

    python benchmarks/report_screenshot.py                              # run the default recipe, 2 epochs
    python benchmarks/report_screenshot.py --run runs/vit_to_deit-...   # an existing run directory
    python benchmarks/report_screenshot.py --set train.epochs=3 --set pairs=cka

Exit codes: 0 the page passed every check, 1 it did not (each problem is printed), 2 no Chromium or no report.
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "vit_to_deit.py"
OUT = ROOT / "benchmarks" / "out" / "report_screenshot.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# no network, no profile left behind, no first-run UI; headless rendering without a GPU
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--proxy-server=127.0.0.1:9",
         "--proxy-bypass-list=<-loopback>")


def find_browser() -> str | None:
    """The path of a Chromium (or Chrome) executable, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def chromium(browser: str, page: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with ``args`` and a throwaway profile; stdout as text."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout)


class _Census(HTMLParser):
    """Counts the <img> and <section> elements of a page."""

    def __init__(self):
        super().__init__()
        self.images = self.sections = 0

    def handle_starttag(self, tag, attrs):
        self.images += tag == "img"
        self.sections += tag == "section"


def census(text: str) -> tuple[int, int]:
    parser = _Census()
    parser.feed(text)
    return parser.images, parser.sections


def decode_images(text: str) -> list[str]:
    """Problems opening each inlined image as a PNG with Pillow (a stricter check than its signature)."""
    from PIL import Image

    found = []
    for i, part in enumerate(text.split('src="data:image/png;base64,')[1:]):
        try:
            with Image.open(io.BytesIO(base64.b64decode(part.split('"', 1)[0]))) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
            found.append(f"image {i + 1}: does not open as a PNG ({type(exc).__name__}: {exc})")
    return found


def make_run(overrides: list[str], out: Path) -> Path:
    """Run the default recipe (2 epochs unless overridden) into ``out``; the run directory."""
    from featdistill.run import main as run_main

    sets = [x for o in ["train.epochs=2", *overrides] for x in ("--set", o)]
    if run_main([str(DEFAULT_RECIPE), *sets, "--quiet", "--out", str(out)]) != 0:
        raise SystemExit(f"the run into {out} failed (its error is above)")
    return out


def check(run_dir: Path, shot: Path, width: int, height: int) -> list[str]:
    """Every problem found with ``run_dir/report.html``, in the file and in the browser; writes ``shot``."""
    from featdistill.cli.report_html import REPORT, page_problems

    page = run_dir / REPORT
    browser = find_browser()
    if browser is None or not page.is_file():
        print("no Chromium found (apt-get install -y chromium)" if browser is None else f"no {page}", file=sys.stderr)
        raise SystemExit(2)
    text = page.read_text(encoding="utf-8")
    problems = [f"report.html: {p}" for p in page_problems(text)] + decode_images(text)
    images, sections = census(text)

    dom = chromium(browser, page, "--dump-dom", "--virtual-time-budget=5000")
    if dom.returncode != 0 or "<html" not in dom.stdout:
        problems.append(f"chromium --dump-dom failed ({dom.returncode}): {dom.stderr.strip()[-300:]}")
    else:
        problems += [f"the DOM Chromium built: {p}" for p in page_problems(dom.stdout)]
        if census(dom.stdout) != (images, sections):
            problems.append(f"the DOM Chromium built has (images, sections) {census(dom.stdout)}, the file "
                            f"{(images, sections)}")

    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    done = chromium(browser, page, f"--screenshot={shot.resolve()}", f"--window-size={width},{height}")
    if done.returncode != 0 or not shot.is_file():
        problems.append(f"chromium --screenshot failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    else:
        problems += [f"the screenshot: {p}" for p in decode_images(
            'src="data:image/png;base64,' + base64.b64encode(shot.read_bytes()).decode() + '"')]
    print(f"{page}: {images} images, {sections} sections, {len(text) / 1e3:.0f} kB; Chromium: {browser}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="an existing run directory (else a new short run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="for the new run: recipe overrides (default train.epochs=2)")
    p.add_argument("--run-out", type=Path, help="where the new run goes (default: a temporary folder)")
    p.add_argument("--screenshot", type=Path, default=OUT, help=f"the PNG to write (default {OUT.relative_to(ROOT)})")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=3400, help="the window height: the screenshot's (default 3400)")
    args = p.parse_args(argv)
    if find_browser() is None:
        print("no Chromium found: apt-get install -y chromium (Debian), then run this again", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or make_run(args.overrides, args.run_out or Path(tmp) / DEFAULT_RECIPE.stem)
        problems = check(run_dir, args.screenshot, args.width, args.height)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"screenshot: {args.screenshot}" if args.screenshot.is_file() else "no screenshot")
    print("ok: one self-contained page, every image a PNG, no reference outside it" if not problems
          else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
