"""A journal of finished benchmark runs, so a table stopped part-way (a session that ends, a crash, Ctrl-C) picks up
where it was instead of training every run again.

One JSON line per finished run: its key and its summary. The key is a hash of everything that decides the run's
result: the recipe file's bytes, the mode's overrides, the seed, the thread count (it changes float summation
order) and the teachers' weights. A run whose key is found is not trained again; change any of these and it is.
Lines are appended and flushed one at a time, so at most the run in flight is lost; a torn last line is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path


def machine() -> str:
    """The CPU model (recorded beside each run, not in its key: a table may be finished on another machine of the
    same thread count, and its runs say which ran where)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class RunJournal:
    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.done[entry["key"]] = entry["summary"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill mid-write: that run is simply trained again

    @staticmethod
    def key(recipe: Path, overrides: list[str], seed: int, threads: int, teachers: list[str]) -> str:
        recipe_hash = hashlib.sha256(recipe.read_bytes()).hexdigest()
        what = [recipe.stem, recipe_hash, list(overrides), seed, threads, sorted(teachers)]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.done.get(key)

    def add(self, key: str, summary: dict) -> None:
        self.done[key] = summary
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "summary": summary, "machine": machine()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
