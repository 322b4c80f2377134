"""The README's Python example runs as written."""

import re
from pathlib import Path

from featdistill import count_hooks

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_distiller_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "Distiller(" in b)
    scope: dict = {}
    exec(compile(example, str(README), "exec"), scope)
    assert count_hooks(scope["teacher"]) == 0 and count_hooks(scope["small"]) == 0
    assert scope["terms"]["loss"].isfinite()
    assert set(scope["terms"]) == {"loss", "task", "kd", "feat/blocks.1~blocks.5", "feat/blocks.3~blocks.11"}
