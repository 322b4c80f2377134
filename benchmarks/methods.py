"""The methods of RepDistiller's table as `compare_kd.py` modes: each a set of `--set` overrides on a recipe.

Each method is placed where its paper (and RepDistiller's CIFAR code) places it, read off the recipe itself, so
the same definitions serve any recipe:
    fitnet          MSE hints (through the 'auto' adapter) on the middle of the recipe's pairs
    at, nst, vid    attention transfer / neuron selectivity transfer / VID on every pair of the recipe
    sp              similarity preserving on the recipe's deepest pair
    rkd, pkt, cc, crd   relations or contrast between the pre-logit embeddings: the input of each model's
                    classifier (timm's ``pretrained_cfg['classifier']``, else its last Linear)
    review_kd       ReviewKD: one multi-level term over all of the recipe's pairs
    dkd, dist, ls   logit losses in place of the soft KL (``kd.loss=...``), no feature pairs
A feature method runs twice: ``<name>`` (cross-entropy + the method, ``kd=None``) and ``<name>+kd`` (with the
recipe's logit KD). Every feature term has ``weight='auto'``: calibrated over the first steps to ``AUTO_RATIO``
times the logit-KD term (the task term without KD), the same rule for every method, instead of each paper's
hand-tuned weight for its own loss scale (RepDistiller: FitNet 100, AT 1000, SP 3000, PKT 30000, ...).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from featdistill.models import build_model
from featdistill.recipe import Pair, load_recipe

AUTO_RATIO = 0.25
FEATURE = ("fitnet", "at", "nst", "vid", "sp", "rkd", "pkt", "cc", "crd", "review_kd")
LOGIT = ("dkd", "dist", "ls")
METHODS = FEATURE + LOGIT
LOSS = {"fitnet": "mse", "at": "attention_transfer"}


def classifier(spec, in_chans: int) -> str:
    """The name of the module whose input is the pre-logit embedding ``[B, D]``."""
    model = build_model(spec, 10, in_chans)
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(name, (tuple, list)):  # distilled DeiT: (head, head_dist); the class-token head
        name = name[0]
    if name:
        return name
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def _pair(student: str, teacher: str, loss: str, **extra) -> str:
    fields = dict(student=student, teacher=teacher, loss=loss, weight="auto", auto_ratio=AUTO_RATIO, **extra)
    return repr(fields)


def method_overrides(recipe_path: Path, method: str) -> list[str]:
    """The ``--set`` overrides that turn the recipe into ``method`` combined with its logit KD."""
    recipe = load_recipe(recipe_path)
    if method in LOGIT:
        return ["pairs=[]", f"kd.loss={method!r}"]
    pairs = [p for p in recipe.pairs if isinstance(p, Pair)]
    if not pairs:
        raise SystemExit(f"{recipe_path}: --methods needs the recipe's own pairs to place the feature methods")
    layers = [(p.student, p.teacher) for p in pairs]
    if method in ("rkd", "pkt", "cc", "crd"):
        c = recipe.data.in_chans
        chosen = [_pair(classifier(recipe.student, c), classifier(recipe.teacher, c), method, capture="input")]
    elif method == "fitnet":
        chosen = [_pair(*layers[len(layers) // 2], "mse")]
    elif method == "sp":
        chosen = [_pair(*layers[-1], "sp")]
    elif method == "review_kd":
        chosen = [_pair(tuple(s for s, _ in layers), tuple(t for _, t in layers), "review_kd", adapter=None)]
    else:
        chosen = [_pair(s, t, LOSS.get(method, method)) for s, t in layers]
    return [f"pairs=[{', '.join(chosen)}]"]


def method_modes(recipe_path: Path, methods: list[str]) -> dict[str, list[str]]:
    """compare_kd modes for ``methods``: ``<m>`` (without logit KD) and ``<m>+kd`` for feature methods, ``<m>`` for
    logit methods."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    modes = {}
    for method in methods:
        overrides = method_overrides(recipe_path, method)
        if method in FEATURE:
            modes[method] = [*overrides, "kd=None"]
            modes[f"{method}+kd"] = overrides
        else:
            modes[method] = overrides
    return modes
