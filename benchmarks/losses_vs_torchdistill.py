"""featdistill's losses vs torchdistill's, on the same fixed tensors.

    pip install torchdistill          # benchmark-only (not a featdistill dependency); it keeps the installed torch
    python benchmarks/losses_vs_torchdistill.py [--seed 0] [--out benchmarks/out]

Seeded random tensors (logits [B, K] and labels, feature maps [B, C, H, W] with the student's width equal to the
teacher's where a loss needs it, pooled embeddings [B, D], dataset indices and CRD negatives) are saved to
``out/losses_vs_torchdistill_tensors.pt`` (plain tensors; read back with ``weights_only=True`` and used from the
file). For every loss both projects ship, featdistill's value (through its registries, as a recipe reaches it)
and torchdistill's (its loss classes called with hand-built ``io_dict`` s) are computed on those tensors:

- ``matched`` rows use the same hyperparameters on both sides (and, where torchdistill returns a differently
  scaled quantity, the stated conversion); they must agree to ~1e-6 relative, or the script exits 1;
- ``as called`` rows show what each project returns at its own defaults or its documented form, where that
  differs; the ``differences`` list says what each side does, what the paper says and why featdistill does what
  it does.

Losses added to featdistill later (NST, VID, CRD, ReviewKD) are compared when their name is in ``LOSSES``.
Writes ``out/losses_vs_torchdistill.json`` and ``.md`` (the table and the differences).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from featdistill.losses import LOGIT_LOSSES, LOSSES, build_loss, kd_loss

OUT = Path(__file__).parent / "out"
TENSORS = "losses_vs_torchdistill_tensors.pt"
AGREE = 1e-5  # matched rows: the largest relative difference accepted (float32 rounding is ~1e-7)
T = 4.0  # the KD temperature compared (featdistill's LogitKD default)

# What differs between the two projects (or both from the paper), by id; rows point at these.
DIFFERENCES = {
    "kd-t2": dict(
        loss="KD (soft)",
        torchdistill="KDLoss multiplies the KL by T^2 only inside alpha*CE + beta*T^2*KL: with alpha None or 0, or "
                     "no targets, it returns the bare KL at temperature T.",
        featdistill="the soft term is always KL * T^2 (kd_loss with labels=None, LogitKD, the 'soft' logit loss).",
        paper="Hinton et al. 2015: the soft targets' gradients scale as 1/T^2, so the soft term is multiplied by "
              "T^2 to keep its contribution unchanged when T changes.",
        why="the T^2 belongs to the soft term whatever it is summed with (CE, feature terms or nothing), so a KD "
            "term keeps its scale across temperatures; this is the contract kd_loss documents (DESIGN section 2)."),
    "kd-target": dict(
        loss="KD (soft), logit standardisation",
        torchdistill="nn.KLDivLoss('batchmean') on log_softmax(s/T) against probabilities softmax(t/T).",
        featdistill="log_softmax on both sides with log_target=True (inputs cast to float32 first).",
        paper="the same KL divergence; the paper does not fix a numerical form.",
        why="the log-space target never forms 0 * log 0 for probabilities that underflow, and it is the form timm "
            "uses (vs_peers.py: identical to timm). The values agree to float32 rounding."),
    "kd-defaults": dict(
        loss="KD (soft)",
        torchdistill="KDLoss has no default temperature (required); its default alpha=None fails in the "
                     "constructor (1 - None) unless beta is given, so alpha=0 is how to get the KL alone.",
        featdistill="LogitKD(temperature=4.0, alpha=0.5).",
        paper="no single value: Hinton et al. report a range of temperatures; T in 2..4 is the usual choice for "
              "image classifiers.",
        why="a run must work without tuning; T=4 and an even CE/KD split are the common CIFAR/ImageNet settings."),
    "fitnet-reduction": dict(
        loss="FitNet hints (mse)",
        torchdistill="a plain torch loss in the config (nn.MSELoss, reduction 'mean' in its sample configs) on a "
                     "regressor's output: the same value as featdistill.",
        featdistill="mse: the mean over all B*C*H*W elements of the adapted student and the teacher.",
        paper="Romero et al. 2015: 1/2 ||u_h - r(v_g)||^2, half the summed squared error, trained as a separate "
              "first stage before KD.",
        why="both projects differ from the paper in the same way: the mean keeps the weight independent of the "
            "layer's size (the paper's scale is weight = C*H*W/2), and the hint is one term of a one-stage loss."),
    "at-mode": dict(
        loss="attention transfer",
        torchdistill="ATLoss(mode='code') (the default) is featdistill's formula; mode='paper' is "
                     "sum_b ||a_s - a_t||_2 / B with a(x) = normalize(sum_c x^2): the unsquared L2 norm.",
        featdistill="the authors' code: a(x) = normalize(mean_c x^p), loss (a(s) - a(t))^2 averaged over B*H*W; "
                    "p is an argument (default 2), torchdistill fixes p=2.",
        paper="Zagoruyko & Komodakis 2017, Eq. 2: beta/2 * sum_j || a_s/||a_s|| - a_t/||a_t|| ||_p with p=2, the "
              "norm itself, not its square; their code (with beta=1000) squares and averages instead.",
        why="the published results and the beta=1000 weight come from the code, and DESIGN section 4 fixes it as "
            "the contract; the squared form is smooth where the maps agree. Neither project applies the code's "
            "beta/2: it is the Pair's weight (torchdistill: the pair's weight). sum_c vs mean_c cancels in the "
            "normalisation."),
    "sp-l1": dict(
        loss="SP",
        torchdistill="SPKDLoss normalises the Gram matrix with normalize(G, 1): the 1 is the norm's order p, not "
                     "the dim, so each row is divided by its L1 norm (torchdistill 1.1.5): the value is smaller than "
                     "the paper's by a data- and batch-dependent factor (up to B; ~12x here).",
        featdistill="each row of G = f f^T is divided by its L2 norm (F.normalize(G, dim=1)).",
        paper="Tung & Mori 2019: G~[i,:] = G[i,:] / ||G[i,:]||_2, the row-wise L2 normalisation (RepDistiller's "
              "and mdistiller's code do the same).",
        why="it is the paper's and the reference code's definition; with torchdistill's normalisation made L2 "
            "(one argument) the two agree to float rounding (the 'patched' row)."),
    "sp-reduction": dict(
        loss="SP",
        torchdistill="SPKDLoss needs reduction: 'batchmean' divides ||G_s - G_t||_F^2 by B^2, anything else returns "
                     "the plain sum.",
        featdistill="always / B^2.",
        paper="Tung & Mori 2019: 1/b^2 * sum ||G_t - G_s||_F^2, as featdistill.",
        why="it is the paper's normalisation; the sum would tie the weight to the batch size."),
    "rkd-weights": dict(
        loss="RKD",
        torchdistill="RKDLoss has no default weights (dist_factor, angle_factor required); its sample config uses "
                     "1 and 2, the authors' metric-learning code's values.",
        featdistill="distance_weight=25, angle_weight=50 by default (RepDistiller's and mdistiller's CIFAR-100 "
                    "classification settings); any others through loss_kwargs.",
        paper="Park et al. 2019: lambda_D and lambda_A are per-task hyperparameters (1 and 2 in the authors' "
              "metric-learning code).",
        why="featdistill targets classifiers, where the ported CIFAR settings are the tested ones. At the same "
            "weights the values agree (both use smooth-L1 averaged over all B^2 / B^3 entries, the mean distance "
            "over the off-diagonal pairs, and a detached teacher)."),
    "pkt-nan": dict(
        loss="PKT",
        torchdistill="replaces NaN entries of the normalised features by 0 (as the code it was refactored "
                     "from).",
        featdistill="no replacement: a NaN feature makes the loss NaN.",
        paper="not specified (an implementation detail of the reference code).",
        why="a NaN feature is a bug upstream; featdistill's trainer stops on the first non-finite term and names "
            "it, instead of training on silently zeroed features. Finite inputs give the same value."),
    "cc-kernel": dict(
        loss="CC",
        torchdistill="CCKDLoss applies the Taylor-expanded Gaussian kernel to unnormalised outputs of learned "
                     "Linear4CCKD projections (on both models) and returns torch.dist(K_s, K_t) / B^2, the plain "
                     "(not squared) Frobenius norm. (Its documented YAML, kernel_params: {key: ...}, does not match "
                     "the constructor, which reads kernel_config['type'].)",
        featdistill="the same kernel (gamma 0.4, order 2) on L2-normalised features, no projection, and "
                    "||K_s - K_t||_F^2 / B^2.",
        paper="Peng et al. 2019: L_CC = 1/n^2 ||psi(F_t) - psi(F_s)||_F^2 (squared); the P-order expansion stands "
              "for exp(-gamma ||F_i - F_j||^2), which it equals only for unit-norm embeddings.",
        why="the squared norm is the paper's; normalising makes the expansion the RBF kernel it approximates and "
            "keeps it bounded (on raw features (F_i . F_j)^p grows with the feature scale). Fed normalised inputs, "
            "torchdistill's value converts exactly: featdistill = (td * B^2)^2 / B^2."),
    "dist-t": dict(
        loss="DIST",
        torchdistill="DISTLoss(beta=1, gamma=1, tau=1) by default; tau^2 scales both terms.",
        featdistill="the same formula and tau^2, but tau is LogitKD.temperature, default 4: LogitKD(loss='dist') "
                    "trains at tau=4 unless --set kd.temperature=1. Pearson's denominator is clamped at 1e-8 "
                    "(torchdistill: torch's cosine_similarity eps).",
        paper="Huang et al. 2022: tau = 1 by default, beta = gamma = 1.",
        why="one temperature for every logit loss keeps the combiner and the printed formula to one T; the "
            "docstring names the setting that gives the paper's tau. The eps choices differ only for constant "
            "rows or columns."),
    "ls-t2": dict(
        loss="logit standardisation",
        torchdistill="LogitStdKDLoss, like KDLoss, returns the bare KL (no T^2) with alpha=0 or without targets "
                     "(its default alpha=None fails in the constructor unless beta is given); temperature "
                     "required; with alpha it is alpha*CE + beta*T^2*KL (the authors' 0.1 and 9).",
        featdistill="KL * T^2 always, T = kd.temperature (the class's own default is the authors' base T of 2); "
                    "CE weight alpha and KD weight 1 - alpha, so alpha = 1/91 keeps the authors' 0.1 : 9 ratio "
                    "(the total is theirs / 9.1).",
        paper="Sun et al. 2024: KD on z-scored logits with the usual T^2 (their kd_loss multiplies by T^2), std "
              "with Bessel's correction, eps 1e-7 (both projects).",
        why="the T^2 is part of the authors' loss; featdistill's alpha/(1 - alpha) split is shared by every logit "
            "loss."),
    "vid-regressor": dict(
        loss="VID",
        torchdistill="VIDLoss takes (mean, variance) from a Regressor4VID (three 1x1 convs with ReLUs, softplus "
                     "variance per channel); eps and init_pred_var are required arguments.",
        featdistill="vid owns the per-channel softplus variance (init 5.0, eps 1e-5 by default); the mean comes "
                    "from the Pair's adapter ('auto': 1x1 conv + BatchNorm, or any adapter factory).",
        paper="Ahn et al. 2019: Gaussian with a heteroscedastic mean network and per-channel variance "
              "softplus(alpha) + eps; the reference code's init variance 5.0 and eps 1e-5.",
        why="the mean network is an adapter like any other pair's, so it is sized by the dry run and swappable; "
            "the NLL, its reduction (mean over all elements, no log 2 pi) and the initial variance are the same: "
            "the values agree when both get the same mean."),
    "crd-draw": dict(
        loss="CRD",
        torchdistill="CRDLoss.draw reads self.prob, which it never sets (torchdistill 1.1.5): without contrast_idx "
                     "in the batch it raises AttributeError, so the negatives must come from the dataset wrapper; "
                     "the memory and Z are updated on every call (no train/eval distinction); the embedding heads "
                     "live in Linear4CRD wrappers of both models.",
        featdistill="crd holds both heads and both banks; it draws K uniform negatives that exclude the positive (or "
                    "takes negatives=); the banks and Z change only in training mode.",
        paper="Tian et al. 2020: NCE with P_n = 1/N, K = 16384, T = 0.07, momentum 0.5, Z estimated once (the "
              "reference code); the reference draws uniform negatives (or other-class ones on CIFAR-100).",
        why="evaluation must not move the memory; with the same embeddings, banks, negatives and Z the two agree "
            "over consecutive steps, bank updates included (rows below)."),
    "review-levels": dict(
        loss="ReviewKD",
        torchdistill="the fusion lives in a Student4KnowledgeReview wrapper configured per model (channels, "
                     "mid_channels and the spatial sizes listed by hand, deep to shallow, default [1, 7, 14, 28, "
                     "56] for ResNets at 224 px); each level's HierarchicalContextLoss is a separate config term; "
                     "student and teacher levels must have the same spatial size.",
        featdistill="review_kd is one multi-layer Pair: the fusion modules are the loss's parameters, sized from "
                    "the dry run's shapes (mid_channel min(512, deepest student width)); a student level whose size "
                    "differs from the teacher's is resized (nearest) before the 3x3 conv.",
        paper="Chen et al. 2021: ABF fusion from deep to shallow and HCL with pyramid levels 4, 2, 1 weighted "
              "1, 1/2, 1/4, 1/8 and normalised (the reference code; both projects), MSE means.",
        why="sizes read from the captured tensors cannot go stale when a model or input size changes. With the "
            "same fusion weights the values agree."),
}

_T_CACHE: dict = {}


# -- tensors ----------------------------------------------------------------------------------------------------
def make_tensors(seed: int = 0, batch: int = 16, classes: int = 100, num_samples: int = 256,
                 negatives: int = 32) -> dict[str, torch.Tensor]:
    """Fixed float32 inputs: correlated student/teacher logits and features, so the losses sit in their usual
    range. Widths: student map 16 channels, teacher 32 (AT, SP, NST allow different widths), an adapted student
    map with the teacher's 32 (mse, VID, one HCL level), embeddings 64 vs 128; ReviewKD levels 8/16/32 vs 16/32/64
    channels at 8, 4, 2 px."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    logits_t = 3 * randn(batch, classes)
    feat_t = randn(batch, 32, 8, 8).relu()
    emb_t = randn(batch, 128)
    index = torch.randperm(num_samples, generator=g)[:batch]
    draws = torch.randint(0, num_samples - 1, (2, batch, negatives), generator=g)
    return {
        "logits_s": 0.6 * logits_t + 2 * randn(batch, classes),
        "logits_t": logits_t,
        "labels": torch.randint(0, classes, (batch,), generator=g),
        "feat_s": (0.5 * feat_t[:, ::2] + randn(batch, 16, 8, 8)).relu(),  # [B, 16, 8, 8]
        "hint_s": feat_t + 0.5 * randn(batch, 32, 8, 8),  # the student map after its adapter: teacher's shape
        "feat_t": feat_t,
        "emb_s": 0.5 * emb_t[:, :64] + randn(batch, 64),
        "emb_t": emb_t,
        "index": index,  # CRD: dataset indices of the batch, in [0, num_samples)
        "crd_negatives": draws + (draws >= index[None, :, None]).long(),  # [2 steps, B, K], never the positive
        "num_samples": torch.tensor(num_samples),
        # ReviewKD: three levels shallow -> deep, student widths 8/16/32, teacher 16/32/64, equal spatial sizes
        **{f"review_s{i}": randn(batch, 8 * 2**i, 8 // 2**i, 8 // 2**i) for i in range(3)},
        **{f"review_t{i}": randn(batch, 16 * 2**i, 8 // 2**i, 8 // 2**i).relu() for i in range(3)},
    }


def save_and_reload(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Write the plain tensors, read them back with ``weights_only=True``; the comparison uses what was read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return torch.load(path, weights_only=True)


# -- rows and the table -----------------------------------------------------------------------------------------
def rel_diff(a: float, b: float | None) -> float | None:
    if b is None:
        return None
    return abs(a - b) / max(abs(b), 1e-30)


def row(loss: str, setting: str, fd: float, td: float | None, kind: str = "matched", notes=(), td_name: str = "",
        fd_name: str = "") -> dict:
    """One table row: ``kind`` is 'matched' (must agree), 'as called' (may differ: see notes) or 'featdistill
    only'."""
    return {"loss": loss, "setting": setting, "featdistill": float(fd),
            "torchdistill": None if td is None else float(td), "rel_diff": rel_diff(float(fd), td), "kind": kind,
            "notes": list(notes), "featdistill_name": fd_name, "torchdistill_name": td_name}


def shp(x: torch.Tensor) -> str:
    """``[B, 32, 8, 8]`` for a tensor's shape, batch dim named."""
    return "[" + ", ".join(["B", *map(str, x.shape[1:])]) + "]"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def format_table(rows: list[dict]) -> str:
    """The markdown table; the notes column names the differences (numbered as in :func:`format_differences`)."""
    ids = {key: i + 1 for i, key in enumerate(DIFFERENCES)}
    lines = ["| loss | setting | kind | featdistill | torchdistill | rel. diff | differences |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        diff = "-" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"
        notes = ", ".join(f"{ids[n]}" if n in ids else n for n in r["notes"]) or "-"
        lines.append(f"| {r['loss']} | {r['setting']} | {r['kind']} | {_num(r['featdistill'])} | "
                     f"{_num(r['torchdistill'])} | {diff} | {notes} |")
    return "\n".join(lines)


def format_differences(keys=None) -> str:
    lines = []
    for i, (key, d) in enumerate(DIFFERENCES.items()):
        if keys is not None and key not in keys:
            continue
        lines.append(f"{i + 1}. **{d['loss']}** (`{key}`). torchdistill: {d['torchdistill']} featdistill: "
                     f"{d['featdistill']} Paper: {d['paper']} Why featdistill does this: {d['why']}")
    return "\n".join(lines)


# -- torchdistill's side: its loss classes on hand-built io_dicts -----------------------------------------------
def io(value, path: str = ".", key: str = "output") -> dict:
    """torchdistill's ``io_dict``: ``{module_path: {'output' | 'input': value}}``."""
    return {path: {key: value}}


def td():
    """torchdistill's loss modules (imported on first use, so this file imports without it)."""
    if not _T_CACHE:
        from torchdistill.losses import mid_level
        from torchdistill.losses.registry import MIDDLE_LEVEL_LOSS_DICT
        from torchdistill.models.wrapper import Regressor4VID
        _T_CACHE.update(mid=mid_level, registry=MIDDLE_LEVEL_LOSS_DICT, Regressor4VID=Regressor4VID)
    return _T_CACHE


def logit_paths(**kwargs) -> dict:
    return dict(student_module_path=".", student_module_io="output", teacher_module_path=".",
                teacher_module_io="output", **kwargs)


def fd_logit(name: str, temperature: float, **kwargs):
    return LOGIT_LOSSES.get(name)(temperature, **kwargs)


def fd_feature(name: str, student: torch.Tensor, teacher: torch.Tensor, **kwargs):
    """A feature loss built as the Distiller builds it (name -> ``build_loss`` with the per-sample shapes)."""
    return build_loss(name, student.shape[1:], teacher.shape[1:], kwargs)


# -- comparisons, one per method --------------------------------------------------------------------------------
def compare_kd(x: dict) -> list[dict]:
    m = td()["mid"]
    s, t, y = x["logits_s"], x["logits_t"], x["labels"]
    bare = m.KDLoss(**logit_paths(temperature=T, alpha=0))(io(s), io(t), y).item()
    with_ce = m.KDLoss(**logit_paths(temperature=T, alpha=0.5))(io(s), io(t), y).item()
    soft = kd_loss(s, t, None, temperature=T).item()
    return [
        row("KD (soft)", f"T={T:g}; td KL x T^2", soft, bare * T**2, notes=["kd-target"], fd_name="soft",
            td_name="KDLoss"),
        row("KD (soft)", f"T={T:g}, alpha=0 (td) / labels=None (fd)", soft, bare, "as called",
            ["kd-t2", "kd-defaults"], fd_name="soft", td_name="KDLoss"),
        row("KD + CE", f"T={T:g}, alpha=0.5", kd_loss(s, t, y, temperature=T, alpha=0.5).item(), with_ce,
            notes=["kd-target"], fd_name="soft", td_name="KDLoss"),
    ]


def compare_mse(x: dict) -> list[dict]:
    m = td()["mid"]
    wrapper = m.SimpleLossWrapper(torch.nn.MSELoss(reduction="mean"),
                                  input={"is_from_teacher": False, "module_path": "regressor", "io": "output"},
                                  target={"is_from_teacher": True, "module_path": "layer", "io": "output"})
    value = wrapper(io(x["hint_s"], "regressor"), io(x["feat_t"], "layer"), None).item()
    fd = fd_feature("mse", x["hint_s"], x["feat_t"])(x["hint_s"], x["feat_t"]).item()
    return [row("FitNet hints", f"adapted {shp(x['hint_s'])} vs {shp(x['feat_t'])}", fd, value,
                notes=["fitnet-reduction"], fd_name="mse", td_name="MSELoss")]


def compare_at(x: dict) -> list[dict]:
    m = td()["mid"]
    pairs = {"p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}, "weight": 1}}
    s, t = x["feat_s"], x["feat_t"]
    fd = fd_feature("at", s, t)(s, t).item()
    code = m.ATLoss(pairs, mode="code")(io(s, "s"), io(t, "t")).item()
    paper = m.ATLoss(pairs, mode="paper")(io(s, "s"), io(t, "t")).item()
    return [row("attention transfer", f"p=2, {shp(s)} vs {shp(t)}; td mode='code'", fd, code, fd_name="at",
                td_name="ATLoss"),
            row("attention transfer", "td mode='paper'", fd, paper, "as called", ["at-mode"], fd_name="at",
                td_name="ATLoss")]


def compare_sp(x: dict) -> list[dict]:
    m = td()["mid"]

    class SPKDLossL2(m.SPKDLoss):
        """torchdistill's SPKDLoss with its row normalisation made L2 (its only difference)."""

        def matmul_and_normalize(self, z):
            z = torch.flatten(z, 1)
            return F.normalize(z @ z.t(), p=2, dim=1)

    s, t = x["feat_s"], x["feat_t"]
    fd = fd_feature("sp", s, t)(s, t).item()
    shipped = m.SPKDLoss("s", "t", reduction="batchmean")(io(s, "s"), io(t, "t")).item()
    l2 = SPKDLossL2("s", "t", reduction="batchmean")(io(s, "s"), io(t, "t")).item()
    total = SPKDLossL2("s", "t", reduction="sum")(io(s, "s"), io(t, "t")).item()
    return [row("SP", f"{shp(s)} vs {shp(t)}; 'batchmean', td rows L2 (patched)", fd, l2, notes=["sp-l1"],
                fd_name="sp", td_name="SPKDLoss"),
            row("SP", "td 'batchmean' as shipped (L1-normalised rows)", fd, shipped, "as called", ["sp-l1"],
                fd_name="sp", td_name="SPKDLoss"),
            row("SP", "td reduction='sum' (L2-patched)", fd, total, "as called", ["sp-reduction"], fd_name="sp",
                td_name="SPKDLoss")]


def compare_rkd(x: dict) -> list[dict]:
    m = td()["mid"]
    s, t = x["emb_s"], x["emb_t"]
    rows = []
    for wd, wa in ((25.0, 50.0), (1.0, 2.0)):
        ref = m.RKDLoss("s", "t", dist_factor=wd, angle_factor=wa, reduction="mean")(io(s, "s"), io(t, "t")).item()
        kwargs = {} if (wd, wa) == (25.0, 50.0) else dict(distance_weight=wd, angle_weight=wa)
        fd = fd_feature("rkd", s, t, **kwargs)(s, t).item()
        note = "featdistill's default" if not kwargs else "torchdistill's sample config"
        rows.append(row("RKD", f"weights {wd:g}/{wa:g} ({note}), {shp(s)} vs {shp(t)}", fd, ref, notes=["rkd-weights"],
                        fd_name="rkd", td_name="RKDLoss"))
    return rows


def compare_pkt(x: dict) -> list[dict]:
    m = td()["mid"]
    s, t = x["emb_s"], x["emb_t"]
    fd = fd_feature("pkt", s, t)(s, t).item()
    ref = m.PKTLoss("s", "output", "t", "output", eps=1e-7)(io(s, "s"), io(t, "t")).item()
    return [row("PKT", f"eps=1e-7, {shp(s)} vs {shp(t)}", fd, ref, notes=["pkt-nan"], fd_name="pkt", td_name="PKTLoss")]


def compare_cc(x: dict) -> list[dict]:
    m = td()["mid"]
    s, t = x["emb_s"], x["emb_t"]
    b = len(s)
    cc = m.CCKDLoss("s", "t", kernel_config={"type": "gaussian", "gamma": 0.4, "max_p": 2}, reduction="batchmean")
    fd = fd_feature("cc", s, t)(s, t).item()
    unit = cc(io(F.normalize(s, dim=1), "s"), io(F.normalize(t, dim=1), "t")).item()
    raw = cc(io(s, "s"), io(t, "t")).item()
    return [row("CC", "gamma=0.4, P=2; td on L2-normalised emb, (td*B^2)^2/B^2", fd, (unit * b * b) ** 2 / (b * b),
                notes=["cc-kernel"], fd_name="cc", td_name="CCKDLoss"),
            row("CC", "td on raw emb, as it returns", fd, raw, "as called", ["cc-kernel"], fd_name="cc",
                td_name="CCKDLoss")]


def compare_dist(x: dict) -> list[dict]:
    m = td()["mid"]
    s, t = x["logits_s"], x["logits_t"]
    rows = []
    for tau in (1.0, T):
        ref = m.DISTLoss(**logit_paths(beta=1.0, gamma=1.0, tau=tau))(io(s), io(t)).item()
        rows.append(row("DIST", f"tau={tau:g}, beta=gamma=1", fd_logit("dist", tau)(s, t).item(), ref,
                        notes=["dist-t"], fd_name="dist", td_name="DISTLoss"))
    default = m.DISTLoss(**logit_paths())(io(s), io(t)).item()
    rows.append(row("DIST", f"defaults: LogitKD T={T:g} (fd) vs tau=1 (td)", fd_logit("dist", T)(s, t).item(), default,
                    "as called", ["dist-t"], fd_name="dist", td_name="DISTLoss"))
    return rows


def compare_ls(x: dict) -> list[dict]:
    m = td()["mid"]
    s, t, y = x["logits_s"], x["logits_t"], x["labels"]
    tau = 2.0
    bare = m.LogitStdKDLoss(**logit_paths(temperature=tau, alpha=0))(io(s), io(t), y).item()
    fd = fd_logit("ls", tau)(s, t).item()
    authors = m.LogitStdKDLoss(**logit_paths(temperature=tau, alpha=0.1, beta=9.0))(io(s), io(t), y).item()
    ours = kd_loss(s, t, y, temperature=tau, alpha=1 / 91, mode="ls").item() * 9.1
    return [row("logit standardisation", f"T={tau:g}; td KL x T^2", fd, bare * tau**2, notes=["kd-target"],
                fd_name="ls", td_name="LogitStdKDLoss"),
            row("logit standardisation", f"T={tau:g}, td alpha=0 (bare KL)", fd, bare, "as called", ["ls-t2"],
                fd_name="ls", td_name="LogitStdKDLoss"),
            row("logit standardisation + CE", "authors' 0.1 CE + 9 KD: fd alpha=1/91, x9.1", ours, authors,
                notes=["ls-t2"], fd_name="ls", td_name="LogitStdKDLoss")]


def compare_vid(x: dict) -> list[dict]:
    m, reg = td()["mid"], td()["Regressor4VID"]
    mu, t = x["hint_s"], x["feat_t"]
    fd = fd_feature("vid", mu, t)(mu, t).item()
    regressor = reg(in_channels=t.shape[1], middle_channels=t.shape[1], out_channels=t.shape[1], eps=1e-5,
                    init_pred_var=5.0)  # only its variance is used: the mean is the shared adapted map
    variance = (F.softplus(regressor.soft_plus_param) + regressor.eps).view(1, -1, 1, 1)
    pairs = {"p": {"student": {"io": "output", "path": "regressor"}, "teacher": {"io": "output", "path": "layer"},
                   "weight": 1}}
    ref = m.VIDLoss(pairs)(io((mu, variance), "regressor"), io(t, "layer")).item()
    return [row("VID", f"init variance 5, eps 1e-5; same mean {shp(mu)}", fd, ref, notes=["vid-regressor"],
                fd_name="vid", td_name="VIDLoss")]


def compare_crd(x: dict, seed: int) -> list[dict]:
    """Two training steps (the first estimates Z) with the same embeddings, banks and negatives on both sides; the
    banks after each step are compared too."""
    m = td()["mid"]
    s_feat, t_feat, index, negatives = x["emb_s"], x["emb_t"], x["index"], x["crd_negatives"]
    n, k = int(x["num_samples"]), negatives.shape[-1]
    torch.manual_seed(seed)
    ours = fd_feature("crd", s_feat, t_feat, num_samples=n, nce_k=k).train()
    theirs = m.CRDLoss("normalizer", "empty", "normalizer", input_size=ours.feat_dim, output_size=n,
                       num_negative_samples=k, num_samples=n, temperature=ours.nce_t, momentum=ours.nce_mom)
    theirs.memory_v1.copy_(ours.bank_s)  # v1: the student's bank (updated with the student's embedding)
    theirs.memory_v2.copy_(ours.bank_t)
    rows = []
    for step in range(2):
        with torch.no_grad():
            s, t = ours.embed(s_feat, t_feat)
        rows_idx = torch.cat([index[:, None], negatives[step]], dim=1)
        supp = {"pos_idx": index, "contrast_idx": rows_idx}
        ref = theirs(io(s, "normalizer") | io(supp, "empty", "input"), io(t, "normalizer")).item()
        fd = ours(s_feat, t_feat, index=index, negatives=negatives[step]).item()
        bank = max(float((ours.bank_s - theirs.memory_v1).abs().max()),
                   float((ours.bank_t - theirs.memory_v2).abs().max()))
        rows.append(row("CRD", f"step {step + 1}: N={n}, K={k}, T={ours.nce_t:g}, m={ours.nce_mom:g}; banks max "
                               f"abs diff {bank:.1e}", fd, ref, notes=["crd-draw"], fd_name="crd",
                        td_name="CRDLoss"))
    return rows


def compare_review(x: dict, seed: int) -> list[dict]:
    """ReviewKD: featdistill's ``review_kd`` (fusion + HCL) against torchdistill's ``Student4KnowledgeReview``
    fusion chain (its AttentionBasedFusion modules, featdistill's weights copied in) followed by one
    ``HierarchicalContextLoss`` per level, summed as its configs do; and one level's HCL alone."""
    m = td()["mid"]
    from torch import nn
    from torchdistill.models.wrapper import Student4KnowledgeReview

    from featdistill.losses.multilevel import hcl_level

    students = [x[f"review_s{i}"] for i in range(3)]  # shallow -> deep
    teachers = [x[f"review_t{i}"] for i in range(3)]
    one = m.HierarchicalContextLoss("s", "output", "t", "output", output_sizes=[4, 2, 1])
    rows = [row("ReviewKD (HCL, one level)", f"pyramid 4, 2, 1 on {shp(x['feat_t'])}",
                hcl_level(x["hint_s"], x["feat_t"]).item(),
                one(io((x["hint_s"], None), "s"), io(x["feat_t"], "t")).item(),
                fd_name="review_kd", td_name="HierarchicalContextLoss")]
    torch.manual_seed(seed)
    ours = build_loss("review_kd", [v.shape[1:] for v in students], [v.shape[1:] for v in teachers]).train()
    abfs = [{"path": f"level{i}", "io": "output", "kwargs": {"in_channels": s.shape[1], "mid_channels":
             ours.mid_channel, "out_channels": t.shape[1]}} for i, (s, t) in enumerate(zip(students, teachers))]
    sizes = [s.shape[-1] for s in reversed(students)]  # deep -> shallow, as its configs list them
    theirs = Student4KnowledgeReview(nn.Identity(), abfs, device="cpu", device_ids=None, distributed=False,
                                     sizes=sizes).train()
    rename = {"reduce.": "conv1.", "output.": "conv2.", "attention.": "attention_conv."}
    for i, abf in enumerate(ours.abfs):  # theirs are stored deep -> shallow
        state = {next(b + k[len(a):] for a, b in rename.items() if k.startswith(a)): v
                 for k, v in abf.state_dict().items()}
        theirs.abf_modules[len(students) - 1 - i].load_state_dict(state)
    outputs = {}
    for i, abf in enumerate(theirs.abf_modules):  # torchdistill reads them from forward hooks on abf_modules.i
        abf.register_forward_hook(lambda mod, args, out, i=i: outputs.__setitem__(f"abf_modules.{i}", out))
    theirs.secondary_forward({f"level{i}": {"output": s} for i, s in enumerate(students)})
    hcl = [m.HierarchicalContextLoss(f"abf_modules.{len(students) - 1 - i}", "output", f"level{i}", "output")
           for i in range(len(students))]
    teacher_io = {f"level{i}": {"output": t} for i, t in enumerate(teachers)}
    ref = sum(h({k: {"output": v} for k, v in outputs.items()}, teacher_io).item() for h in hcl)
    fd = ours(students, teachers).item()
    shapes = " + ".join(f"{s.shape[1]}/{t.shape[1]}@{s.shape[-1]}" for s, t in zip(students, teachers))
    rows.append(row("ReviewKD", f"3 levels (C_s/C_t@size) {shapes}, mid {ours.mid_channel}; same ABF weights", fd,
                    ref, notes=["review-levels"], fd_name="review_kd", td_name="HierarchicalContextLoss"))
    return rows


def compare_all(x: dict, seed: int) -> list[dict]:
    rows = compare_kd(x) + compare_mse(x) + compare_at(x) + compare_sp(x) + compare_rkd(x) + compare_pkt(x)
    rows += compare_cc(x) + compare_dist(x) + compare_ls(x)
    if "vid" in LOSSES:
        rows += compare_vid(x)
    if "crd" in LOSSES:
        rows += compare_crd(x, seed)
    if "review_kd" in LOSSES:
        rows += compare_review(x, seed)
    s, t, y = x["logits_s"], x["logits_t"], x["labels"]
    if "dkd" in LOGIT_LOSSES and "DKDLoss" not in td()["registry"]:  # torchdistill 1.1.5 has no DKD
        rows.append(row("DKD", f"T={T:g}, alpha=1, beta=8", fd_logit("dkd", T)(s, t, y).item(), None,
                        "featdistill only", fd_name="dkd"))
    if "nst" in LOSSES and "NSTLoss" not in td()["registry"]:  # nor NST
        fs, ft = x["feat_s"], x["feat_t"]
        rows.append(row("NST", f"poly kernel d=2, c=0, {shp(fs)} vs {shp(ft)}",
                        fd_feature("nst", fs, ft)(fs, ft).item(), None, "featdistill only", fd_name="nst"))
    return rows


def only_in_one(rows: list[dict]) -> tuple[list[str], list[str]]:
    """featdistill losses (first names) and torchdistill mid-level losses that no row compares."""
    used_fd = {r["featdistill_name"] for r in rows}
    used_td = {r["torchdistill_name"] for r in rows}
    mine = [names[0] for reg in (LOGIT_LOSSES, LOSSES) for names, _ in reg.entries() if not used_fd & set(names)]
    theirs = sorted(k for k in td()["registry"] if k not in used_td)
    return mine, theirs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        import torchdistill
    except ImportError:
        print("torchdistill is not installed: pip install torchdistill (a benchmark-only dependency)")
        return 2
    torch.set_num_threads(1)  # one summation order, so a rerun prints the same digits
    x = save_and_reload(make_tensors(args.seed), args.out / TENSORS)
    rows = compare_all(x, args.seed)
    mine, theirs = only_in_one(rows)
    used = [k for k in DIFFERENCES if any(k in r["notes"] for r in rows)]
    bad = [r for r in rows if r["kind"] == "matched" and (r["rel_diff"] is None or r["rel_diff"] > AGREE)]
    shapes = {k: list(v.shape) for k, v in x.items()}
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torchdistill": torchdistill.__version__, "seed": args.seed,
            "tensors": str(args.out / TENSORS), "shapes": shapes, "agree_below": AGREE}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "losses_vs_torchdistill.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "differences": {k: DIFFERENCES[k] for k in used},
         "only_featdistill": mine, "only_torchdistill": theirs}, indent=2))
    header = (f"featdistill vs torchdistill {torchdistill.__version__} (torch {torch.__version__}), seed {args.seed}, "
              f"float32 on the CPU; 'matched' rows must agree below {AGREE:g} relative.")
    text = "\n".join([header, "", format_table(rows), "",
                      f"Only in featdistill: {', '.join(mine) or '-'}. Only in torchdistill (mid-level losses): "
                      f"{', '.join(theirs) or '-'}.", "", "Semantic differences:", "", format_differences(used)])
    (args.out / "losses_vs_torchdistill.md").write_text(text + "\n")
    print(text)
    for r in bad:
        print(f"MISMATCH: {r['loss']} ({r['setting']}): featdistill {r['featdistill']:.8g}, torchdistill "
              f"{_num(r['torchdistill'])}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
