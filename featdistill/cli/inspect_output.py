"""What ``python -m featdistill.inspect`` reports: the layer-similarity findings in words, and its PNGs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..analysis import DarkKnowledge, pairing_score

PAIRING_WHY = ("The CKA pairing keeps the layers in order (a deeper student layer never learns from a shallower "
               "teacher layer) and, among such pairings, takes the one whose layers already represent these images "
               "most alike (highest total linear CKA), so each feature term starts from a target the student can "
               "reach, where the uniform pairing only matches relative depth.")


@dataclass
class LayerReport:
    """CKA ``[S, T]`` of candidate student layers (rows) and teacher layers (columns), pairings on it, and the CKA
    of what each recipe pair reads (``pair_cka``: label -> value; ``pair_after`` with ``--run``)."""

    student_layers: list[str]
    teacher_layers: list[str]
    cka: torch.Tensor
    best: list[tuple[int, int]]
    uniform: list[tuple[int, int]]
    marked: list[tuple[int, int, str]]  # current pairs that fall on the grid: (row, col, pair key)
    pair_cka: dict[str, float]
    num_samples: int
    cka_after: torch.Tensor | None = None
    pair_after: dict[str, float] = field(default_factory=dict)

    def _pairing(self, pairing: list[tuple[int, int]], cka: torch.Tensor) -> str:
        return ", ".join(f"{self.student_layers[i]}~{self.teacher_layers[j]} ({float(cka[i, j]):.2f})"
                         for i, j in pairing)

    def lines(self) -> list[str]:
        s, t, c = self.student_layers, self.teacher_layers, self.cka
        when = "the student at initialisation" if self.cka_after is None else "the student before training"
        out = [f"layer similarity: linear CKA on {self.num_samples} held-out images, {when} (rows) vs the teacher "
               "(columns); 1 = the same representation up to rotation and scale, * = a recipe pair:"]
        width = max(len(n) for n in s)
        out.append(" " * (width + 2) + " ".join(f"{n[-8:]:>8s}" for n in t))
        marks = {(i, j) for i, j, _ in self.marked}
        for i, name in enumerate(s):
            cells = " ".join(f"{float(c[i, j]):7.2f}{'*' if (i, j) in marks else ' '}" for j in range(len(t)))
            out.append(f"  {name:{width}s} {cells}")
        best, uni = pairing_score(c, self.best), pairing_score(c, self.uniform)
        k = max(1, len(self.best))
        out.append(f"best-aligned pairing by CKA: {self._pairing(self.best, c)}; mean CKA {best / k:.2f}")
        out.append(f"uniform-depth pairing:       {self._pairing(self.uniform, c)}; mean CKA {uni / k:.2f}")
        out.append(PAIRING_WHY)
        chosen = dict(self.best)
        for i, j, key in self.marked:
            if chosen.get(i, j) != j:
                out.append(f"  the recipe pairs {key} (CKA {float(c[i, j]):.2f}); by CKA, {s[i]} aligns best "
                           f"(in order) with teacher {t[chosen[i]]} ({float(c[i, chosen[i]]):.2f})")
        if self.pair_cka:
            if self.cka_after is None:
                out.append("CKA at each recipe pair (what the pair reads; student at initialisation): "
                           + ", ".join(f"{k} {v:.2f}" for k, v in self.pair_cka.items()))
            else:
                out.append("CKA at each pair of the run, before -> after training (did the feature terms pull the "
                           "student toward the teacher?):")
                for key, before in self.pair_cka.items():
                    after = self.pair_after[key]
                    verdict = "closer" if after > before + 0.02 else "further" if after < before - 0.02 else "unchanged"
                    out.append(f"  {key}: {before:.2f} -> {after:.2f} ({verdict})")
        else:
            out.append("the recipe has no feature pairs: only the logit KD term (and the task) would train the student")
        return out

    def to_json(self) -> dict:
        def named(p):
            return [[self.student_layers[i], self.teacher_layers[j]] for i, j in p]

        k = max(1, len(self.best))
        data = {"student_layers": self.student_layers, "teacher_layers": self.teacher_layers,
                "num_samples": self.num_samples, "cka": self.cka.tolist(),
                "best_pairing": named(self.best), "best_mean": pairing_score(self.cka, self.best) / k,
                "uniform_pairing": named(self.uniform), "uniform_mean": pairing_score(self.cka, self.uniform) / k,
                "recipe_pairs_on_grid": [[self.student_layers[i], self.teacher_layers[j], key]
                                         for i, j, key in self.marked],
                "pair_cka": self.pair_cka, "explanation": PAIRING_WHY}
        if self.cka_after is not None:
            data.update(cka_after=self.cka_after.tolist(), pair_cka_after=self.pair_after)
        return data


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dark_knowledge(dk: DarkKnowledge, path: Path) -> None:
    """Left: entropy and off-class mass against T. Then one class-by-class heatmap ``M[c, k]`` per T (diagonal left
    out, so the off-class relations set the colour scale)."""
    plt = _pyplot()
    ts = dk.temperatures
    fig, axes = plt.subplots(1, len(ts) + 1, figsize=(4.2 * (len(ts) + 1), 4))
    ax = axes[0]
    ax.plot(ts, [dk.stats[t]["off_class"] for t in ts], marker="o", label="mass off the true class")
    ax.plot(ts, [dk.stats[t]["true_class"] for t in ts], marker="o", label="mass on the true class")
    ax.axvline(dk.suggested, color="gray", ls="--", lw=1)
    ax.set(xscale="log", xticks=ts, xticklabels=[f"{t:g}" for t in ts], xlabel="temperature T", ylim=(0, 1),
           title=f"soft targets (suggested T={dk.suggested:g})")
    ax.minorticks_off()
    ax2 = ax.twinx()
    ax2.plot(ts, [dk.stats[t]["entropy_bits"] for t in ts], marker="s", color="tab:green", label="entropy (bits)")
    ax2.set_ylabel("mean entropy (bits)", color="tab:green")
    ax.legend(fontsize=7, loc="center left")
    names = [dk.name(k) for k in range(dk.num_classes)]
    for ax, t in zip(axes[1:], ts):
        m = dk.matrices[t].clone()
        m.fill_diagonal_(float("nan"))
        im = ax.imshow(m.numpy(), cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ticks = range(dk.num_classes)
        ax.set(xticks=ticks, yticks=ticks, xlabel="soft-target class k", ylabel="true class c",
               title=f"T={t:g}{' (suggested)' if t == dk.suggested else ''}: mean p[k] | c")
        ax.set_xticklabels(names, fontsize=6)
        ax.set_yticklabels(names, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cka(report: LayerReport, path: Path) -> None:
    """The CKA heatmap (and, after a run, the trained student's beside it): squares mark the recipe's pairs, dots
    the CKA pairing, crosses the uniform-depth pairing."""
    plt = _pyplot()
    maps = [("student at initialisation" if report.cka_after is None else "before training", report.cka)]
    if report.cka_after is not None:
        maps.append(("after training", report.cka_after))
    s, t = len(report.student_layers), len(report.teacher_layers)
    fig, axes = plt.subplots(1, len(maps), figsize=(len(maps) * (2.5 + 0.8 * t), 1.8 + 0.6 * s), squeeze=False)
    for ax, (title, c) in zip(axes[0], maps):
        im = ax.imshow(c.numpy(), cmap="magma", vmin=0, vmax=1)
        for i in range(s):
            for j in range(t):
                ax.text(j, i, f"{float(c[i, j]):.2f}", ha="center", va="center", fontsize=7,
                        color="white" if float(c[i, j]) < 0.6 else "black")
        for i, j, _ in report.marked:
            ax.add_patch(plt.Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, ec="cyan", lw=2))
        # markers in the cells' top corners, clear of the numbers
        ax.scatter([j - 0.28 for _, j in report.best], [i - 0.28 for i, _ in report.best], s=28, c="lime",
                   marker="o", edgecolors="black", linewidths=0.5)
        ax.scatter([j + 0.28 for _, j in report.uniform], [i - 0.28 for i, _ in report.uniform], s=34, c="red",
                   marker="x")
        ax.set(xticks=range(t), yticks=range(s), xlabel="teacher layer", ylabel="student layer",
               title=f"linear CKA, {title}")
        ax.set_xticklabels(report.teacher_layers, rotation=45, ha="right", fontsize=7)
        ax.set_yticklabels(report.student_layers, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="s", mfc="none", mec="cyan", mew=2, ms=10, label="the recipe's pairs"),
               Line2D([], [], ls="", marker="o", mfc="lime", mec="black", label="best CKA pairing (in order)"),
               Line2D([], [], ls="", marker="x", color="red", label="uniform-depth pairing")]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
