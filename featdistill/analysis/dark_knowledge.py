"""Dark knowledge: what a teacher's soft targets ``softmax(z / T)`` say beyond the true class, per temperature.

For teacher logits ``z [N, K]`` and true classes ``y [N]`` on held-out data, at each T:

- ``entropy_bits``: mean entropy of ``p = softmax(z / T)`` in **bits** (0 = one-hot, ``log2 K`` = uniform);
- ``off_class``: mean mass off the true class, ``1 - p[y]`` (the share of the target that is dark knowledge);
- ``true_class``: mean ``p[y]``;
- ``M [K, K]``: ``M[c, k]`` = mean ``p[k]`` over the samples of true class c (each row sums to 1; a row of a class
  absent from the data is NaN); its symmetrised off-diagonal ``(M[c, k] + M[k, c]) / 2`` ranks which classes the
  teacher relates.

Suggested T (:func:`suggest_temperature`): the highest T in the grid at which the teacher's soft target still puts
most of its mass on the true class (mean ``p[y] >= 0.5``). Raising T only moves mass off the true class, so this is
the T that shows the most dark knowledge while the target still says clearly which class is right; a teacher below
0.5 even at T = 1 gets T = 1 (a higher T would only flatten a target that is already unsure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["TEMPERATURES", "DarkKnowledge", "analyse", "class_matrix", "soft_stats", "suggest_temperature",
           "top_pairs", "worked_example"]

TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
MAJORITY = 0.5  # the suggested-T rule: the true class keeps at least this mean share of the soft target


def soft_stats(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """``{'entropy_bits', 'off_class', 'true_class'}``: means over the N samples of ``logits [N, K]`` with true
    classes ``labels [N]`` at ``temperature``."""
    logp = torch.log_softmax(logits.detach().double() / temperature, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1) / math.log(2)  # nats -> bits
    true = p.gather(1, labels.long().view(-1, 1)).squeeze(1)
    return {"entropy_bits": float(entropy.mean()), "off_class": float(1 - true.mean()),
            "true_class": float(true.mean())}


def class_matrix(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``M [K, K]`` float64: ``M[c, k]`` = mean ``softmax(z / T)[k]`` over the samples whose true class is c (NaN rows
    for classes without samples)."""
    p = torch.softmax(logits.detach().double() / temperature, dim=-1)
    k = p.shape[1]
    one_hot = torch.nn.functional.one_hot(labels.long(), k).double()  # [N, K]
    counts = one_hot.sum(0)  # [K]
    sums = one_hot.T @ p  # [K, K]: row c sums p over samples of class c
    return sums / counts.unsqueeze(1)  # 0 / 0 = NaN for an absent class


def top_pairs(matrix: torch.Tensor, n: int = 5) -> list[tuple[int, int, float]]:
    """The ``n`` most related class pairs ``(c, k, score)``, ``c < k``, by ``(M[c, k] + M[k, c]) / 2``, highest
    first (ties: lower c, then lower k); the diagonal and NaN entries are left out."""
    sym = (matrix + matrix.T) / 2
    k = sym.shape[0]
    pairs = [(c, j, float(sym[c, j])) for c in range(k) for j in range(c + 1, k) if not math.isnan(float(sym[c, j]))]
    pairs.sort(key=lambda t: (-t[2], t[0], t[1]))
    return pairs[:n]


def suggest_temperature(true_class: dict[float, float], majority: float = MAJORITY) -> tuple[float, str]:
    """``(T, one-sentence reason)`` from ``{T: mean p[y] at T}``: the highest T whose mean true-class probability
    is still ``>= majority`` (the most dark knowledge while the target stays a clear answer); the lowest T when
    none is."""
    ts = sorted(true_class)
    kept = [t for t in ts if true_class[t] >= majority]
    if not kept:
        t = ts[0]
        return t, (f"T={t:g}: even at T={t:g} the teacher gives the true class only {true_class[t]:.0%} on average, "
                   "so a higher T would only flatten targets that are already unsure (improve the teacher first).")
    t = kept[-1]
    nxt = next((u for u in ts if u > t), None)
    after = (f"; at T={nxt:g} it would drop to {true_class[nxt]:.0%}, below half" if nxt is not None
             else ", the highest T tried")
    return t, (f"T={t:g}: the highest temperature at which the teacher still puts most of its mass on the true "
               f"class ({true_class[t]:.0%} on average, {1 - true_class[t]:.0%} dark knowledge){after}.")


