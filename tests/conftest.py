"""Tests marked ``cuda`` need a CUDA device. Where none is visible they are deselected, not skipped: a skip would
read as a test that could not run, and these run on a GPU machine through ``benchmarks/gpu.sh``."""

import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    kept = [item for item in items if item.get_closest_marker("cuda") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("cuda")])
        items[:] = kept
