"""Tests marked ``cuda`` need a CUDA device, tests marked ``browser`` a headless Chromium. Where there is none they
are deselected, not skipped: a skip would read as a test that could not run, and these run where the device is
(``benchmarks/gpu.sh`` for CUDA; a machine with ``apt-get install chromium`` for the browser)."""

import os
import shutil

import torch

# runs in tests leave out report.html's analysis (dark knowledge, CKA: seconds per run, dozens of runs); the report
# tests (tests/cli/test_report_html.py) set their own budget
os.environ.setdefault("FEATDISTILL_REPORT_BUDGET", "0")

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _missing() -> set[str]:
    """The markers whose device this machine lacks."""
    missing = set()
    if not torch.cuda.is_available():
        missing.add("cuda")
    if not any(shutil.which(name) for name in BROWSERS):
        missing.add("browser")
    return missing


def pytest_collection_modifyitems(config, items):
    missing = _missing()
    if not missing:
        return
    dropped = [item for item in items if any(item.get_closest_marker(m) for m in missing)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in gone]
