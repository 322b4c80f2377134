"""featdistill's token-level LM losses vs TRL's and torchtune's, on the same saved tensors.

    pip install trl torchtune      # benchmark-only, not featdistill dependencies; both keep the installed torch
    python benchmarks/lm_losses_vs_peers.py [--seed 0] [--out benchmarks/out]

Seeded random logits ``[B, T, V]`` for a student and a teacher, and labels ``[B, T]`` with ``-100`` on padded
positions, are saved to ``out/lm_losses_vs_peers_tensors.pt`` (plain tensors, read back with
``weights_only=True`` and used from the file). On them, each row compares featdistill's value (``token_kd_loss``,
chunked, the ``-100`` labels as its mask) and its gradient w.r.t. the student logits with the peer's (autograd):

- TRL ``GKDTrainer.generalized_jsd_loss(s, t, labels, beta, temperature)`` (``trl.experimental.gkd``) vs ``jsd``;
- torchtune ``ForwardKLLoss`` / ``ReverseKLLoss`` (``torchtune.modules.loss``; its ``kd_losses.py`` is loaded from
  the file when the package import fails for want of a fitting torchao) vs ``forward_kl`` / ``reverse_kl``.

``matched`` rows apply the stated conversion and must agree to 1e-5 relative (value and gradient), or the script
exits 1; ``as called`` rows show the raw values where the conventions differ. Writes ``out/lm_losses_vs_peers.json``
and ``.md`` (the table and the list of differences). A peer that is not installed is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from featdistill.losses import token_kd_loss

OUT = Path(__file__).parent / "out"
TOLERANCE = 1e-5

DIFFERENCES = {
    1: "TRL's beta weights the teacher, m = beta*p_t + (1-beta)*p_s, and beta=0 / beta=1 are special-cased to "
       "KL(t||s) / KL(s||t); featdistill's jsd follows that convention exactly.",
    2: "TRL divides the logits by T but does not multiply by T^2; featdistill multiplies every LM loss by T^2 (as "
       "Hinton KD), so matched rows at T != 1 compare featdistill / T^2.",
    3: "torchtune's ForwardKLLoss returns the cross-entropy -sum p_t log p_s, not KL(t||s): it lacks the teacher "
       "entropy term sum p_t log p_t (a constant for the student, so the gradient is the same); matched rows add "
       "the teacher entropy to torchtune's value.",
    4: "torchtune has no temperature; its losses are per-token means over labels != -100, as featdistill's.",
    5: "Reduction: all three average over the kept (non -100) tokens, not over the batch or the padded length.",
}


def make_tensors(seed: int, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, t, v = shape
    student = torch.randn(b, t, v, generator=g) * 2
    teacher = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    for i in range(b):  # sequence i ends in i * t // (2 * b) padded positions
        labels[i, t - i * t // (2 * b):] = -100
    return {"student": student, "teacher": teacher, "labels": labels}


def value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], student: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = student.detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), grad


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def grad_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def trl_rows(tensors: dict) -> list[dict]:
    from trl.experimental.gkd import GKDTrainer

    s, t, y = tensors["student"], tensors["teacher"], tensors["labels"]
    rows = []
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for temp in (1.0, 2.0):
            ours, g_ours = value_and_grad(lambda x, b=beta, T=temp: token_kd_loss(
                x, t, labels=y, loss="jsd", beta=b, temperature=T), s)
            peer, g_peer = value_and_grad(lambda x, b=beta, T=temp: GKDTrainer.generalized_jsd_loss(
                x, t, labels=y, beta=b, temperature=T), s)
            scaled = ours / temp**2
            rows.append({"peer": "trl", "loss": "jsd", "setting": f"beta={beta:g}, T={temp:g}; fd / T^2",
                         "kind": "matched", "ours": scaled, "theirs": peer, "rel_diff": rel(scaled, peer),
                         "grad_rel_diff": grad_rel(g_ours / temp**2, g_peer), "notes": [1, 2, 5]})
            if temp != 1:
                rows.append({"peer": "trl", "loss": "jsd", "setting": f"beta={beta:g}, T={temp:g}", "kind": "as called",
                             "ours": ours, "theirs": peer, "rel_diff": rel(ours, peer), "notes": [2]})
    return rows


def torchtune_kd_losses():
    """torchtune's ``modules/loss/kd_losses.py`` (it imports only torch). Importing the package runs torchtune's
    ``__init__``, which needs a torchao its version fits (0.6.1 fails with torchao 0.18), so on an ImportError the
    file is loaded on its own; ``meta['torchtune_import']`` says which way."""
    try:
        from torchtune.modules.loss import kd_losses

        return kd_losses, "package"
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("torchtune")
        if spec is None or not spec.submodule_search_locations:
            raise
        path = Path(next(iter(spec.submodule_search_locations))) / "modules" / "loss" / "kd_losses.py"
        loaded = importlib.util.spec_from_file_location("torchtune_kd_losses", path)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        return module, f"file {path.name} (torchtune's package import failed)"


def torchtune_rows(tensors: dict) -> list[dict]:
    kd_losses, _ = torchtune_kd_losses()
    ForwardKLLoss, ReverseKLLoss = kd_losses.ForwardKLLoss, kd_losses.ReverseKLLoss  # noqa: N806

    s, t, y = tensors["student"], tensors["teacher"], tensors["labels"]
    v = s.shape[-1]
    keep = y != -100
    log_q = t.log_softmax(-1)
    entropy_term = float((log_q.exp() * log_q).sum(-1)[keep].mean())  # sum p_t log p_t, per kept token
    rows = []
    for name, peer_cls, ours_name in (("ForwardKLLoss", ForwardKLLoss, "forward_kl"),
                                      ("ReverseKLLoss", ReverseKLLoss, "reverse_kl")):
        ours, g_ours = value_and_grad(lambda x, k=ours_name: token_kd_loss(x, t, labels=y, loss=k), s)
        loss = peer_cls()
        peer, g_peer = value_and_grad(lambda x, m=loss: m(x.reshape(-1, v), t.reshape(-1, v), y.reshape(-1)), s)
        shift = entropy_term if ours_name == "forward_kl" else 0.0
        rows.append({"peer": "torchtune", "loss": ours_name, "setting": f"{name}, T=1"
                     + ("; tt + teacher entropy term" if shift else ""), "kind": "matched", "ours": ours,
                     "theirs": peer + shift, "rel_diff": rel(ours, peer + shift),
                     "grad_rel_diff": grad_rel(g_ours, g_peer), "notes": [3, 4, 5] if shift else [4, 5]})
        if shift:
            rows.append({"peer": "torchtune", "loss": ours_name, "setting": f"{name}, T=1", "kind": "as called",
                         "ours": ours, "theirs": peer, "rel_diff": rel(ours, peer), "notes": [3]})
    return rows


def version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(module)
    except PackageNotFoundError:
        return "not installed"


def table(meta: dict, rows: list[dict], skipped: dict) -> str:
    lines = [f"featdistill LM losses vs TRL {meta['trl']} and torchtune {meta['torchtune']} (torch {meta['torch']}), "
             f"seed {meta['seed']}, logits {meta['shape']} float32 on the CPU, {meta['kept']} kept tokens; 'matched' "
             f"rows must agree below {TOLERANCE:g} relative (value and student gradient)."
             + (f" torchtune's losses: {meta['torchtune_import']}." if "torchtune_import" in meta else ""), "",
             "| peer | loss | setting | kind | featdistill | peer | rel. diff | grad rel. diff | differences |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        grad = f"{r['grad_rel_diff']:.1e}" if "grad_rel_diff" in r else "-"
        lines.append(f"| {r['peer']} | {r['loss']} | {r['setting']} | {r['kind']} | {r['ours']:.6g} | "
                     f"{r['theirs']:.6g} | {r['rel_diff']:.1e} | {grad} | {', '.join(map(str, r['notes']))} |")
    lines += ["", "Differences:", ""] + [f"{k}. {text}" for k, text in DIFFERENCES.items()]
    lines += [f"- {peer} skipped: {why}" for peer, why in skipped.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=[4, 32, 512], metavar=("B", "T", "V"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lm_losses_vs_peers_tensors.pt"
    torch.save(make_tensors(args.seed, tuple(args.shape)), path)
    tensors = torch.load(path, weights_only=True)
    rows, skipped = [], {}
    for peer, build in (("trl", trl_rows), ("torchtune", torchtune_rows)):
        try:
            rows += build(tensors)
        except ImportError as exc:
            skipped[peer] = f"not importable ({exc})"
    meta = {"seed": args.seed, "shape": args.shape, "kept": int((tensors["labels"] != -100).sum()),
            "torch": torch.__version__, "trl": version("trl"), "torchtune": version("torchtune"),
            "python": platform.python_version(), "tolerance": TOLERANCE}
    if "torchtune" not in skipped:
        meta["torchtune_import"] = torchtune_kd_losses()[1]
    (args.out / "lm_losses_vs_peers.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "differences": DIFFERENCES, "skipped": skipped}, indent=2))
    text = table(meta, rows, skipped)
    (args.out / "lm_losses_vs_peers.md").write_text(text + "\n")
    print(text)
    bad = [r for r in rows if r["kind"] == "matched"
           and (r["rel_diff"] > TOLERANCE or r.get("grad_rel_diff", 0) > TOLERANCE)]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
