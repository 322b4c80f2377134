"""Language-model recipes in `compare_kd.py`: their modes, their metric, and the teacher's text they train on.

A text recipe (``data.name`` 'pydoc' or 'text', e.g. recipes/lm_to_small_lm.py, whose ``kd`` is forward KL) runs in
these modes, each a set of ``--set`` overrides on it:
    alone                 the student with cross-entropy on the real text          kd=None, pairs=[]
    forward_kl            token-level KD, KL(teacher || student) per token          pairs=[]
    forward_kl+hidden     the recipe as shipped: forward KL + hidden-state pairs    (none)
    reverse_kl            KL(student || teacher) per token (MiniLLM's direction)    kd.loss='reverse_kl', pairs=[]
    jsd                   generalised Jensen-Shannon (GKD's default)                kd.loss='jsd', pairs=[]
    synthetic             sequence-level KD: cross-entropy on the teacher's text    kd=None, pairs=[], train_root
    synthetic+forward_kl  the teacher's text and forward KL on it                   pairs=[], train_root
``train_root`` is ``data.train_root=<the generated JSONL>``: only the training split changes, so every mode is tested
on the same held-out real text (recipes/lm_synthetic.py is the synthetic mode as a recipe). The text is generated
once, in the main process before any worker starts, by ``featdistill.generate`` with its default sampling settings
and seed 0, under ``<out>/synthetic/`` in a file named by the recipe and its teacher's cache key, so a table never
trains on another teacher's text; an existing file is reused.

The metric is the student's test bits per byte (``summary.json``'s ``student_bits_per_byte``), where lower is better,
so the paired difference is taken as ``baseline - mode``: positive is better, and **wins** still means better than
the baseline (forward_kl, the analogue of logit KD).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from paired import Paired, paired

from featdistill.cli.generate import main as generate_main
from featdistill.cli.teacher import cache_path
from featdistill.data import is_text
from featdistill.recipe import apply_overrides, check, load_recipe

TRAIN_ROOT = "<synthetic>"  # stands for data.train_root=<the generated file> until synthetic_modes fills it in
LM_MODES = {"alone": ["kd=None", "pairs=[]"], "forward_kl": ["pairs=[]"], "forward_kl+hidden": [],
            "reverse_kl": ["kd.loss='reverse_kl'", "pairs=[]"], "jsd": ["kd.loss='jsd'", "pairs=[]"],
            "synthetic": ["kd=None", "pairs=[]", TRAIN_ROOT], "synthetic+forward_kl": ["pairs=[]", TRAIN_ROOT]}
LM_LABELS = {"alone": "student alone", "forward_kl": "forward KL", "forward_kl+hidden": "forward KL + hidden (recipe)",
             "reverse_kl": "reverse KL", "jsd": "JSD", "synthetic": "teacher's text (seq-level KD)",
             "synthetic+forward_kl": "teacher's text + forward KL"}
SAMPLES = 2000  # generated continuations: about as many bytes as pydoc's training split


@dataclass(frozen=True)
class Metric:
    """What a table compares: ``<who>_<name>`` of each run's summary (``student_`` / ``teacher_``), and how to print
    it (times ``scale``, ``digits`` decimals, then ``unit``)."""

    name: str
    higher_is_better: bool
    baseline: str  # the mode every paired difference is taken against
    baseline_label: str
    column: str  # the table's heading for the metric
    diff_column: str  # ... and for the paired difference
    axis: str  # the chart's y label
    unit: str
    scale: float
    digits: int

    def gain(self, mode: list[float], base: list[float]) -> Paired:
        """The paired difference, seed by seed, oriented so that positive means better than the baseline."""
        return paired(mode, base) if self.higher_is_better else paired(base, mode)

    def show(self, value: float, sign: bool = False) -> str:
        return f"{self.scale * value:{'+' if sign else ''}.{self.digits}f}"


ACCURACY = Metric("accuracy", True, "logit", "logit KD", "test accuracy", "paired diff to logit KD",
                  "student test accuracy (%)", "%", 100.0, 2)
BITS_PER_BYTE = Metric("bits_per_byte", False, "forward_kl", "forward KL", "test bits/byte (lower is better)",
                       "paired gain over forward KL in bits/byte (forward KL - mode: + is better, wins = better)",
                       "student test bits per byte (lower is better)", " bits/byte", 1.0, 3)
METRICS = {m.name: m for m in (ACCURACY, BITS_PER_BYTE)}


def is_text_recipe(recipe: Path) -> bool:
    return is_text(load_recipe(recipe).data)


def metric_of(recipe: Path) -> Metric:
    return BITS_PER_BYTE if is_text_recipe(recipe) else ACCURACY


def synthetic_path(recipe: Path, extra: list[str], out: Path, samples: int) -> Path:
    """Where this recipe's teacher's text lives: named by the recipe and its teacher's cache key (or checkpoint)."""
    resolved = check(apply_overrides(load_recipe(recipe), extra), str(recipe))
    if resolved.teacher.pretrain is not None:
        teacher = cache_path(resolved).stem
    elif resolved.teacher.checkpoint:
        teacher = "checkpoint-" + hashlib.sha256(Path(resolved.teacher.checkpoint).read_bytes()).hexdigest()[:16]
    else:
        teacher = "untrained"
    return out / "synthetic" / f"{recipe.stem}-{teacher}-n{samples}.jsonl"


