"""Distiller: a frozen teacher, a trainable student, adapters and losses, and the combined loss of one step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.cka_pairs import CKA_TITLE, cka_pairs
from ..capture import TapSet, auto_pairs, pair_taps, per_pair, resolve_module
from ..config import AutoPairs, LogitKD, Pair
from ..data.batch import Batch
from ..errors import FeatdistillError, UnknownNameError
from ..losses import LOGIT_LOSSES
from .calibration import AutoWeights
from .combiner import FeatureTerm, LossCombiner
from .logits import split_logits
from .plan import PlannedPair, format_plan, plan_multi, plan_pair, teacher_run_line
from .teachers import LiveTeacher, Teacher

_DEFAULT_KD = LogitKD()


def channel_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over channels at each position (dim 1 of maps, last dim otherwise)."""
    if x.dim() == 4:
        return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)
    return F.layer_norm(x, x.shape[-1:])


def _problems(kd: LogitKD | None, pairs: list[Pair], has_sample: bool) -> list[str]:
    found = (kd.problems() if kd is not None else []) + [p for pair in pairs for p in pair.problems()]
    keys = [p.key for p in pairs]
    found += [f"two pairs share the name {k!r}; give one a name=" for k in sorted({k for k in keys
                                                                                  if keys.count(k) > 1})]
    if pairs and not has_sample:
        found.append("sample_input= is needed to measure feature shapes: pass one batch, "
                     "e.g. torch.randn(2, 3, 224, 224)")
    return found


def _logit_loss(kd: LogitKD) -> nn.Module:
    """The logit loss ``kd`` names, built with its ``loss_kwargs`` (a misspelled one is an error naming it)."""
    try:
        return LOGIT_LOSSES.get(kd.loss)(kd.temperature, **kd.loss_kwargs)
    except TypeError as exc:
        raise FeatdistillError(f"kd.loss_kwargs {kd.loss_kwargs} do not fit the logit loss {kd.loss!r}: {exc}. "
                               "Fix kd.loss_kwargs.") from None


def _unknown_layers(pairs: list[Pair], student: nn.Module, teacher: nn.Module | None) -> list[str]:
    """Every layer name that names no layer of its model (each with close matches), not just the first."""
    found = []
    for pair in pairs:
        for side, model in (("student", student), ("teacher", teacher)):
            if model is None:  # a Teacher stand-in without a model checks its own names
                continue
            for i, name in enumerate(pair.layers(side)):
                try:
                    resolve_module(model, name)
                except UnknownNameError as exc:  # a multi-layer pair says which level: teacher[1]
                    found.append(f"pair {pair.key!r}, {side}{f'[{i}]' if pair.multi_layer else ''}: {exc}")
    return found


