"""featdistill vs timm's own distillation tasks (and torchdistill's DistillationBox when importable).

Fresh copies of one seeded teacher/student per implementation, one shared batch, timm's projection copied into
the others. Per model pair: `feat` = timm FeatureDistillationTask (CE + W*MSE(proj(pooled s), pooled t)) vs
featdistill kd=None + Pair(<pooled layer>, adapter='linear', loss='mse', weight=W) vs torchdistill Linear4CCKD +
WeightedSumLoss(CE, W*MSELoss); `logit` = timm LogitDistillationTask(task_loss_weight=a, temperature=T) vs
LogitKD(T, a) vs torchdistill a*CE + (1-a)*T^2*KDLoss(alpha=0). Reports the weighted loss terms, max |diff| to
timm of terms and of student+projection gradients, and median full-step times (forward, backward, SGD) over
interleaved rounds in shuffled order.   python benchmarks/vs_peers.py [--rounds 20] [--pairs cnn vit] [--out DIR]

Semantic differences (timm 1.0.31 timm/task/distillation.py, torchdistill 1.1.5):
 1. timm's FeatureDistillationTask has no logit-KD term and no temperature (CE + w*MSE only); logit KD is a
    separate task. featdistill's LogitKD + Pair in one step has no timm peer, hence two comparisons.
 2. Captured tensor: timm runs forward_features once and forward_head twice (pre_logits=True, then for logits);
    featdistill hooks one module in one plain forward: ResNet `global_pool` [B, C], ViT `head_drop` [B, C]
    (fc_norm is Identity under token pooling). Same tensor while head dropout is 0 (timm default). With
    drop_rate > 0: ResNet's head dropout is functional (F.dropout after global_pool), so no hookable module
    outputs timm's feature; timm's two forward_head calls draw different dropout masks for feature and
    logits, while featdistill's head_drop output is the very tensor fed to the head.
 3. Projection: timm builds nn.Linear(Cs, Ct) only when head_hidden_size/num_features differ, inside its
    trainable_module (saved as task state 'projection'); featdistill's 'linear' adapter always builds a Linear
    ('auto' gives identity for equal shapes), sized by a no-grad dry run on sample_input, kept in
    Distiller.adapters. Both default-initialised: different random draws unless copied (done here).
 4. Weights/reporting: timm returns UNweighted 'task_loss'/'kd_loss' and 'output'; weights are independent
    (defaults 1 and 1; only task_loss_weight given -> distill = 1 - task). featdistill returns weighted
    'task', 'kd', 'feat/<pair>'; CE weight is alpha with LogitKD, 1 with kd=None. Defaults differ: timm T=1,
    featdistill T=4, alpha=0.5. Compared here: weight*term for timm vs featdistill's values.
 5. KD formula: identical (kl_div(log_softmax(s/T), log_softmax(t/T), 'batchmean', log_target=True) * T^2);
    featdistill casts logits (and MSE inputs) to float32 first, a no-op in fp32. torchdistill's KDLoss uses
    softmax targets (log_target=False) and applies T^2 only when alpha > 0 (alpha=0: bare KL, so T^2 is in
    the term weight here).
 6. Teacher input: timm re-normalises x for the teacher when student/teacher pretrained_cfg mean/std differ
    (DistillationTeacher.normalize_input); featdistill and torchdistill feed the same x. Equal for these pairs
    (same mean/std; printed as 'renorm' in the JSON).
 7. Teacher: timm's DistillationTeacher is a registered submodule of the task (in task.parameters() and
    task.state_dict(); requires_grad stays True until prepare_distributed), eval() at construction and on
    task.train(); run under no_grad on input.detach(), after the student. featdistill: teacher unregistered,
    requires_grad_(False), eval() forced on every forward, run first under no_grad, captures detached.
    torchdistill: frozen (requires_grad=False -> no_grad) but never put in eval() by the library: done here.
 8. Reductions: MSE mean over B*C elements and CE mean over B in all three. timm's task needs
    forward_features/forward_head (it bypasses model.forward); featdistill only needs named modules.
Timed torchdistill steps use box.forward_process + box.optimizer (post_forward_process minus its bookkeeping).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import time
from pathlib import Path

import timm
import torch
from timm.task import FeatureDistillationTask, LogitDistillationTask
from torch import nn

from featdistill import Distiller, LogitKD, Pair

try:
    from torchdistill.core.distillation import DistillationBox
except ImportError:  # optional peer
    DistillationBox = None

OUT = Path(__file__).parent / "out"
W, T, ALPHA, LR = 5.0, 4.0, 0.5, 1e-4
VIT = dict(img_size=32, patch_size=8, depth=4)
MODELS = {  # teacher, student, kwargs, the module whose output is forward_head(forward_features(x), pre_logits=True)
    "cnn": ("resnet26", "resnet18", {}, "global_pool"),
    "vit": ("vit_small_patch16_224", "vit_tiny_patch16_224", VIT, "head_drop"),
}


def build_timm(mode, teacher, student):
    ce = nn.CrossEntropyLoss()
    if mode == "feat":
        task = FeatureDistillationTask(student, teacher, criterion=ce, distill_loss_weight=W, task_loss_weight=1.0,
                                       verbose=False)
    else:
        task = LogitDistillationTask(student, teacher, criterion=ce, task_loss_weight=ALPHA, temperature=T,
                                     verbose=False)
    task.train()

    def terms(x, y):
        out = task(x, y)
        return {"task": task.task_loss_weight * out["task_loss"], "distill": task.distill_loss_weight * out["kd_loss"],
                "loss": out["loss"]}

    proj = getattr(task.trainable_module, "projection", None)
    t = task.teacher  # timm re-normalises the teacher's input when the pretrained_cfg mean/std differ
    renorm = not (torch.equal(task.student_mean, t.mean_kd) and torch.equal(task.student_std, t.std_kd))
    return terms, torch.optim.SGD(task.trainable_module.parameters(), lr=LR), proj, {"renorm": renorm}


def build_featdistill(mode, teacher, student, layer, x, proj):
    pairs = []
    if mode == "feat":
        pairs = [Pair(layer, layer, adapter="linear" if proj is not None else "identity", loss="mse", weight=W,
                      name="pooled")]
    d = Distiller(teacher, student, pairs, kd=None if mode == "feat" else LogitKD(T, ALPHA), sample_input=x[:2])
    if proj is not None:
        d.adapters[0].proj.load_state_dict(proj.state_dict())
    d.train()

    def terms(x, y):
        out = d(x, y)
        return {"task": out["task"], "distill": out["feat/pooled" if mode == "feat" else "kd"], "loss": out["loss"]}

    return terms, torch.optim.SGD(d.parameters(), lr=LR), d.adapters[0].proj if pairs and proj is not None else None


def build_torchdistill(mode, teacher, student, layer, x, proj):
    teacher.eval()  # torchdistill never switches the teacher to eval itself
    io = lambda teacher_side, path: {"is_from_teacher": teacher_side, "module_path": path, "io": "output"}  # noqa: E731
    ce = {"criterion": {"key": "CrossEntropyLoss", "kwargs": {"reduction": "mean"}},
          "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {"input": io(False, "."),
                                                                       "target": {"uses_label": True}}}}
    s_cfg = {"forward_proc": "forward_batch_only"}
    t_cfg = {"requires_grad": False, **s_cfg}
    if mode == "feat":
        ce["weight"] = 1.0
        t_cfg["forward_hook"] = {"output": [layer]}
        s_cfg |= {"forward_hook": {"output": [f"model.{layer}", "linear"]}, "auxiliary_model_wrapper": {
            "key": "Linear4CCKD", "kwargs": {"input_module": {"path": f"model.{layer}", "io": "output"},
                            "linear_kwargs": {"in_features": proj.in_features, "out_features": proj.out_features}}}}
        distill = {"criterion": {"key": "MSELoss", "kwargs": {"reduction": "mean"}}, "weight": W,
                   "criterion_wrapper": {"key": "SimpleLossWrapper",
                                         "kwargs": {"input": io(False, "linear"), "target": io(True, layer)}}}
    else:
        ce["weight"] = ALPHA
        distill = {"criterion": {"key": "KDLoss", "kwargs": {
            "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
            "teacher_module_io": "output", "temperature": T, "alpha": 0}}, "weight": (1 - ALPHA) * T**2}
    cfg = {"num_epochs": 1, "teacher": t_cfg, "student": s_cfg, "optimizer": {"key": "SGD", "kwargs": {"lr": LR}},
           "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"task": ce, "distill": distill}}}}
    box = DistillationBox(teacher, student, {}, cfg, torch.device("cpu"), None, False, 1)
    if mode == "feat":
        box.student_model.linear.load_state_dict(proj.state_dict())
    box.pre_epoch_process(epoch=0)
    seen, weight = {}, {name: w for name, (_, w) in box.criterion.term_dict.items()}
    for name, (crit, w) in list(box.criterion.term_dict.items()):  # record each term as WeightedSumLoss sees it
        def tap(*args, _crit=crit, _name=name):
            seen[_name] = _crit(*args)
            return seen[_name]
        box.criterion.term_dict[name] = (tap, w)

    def terms(x, y):
        loss = box.forward_process(x, y, supp_dict={})
        return {"task": weight["task"] * seen["task"], "distill": weight["distill"] * seen["distill"], "loss": loss}

    return terms, box.optimizer, box.student_model.linear if mode == "feat" else None


def step_fn(terms, opt, x, y):
    def step():
        loss = terms(x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def check(terms, opt, student, proj, x, y):
    """Loss terms on the batch and the gradients they give (no optimizer step)."""
    opt.zero_grad(set_to_none=True)
    out = terms(x, y)
    out["loss"].backward()
    grads = {f"s.{n}": p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    if proj is not None:
        grads.update({f"p.{n}": p.grad.clone() for n, p in proj.named_parameters()})
    opt.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in out.items()}, grads


def measure(modes, rounds, warmup, seed=0):
    times = {name: [] for name in modes}
    order, rng = list(modes), random.Random(seed)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            modes[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def run_pair(which, batch, rounds, warmup):
    t_name, s_name, kw, layer = MODELS[which]
    torch.manual_seed(0)
    teacher = timm.create_model(t_name, pretrained=False, num_classes=10, **kw)
    student = timm.create_model(s_name, pretrained=False, num_classes=10, **kw)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    impls = ["featdistill", "timm"] + ["torchdistill"] * (DistillationBox is not None)
    steps, result = {}, {}
    for mode in ("feat", "logit"):
        built = {}
        t, s = copy.deepcopy(teacher), copy.deepcopy(student)
        terms, opt, proj, extra = build_timm(mode, t, s)
        built["timm"] = terms, opt, s, proj
        for impl in (i for i in impls if i != "timm"):
            t, s = copy.deepcopy(teacher), copy.deepcopy(student)
            fn = build_featdistill if impl == "featdistill" else build_torchdistill
            terms, opt, p = fn(mode, t, s, layer, x, proj)
            built[impl] = terms, opt, s, p
        checks = {impl: check(*built[impl], x, y) for impl in impls}
        ref_terms, ref_grads = checks["timm"]
        row = {"layer": layer, **extra, "terms": {i: c[0] for i, c in checks.items()}, "abs_diff": {}, "grad_diff": {}}
        for impl in impls:
            terms_i, grads_i = checks[impl]
            row["abs_diff"][impl] = {k: abs(v - ref_terms[k]) for k, v in terms_i.items()}
            row["grad_diff"][impl] = max(float((g - ref_grads[k]).abs().max()) for k, g in grads_i.items())
        result[mode] = row
        steps.update({f"{mode}/{impl}": step_fn(built[impl][0], built[impl][1], x, y) for impl in impls})
    medians = measure(steps, rounds, warmup)
    for mode, row in result.items():
        row["ms"] = {impl: medians[f"{mode}/{impl}"] for impl in impls}
        row["ratio_vs_timm"] = {impl: ms / row["ms"]["timm"] for impl, ms in row["ms"].items()}
    return result


def table(results, batch, rounds) -> str:
    peers = ["featdistill", "timm"] + ["torchdistill"] * (DistillationBox is not None)
    others, ab = [p for p in peers if p != "timm"], {"featdistill": "fd", "timm": "timm", "torchdistill": "td"}
    head = ["pair", "mode", *(f"{p} ms" for p in peers), *(f"{ab[p]}/timm" for p in others),
            *(f"{k} ({' / '.join(ab[p] for p in peers)})" for k in ("task", "distill", "loss")),
            *(f"{ab[p]} abs diff terms / grads" for p in others)]
    lines = [f"{' vs '.join(peers)}: CPU, batch {batch}x3x32x32, full SGD step, median of {rounds} interleaved rounds; "
             "terms weighted, on one shared batch; abs diff = max vs timm", "", "| " + " | ".join(head) + " |",
             "|---|---|" + "---:|" * (len(peers) + len(others)) + "---|" * (3 + len(others))]
    for which, modes in results.items():
        for mode, r in modes.items():
            cells = [which, f"{mode} ({r['layer']})" if mode == "feat" else mode,
                     *(f"{r['ms'][p]:.1f}" for p in peers), *(f"{r['ratio_vs_timm'][p]:.3f}x" for p in others),
                     *(" / ".join(f"{r['terms'][p][k]:.5f}" for p in peers) for k in ("task", "distill", "loss")),
                     *(f"{max(r['abs_diff'][p].values()):.1e} / {r['grad_diff'][p]:.1e}" for p in others)]
            lines.append("| " + " | ".join(cells) + " |")
    if DistillationBox is None:
        lines += ["", "torchdistill is not installed: skipped (pip install torchdistill in a separate venv)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pairs", nargs="+", default=["cnn", "vit"], choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if DistillationBox is None:
        print("torchdistill is not installed: comparing featdistill with timm only.")
    results = {which: run_pair(which, args.batch, args.rounds, args.warmup) for which in args.pairs}
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
            "torchdistill": None if DistillationBox is None else __import__("torchdistill").__version__,
            "batch": args.batch, "rounds": args.rounds, "feat_weight": W, "temperature": T, "alpha": ALPHA, "lr": LR}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_peers.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    text = table(results, args.batch, args.rounds)
    (args.out / "vs_peers.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