def lm_modes(recipe: Path, names: list[str], extra: list[str], out: Path, samples: int = SAMPLES) -> dict:
    """``{mode: overrides}`` for the text recipe ``recipe``, with ``train_root`` filled in for the synthetic modes."""
    loaded = load_recipe(recipe)
    if loaded.data.train_root is not None:
        raise SystemExit(f"{recipe} already trains on data.train_root={loaded.data.train_root!r}; give the recipe it "
                         "derives from (e.g. recipes/lm_to_small_lm.py): compare_kd makes the synthetic modes itself")
    kd = apply_overrides(loaded, extra).kd
    if kd is None or kd.loss != "forward_kl":
        raise SystemExit(f"{recipe}: the LM modes vary the recipe's token KD, which must be forward KL "
                         f"(kd=LogitKD(loss='forward_kl', ...)); it is {kd!r}")
    unknown = [n for n in names if n not in LM_MODES]
    if unknown:
        raise SystemExit(f"{recipe} is a language-model recipe; modes {unknown} are for images. LM modes: "
                         f"{', '.join(LM_MODES)}")
    root = f"data.train_root={str(synthetic_path(recipe, extra, out, samples))!r}"
    return {n: [root if o == TRAIN_ROOT else o for o in LM_MODES[n]] for n in names}


def ensure_synthetic(recipe: Path, modes: dict[str, list[str]], extra: list[str],
                     samples: int = SAMPLES) -> dict[str, str]:
    """Generate the teacher's text the modes train on, if missing (training and caching the teacher first if need
    be); ``{path: sha256}`` of each file, for the table's metadata."""
    found = {}
    for overrides in modes.values():
        for item in overrides:
            if not item.startswith("data.train_root="):
                continue
            path = Path(ast.literal_eval(item.split("=", 1)[1]))
            if not path.exists():
                argv = [str(recipe), "--samples", str(samples), "--out", str(path), "--seed", "0",
                        "--quiet"] + [a for o in extra for a in ("--set", o)]
                print(f"{recipe.stem}: generating the teacher's text: python -m featdistill.generate "
                      f"{' '.join(argv)}", flush=True)
                buffer = io.StringIO()
                with contextlib.redirect_stdout(buffer):
                    code = generate_main(argv)
                if code != 0:
                    raise SystemExit(f"generating {path} failed ({code}; its error is above):\n"
                                     f"{buffer.getvalue()[-2000:]}")
                print("  " + buffer.getvalue().strip().splitlines()[-1], flush=True)
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