class Distiller(nn.Module):
    """Teacher -> student distillation with logit KD and feature pairs, as one ``nn.Module``.

    ``forward(x, y)`` gets the teacher's side of the step (the frozen teacher run in ``eval()`` under
    ``no_grad``, or any other :class:`~featdistill.distill.teachers.Teacher`), runs the student on ``x``, reads
    the hooked layers, applies the adapters and returns a dict of scalar tensors: ``'loss'`` (what to
    backpropagate), ``'task'``, ``'kd'`` and ``'feat/<pair>'`` (a multi-layer pair such as ReviewKD's is one term
    whose loss receives the lists of its layers' features). ``x`` is an input batch (e.g. ``[B, 3, H, W]``),
    a mapping of model inputs (``input_ids [B, T]``, ``attention_mask``, ...; the model is called with
    ``**x``) or a :class:`~featdistill.data.batch.Batch`; ``y`` labels ``[B]`` (or ``[B, T]`` tokens, -100
    ignored); ``index`` ``[B]`` sample indices for losses that declare ``needs_index``.

    Only the student, the adapters and the losses are registered submodules, so ``parameters()``,
    ``state_dict()`` and ``DistributedDataParallel`` see exactly the trainable part; the teacher still follows
    ``.to()``. ``close()`` (or leaving a ``with`` block) removes every hook; ``export_student()`` returns the
    bare student.

    Args:
        teacher: a module returning logits ``[B, K]`` (see :func:`split_logits`), or a ``Teacher``.
        student: the module to train.
        pairs: :class:`Pair` list, or ``'auto'`` / :class:`AutoPairs` to pair blocks by relative depth, ``'cka'`` /
            ``AutoPairs(by='cka')`` to pair layers by linear CKA on ``pairing_input``.
        kd: :class:`LogitKD`, or ``None`` for feature terms plus plain cross-entropy.
        sample_input: one batch (as ``x``) used for a no-grad dry run that measures feature shapes (needed
            when there are pairs).
        logits_from: optional ``output -> logits`` callable for unusual model outputs.
        calibration_steps: training steps over which ``Pair(weight='auto')`` weights are measured.
        label_smoothing: for the task term's cross-entropy.
        pairing_input: the fixed batch (as ``x``, at least 8 samples) that ``pairs='cka'`` measures CKA on;
            default ``sample_input``.
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        pairs: Sequence[Pair] | AutoPairs | str = (),
        kd: LogitKD | None = _DEFAULT_KD,
        sample_input: Any = None,
        logits_from: Callable[[Any], torch.Tensor] | None = None,
        calibration_steps: int = 20,
        label_smoothing: float = 0.0,
        pairing_input: Any = None,
    ):
        super().__init__()
        teacher_model = teacher.model if isinstance(teacher, Teacher) else teacher
        self.pairing_notes: list[str] = []
        self.pairing_title: str | None = None  # None: pairs by relative depth (format_plan's default title)
        if isinstance(pairs, str) and pairs in ("auto", "cka"):
            pairs = AutoPairs(by="cka" if pairs == "cka" else "depth")
        if isinstance(pairs, AutoPairs):
            if pairs.problems():
                raise FeatdistillError("cannot build the Distiller:\n  - " + "\n  - ".join(pairs.problems()))
            if pairs.by == "cka":  # measured once, here: the teacher as given, the student as it starts
                measured_on = pairing_input if pairing_input is not None else sample_input
                pairs, self.pairing_notes = cka_pairs(teacher_model, student, measured_on, pairs.n_pairs,
                                                      **pairs.pair_kwargs())
                self.pairing_title = CKA_TITLE
            else:
                pairs, self.pairing_notes = auto_pairs(teacher_model, student, pairs.n_pairs, **pairs.pair_kwargs())
        pairs = list(pairs)
        problems = _problems(kd, pairs, sample_input is not None)
        if problems:
            raise FeatdistillError("cannot build the Distiller:\n  - " + "\n  - ".join(problems))
        unknown = _unknown_layers(pairs, student, teacher_model)
        if unknown:
            raise UnknownNameError("\n  - ".join(unknown) if len(unknown) == 1 else
                                   f"{len(unknown)} layer names are wrong:\n  - " + "\n  - ".join(unknown))
        source = teacher if isinstance(teacher, Teacher) else LiveTeacher(teacher, logits_from)
        self.student = student
        # not submodules: the teacher is frozen, outside DDP and state_dict
        object.__setattr__(self, "teacher", source.model)
        object.__setattr__(self, "teacher_source", source)
        self.pairs, self.kd, self.logits_from = pairs, kd, logits_from
        if hasattr(student, "set_distilled_training"):  # timm distilled DeiT: return both heads in training
            student.set_distilled_training(kd is not None)
        self.student_taps: TapSet | None = None
        self.adapters = nn.ModuleList()
        self.planned: list[PlannedPair] = []
        try:
            self.student_taps = TapSet(student, pair_taps(student, pairs, "student"), detach=False, side="student")
            source.bind(pairs)
            if pairs:
                self._plan(sample_input)
        except BaseException:
            self.close()  # a failed build leaves no hook behind on the user's models
            raise
        auto = None
        if any(p.weight == "auto" for p in pairs):
            auto = AutoWeights([None if p.weight == "auto" else p.weight for p in pairs],
                               [p.auto_ratio for p in pairs], steps=calibration_steps)
        self.auto_weights = auto  # a submodule: its buffers travel with state_dict and DDP
        self.feature_losses = nn.ModuleList(p.loss for p in self.planned)  # parameters train with the student
        # a loss declared it needs sample indices: the loader must yield (x, y, index)
        self.needs_index = any(loss.needs_index for loss in self.feature_losses)
        self.logit_loss = _logit_loss(kd) if kd is not None else None
        self.combiner = LossCombiner(kd, [FeatureTerm(p.pair.key, p.loss, p.pair.weight, p.label)
                                          for p in self.planned], auto, label_smoothing, self.logit_loss)

    # -- construction -------------------------------------------------------------------------
    def _plan(self, sample_input: Any) -> None:
        """Dry run (one no-grad eval-mode forward of both models), then build and check each pair's adapter and
        loss. The dry run also finds layers whose outputs are later modified in place: only those are copied."""
        batch = self._batch(sample_input)
        was_training = self.student.training
        try:
            self.student.eval()
            with torch.no_grad():
                t_feats = self.teacher_source.dry_run(batch).features
                s_feats = per_pair(self.pairs, self.student_taps.run(lambda: batch.run(self.student))[1])
        finally:
            self.student.train(was_training)
        device = next((p.device for p in self.student.parameters()), torch.device("cpu"))
        for pair, s, t in zip(self.pairs, s_feats, t_feats):
            planned = plan_multi(pair, s, t, device) if pair.multi_layer else \
                plan_pair(pair, s, t, self.student, self.teacher, device)
            self.adapters.append(planned.adapter)
            self.planned.append(planned)

    @staticmethod
    def _batch(x: Any, y: torch.Tensor | None = None, index: torch.Tensor | None = None) -> Batch:
        if isinstance(x, Batch):
            return x
        if isinstance(x, Mapping):
            batch = Batch.of(x)
            return Batch(batch.inputs, y if y is not None else batch.labels, index if index is not None
                         else batch.index)
        return Batch(x, y, index)

    # -- training step ------------------------------------------------------------------------
    def forward(self, x: Any, y: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One step's named scalar terms (see the class docstring for ``x``, ``y`` and ``index``)."""
        batch = self._batch(x, y, index)
        if self.needs_index and batch.index is None:
            raise FeatdistillError(
                f"the loss of pair(s) {[p.pair.key for p in self.planned if p.loss.needs_index]} needs each "
                "sample's dataset index: call distiller(x, y, index), or have the loader yield (x, y, index) "
                "(featdistill.data.make_loaders(..., with_index=True))")
        teacher_logits, t_feats = None, []
        if self.kd is not None or self.pairs:
            teacher_logits, t_feats = self.teacher_source(batch, need_logits=self.kd is not None)
        s_out, s_feats = self.student_taps.run(lambda: batch.run(self.student))
        s_feats = per_pair(self.pairs, s_feats)
        if self.logits_from is not None:
            task_logits = kd_logits = self.logits_from(s_out)
        else:
            task_logits, kd_logits = split_logits(s_out)
        t_feats = self.teacher_targets(t_feats, done=getattr(self.teacher_source, "targets", None))
        aligned = []
        for pair, adapter, s, t in zip(self.pairs, self.adapters, s_feats, t_feats):
            if not pair.multi_layer:  # a multi-layer loss gets lists of features and holds what maps them
                s = adapter(s)
                if pair.normalize == "both":
                    s = channel_layer_norm(s)
            aligned.append((s, t))
        return self.combiner(task_logits, kd_logits, teacher_logits, batch.labels, aligned,
                             needs={"index": batch.index}, mask=batch.mask)

    def teacher_targets(self, features: list, done: list[bool] | None = None) -> list:
        """Each pair's captured teacher feature as its loss reads it: ``adapter.target`` (e.g. class tokens
        dropped), the ``normalize`` LayerNorm, then the loss's ``teacher_part`` (attention transfer's map). None of
        it depends on the student, so a teacher-output cache stores the result; ``done[i]``: pair ``i``'s feature is
        such a stored target already. A multi-layer pair's list of features is passed as it is."""
        out = []
        for i, (pair, adapter, loss, t) in enumerate(zip(self.pairs, self.adapters, self.feature_losses, features)):
            if not pair.multi_layer and not (done and done[i]):
                t = adapter.target(t)
                if pair.normalize is not None:
                    t = channel_layer_norm(t)
                t = loss.teacher_part(t)
            out.append(t)
        return out

    # -- housekeeping -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half() move the unregistered teacher too
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    def use_teacher(self, source: Teacher) -> None:
        """Take the teacher's side from ``source`` from now on (e.g. a cache the current teacher filled); the hooks
        of the current source are removed."""
        self.teacher_source.close()
        source.bind(self.pairs)
        object.__setattr__(self, "teacher_source", source)

    def plan(self) -> str:
        """The pairs as built: student layer and shape -> adapter -> teacher layer and shape, loss, weight."""
        return format_plan(self.teacher, self.student, self.adapters, self.planned, self.pairing_notes,
                           repr(self.combiner), teacher_run_line(self.teacher_source, self.kd is not None),
                           pairing_title=self.pairing_title)

    def close(self) -> None:
        """Remove every hook this Distiller attached (student and teacher)."""
        if self.student_taps is not None:
            self.student_taps.close()
        self.teacher_source.close()

    def export_student(self) -> nn.Module:
        """Close the hooks and return the plain student (no hooks, no adapters), in eval mode."""
        self.close()
        if hasattr(self.student, "set_distilled_training"):
            self.student.set_distilled_training(False)
        return self.student.eval()

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
