"""The shape of the package: rooms import in one direction, nothing cycles, config needs no torch, files stay small."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featdistill"
LEAVES = ("capture", "adapters", "losses")  # usable on their own, like timm's layers
UPPER = ("distill", "data", "train", "cli", "recipe", "models", "run")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """featdistill modules ``path`` imports anywhere in the file (function-level imports too), each with the
    packages whose ``__init__`` that import runs."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    # a module's own packages are initialised before it by Python itself: not an edge that can cycle
    return {m for m in found if m in modules and m != name and not name.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_leaf_rooms_import_no_upper_room():
    bad = {m: sorted(i for i in deps if i.split(".")[1] in UPPER)
           for m, deps in graph().items() if m.split(".")[1:2] and m.split(".")[1] in LEAVES}
    assert {m: d for m, d in bad.items() if d} == {}


def test_config_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import featdistill.config as c; import featdistill; "
            "p = featdistill.Pair('blocks.1', 'blocks.2'); print(p.key, c.Recipe(c.Model('a'), c.Model('b')).kd)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("blocks.1~blocks.2 LogitKD(")


def test_capture_kinds_have_one_source():
    from featdistill.capture import TAPS
    from featdistill.config import CAPTURES

    assert tuple(TAPS) == CAPTURES


def test_modules_stay_readable_in_one_sitting():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}