@dataclass
class DarkKnowledge:
    """What :func:`analyse` found: per-T statistics, class matrices and related pairs, the suggestion."""

    temperatures: tuple[float, ...]
    stats: dict[float, dict[str, float]]
    matrices: dict[float, torch.Tensor]
    pairs: dict[float, list[tuple[int, int, float]]]
    suggested: float
    reason: str
    accuracy: float
    num_samples: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    def name(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else str(k)

    def lines(self, n_pairs: int = 5) -> list[str]:
        """The findings in words."""
        k = self.num_classes
        out = [f"teacher on {self.num_samples} held-out samples: accuracy {self.accuracy:.1%}; soft targets "
               f"softmax(z/T) (entropy in bits, uniform over {k} classes = {math.log2(k):.2f}):"]
        for t in self.temperatures:
            s = self.stats[t]
            out.append(f"  T={t:g}: mean entropy {s['entropy_bits']:.2f} bits, mass off the true class "
                       f"{s['off_class']:.1%} (true class {s['true_class']:.1%})")
        t = self.suggested
        out.append(f"suggested temperature {self.reason}")
        related = ", ".join(f"{self.name(c)} <-> {self.name(j)}: {v:.2f}" for c, j, v in self.pairs[t][:n_pairs])
        out.append(f"classes the teacher relates most at T={t:g} (mean soft target, symmetrised): {related}")
        return out

    def to_json(self) -> dict:
        def clean(m: torch.Tensor) -> list:
            return [[None if math.isnan(v) else round(v, 6) for v in row] for row in m.tolist()]

        return {"temperatures": list(self.temperatures), "entropy_unit": "bits", "accuracy": self.accuracy,
                "num_samples": self.num_samples,
                "per_temperature": {f"{t:g}": {**self.stats[t], "class_matrix": clean(self.matrices[t]),
                                               "top_pairs": [{"classes": [self.name(c), self.name(j)], "score": v}
                                                             for c, j, v in self.pairs[t]]}
                                    for t in self.temperatures},
                "suggested_temperature": self.suggested, "reason": self.reason}


def analyse(logits: torch.Tensor, labels: torch.Tensor, temperatures: Sequence[float] = TEMPERATURES,
            class_names: Sequence[str] = (), n_pairs: int = 10) -> DarkKnowledge:
    """Dark knowledge of teacher ``logits [N, K]`` against true ``labels [N]`` at each temperature."""
    ts = tuple(float(t) for t in temperatures)
    stats = {t: soft_stats(logits, labels, t) for t in ts}
    matrices = {t: class_matrix(logits, labels, t) for t in ts}
    pairs = {t: top_pairs(matrices[t], n_pairs) for t in ts}
    suggested, reason = suggest_temperature({t: stats[t]["true_class"] for t in ts})
    accuracy = float((logits.argmax(-1) == labels).double().mean())
    return DarkKnowledge(ts, stats, matrices, pairs, suggested, reason, accuracy, int(labels.shape[0]),
                         int(logits.shape[1]), list(class_names))


def worked_example(logits: Sequence[float] = (5.0, 1.0, 0.5), temperatures: Sequence[float] = (1.0, 2.0)) -> str:
    """The textbook example: ``softmax(z / T)`` of ``z = [5, 1, 0.5]`` at T = 1 and 2, to 3 decimals."""
    z = torch.tensor(list(logits), dtype=torch.float64)
    lines = [f"Worked example: teacher logits z = [{', '.join(f'{v:g}' for v in z.tolist())}], soft target "
             "softmax(z / T):"]
    for t in temperatures:
        p = torch.softmax(z / t, dim=0).tolist()
        lines.append(f"  T={t:g}: [{', '.join(f'{v:.3f}' for v in p)}]  (mass off the top class {1 - max(p):.3f})")
    lines.append("  A higher T moves mass to the wrong classes in proportion to how plausible the teacher finds them:\n"
                 "  that ranking is the dark knowledge the student learns from.")
    return "\n".join(lines)
