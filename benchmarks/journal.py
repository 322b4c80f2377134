"""A journal of finished benchmark runs, so a table stopped part-way (a session that ends, a crash, Ctrl-C) picks up
where it was instead of training every run again.

One JSON line per finished run: its key and its summary. The key is a hash of everything that decides the run's
result: the recipe's code, the mode's overrides, the seed, the thread count (it changes float summation order)
and the teachers' weights. A run whose key is found is not trained again; change any of these and it is. The
recipe's docstrings and comments are not part of its code here: a recipe reports its measured results in its
docstring, and rewording them must not send every journaled run back to training. Journals written before
2026-12-02 keyed the recipe's raw bytes; such a run is still found while its file is unchanged, and is written
again under the new key.
Lines are appended and flushed one at a time, so at most the run in flight is lost; a torn last line is ignored.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
from pathlib import Path


def machine(cpuinfo: str | None = None) -> str:
    """The CPU, e.g. ``AMD EPYC (family 25 model 17, avx512)``: recorded beside each run, not in its key (a table may
    be finished on another machine of the same thread count, and its runs say which ran where). The family, model
    and vector width are there because machines that share a model name can differ in them, and with them the
    float rounding of a teacher trained from the same seed."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():  # the first processor's block
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    width = next((w for w in ("avx512f", "avx2", "avx") if w in flags), None)
    detail = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    detail += [width.removesuffix("f")] if width else []
    return fields["model name"] + (f" ({', '.join(detail)})" if detail else "")


class RunJournal:
    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, dict] = {}
        self.teachers: set[str] = set()  # the teachers' sha256 its runs used (lines from before 2026-12-03 lack it)
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.done[entry["key"]] = entry["summary"]
                    self.teachers.update(entry.get("teachers", []))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill mid-write: that run is simply trained again

    @staticmethod
    def keys(recipe: Path, overrides: list[str], seed: int, threads: int, teachers: list[str]) -> tuple[str, str]:
        """The run's key, and the key older journals gave it (the recipe's raw bytes instead of its code)."""
        def key(recipe_hash: str) -> str:
            what = [recipe.stem, recipe_hash, list(overrides), seed, threads, sorted(teachers)]
            return hashlib.sha256(json.dumps(what).encode()).hexdigest()

        return key(code_hash(recipe)), key(hashlib.sha256(recipe.read_bytes()).hexdigest())

    def get(self, key: str) -> dict | None:
        return self.done.get(key)

    def find(self, keys: tuple[str, str]) -> dict | None:
        """The summary journaled under the run's key or, failing that, its older key."""
        return next((self.done[k] for k in keys if k in self.done), None)

    def none_reused(self, teachers: list[str]) -> str | None:
        """Why a journal that holds runs gave none of them to this table, for the log; None when it is empty."""
        if not self.done:
            return None
        others = sorted(self.teachers - set(teachers))
        why = (f"they used teacher sha256 {', '.join(h[:12] for h in others)}, this table's is "
               f"{', '.join(h[:12] for h in teachers)}: a teacher trained again can come out with other weights "
               "(another CPU or thread count); put its cache file back ($FEATDISTILL_CACHE) to reuse them"
               if others else "the recipe's code, the overrides, the seeds, the thread count or the teacher differ")
        return f"  none of the {len(self.done)} runs in {self.path} match this table, so all are trained: {why}"

    def add(self, key: str, summary: dict, teachers: list[str] | None = None) -> None:
        self.done[key] = summary
        self.teachers.update(teachers or [])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "summary": summary, "machine": machine()}
        with open(self.path, "a") as f:
            f.write(json.dumps(entry | ({"teachers": teachers} if teachers else {})) + "\n")
            f.flush()
            os.fsync(f.fileno())


def code_hash(recipe: Path) -> str:
    """sha256 of the recipe file's syntax tree without its docstrings (comments never reach the tree); a file
    that does not parse is hashed as bytes (its runs fail anyway)."""
    source = recipe.read_bytes()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return hashlib.sha256(source).hexdigest()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()
