"""The plan: what the dry run measured and built for each pair, as typed rows, and its printout.

One no-grad forward of both models on ``sample_input`` gives every paired feature's shape; from them each pair
gets its adapter (``'auto'`` chooses from the shapes and the declared token layouts) and its loss module, and
both are checked to produce equal shapes before any training step runs. A multi-layer pair (ReviewKD) gets no
adapter: its loss is built from every level's shapes and called once on the dry-run features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import Adapter, Identity, adapter_name, build_adapter, model_token_hints
from ..capture import block_names
from ..config import Pair
from ..errors import FeatdistillError, ShapeError
from ..losses import Loss, build_loss
from ..models import count_params


@dataclass
class PlannedPair:
    """One pair as built. Shapes have no batch dim: ``compared_shape`` is what the loss sees on both sides. A
    multi-layer pair has a list of shapes per side (one per level, shallow -> deep) and an identity adapter."""

    pair: Pair
    student_shape: tuple[int, ...] | list[tuple[int, ...]]
    teacher_shape: tuple[int, ...] | list[tuple[int, ...]]
    compared_shape: tuple[int, ...] | list[tuple[int, ...]]
    adapter: Adapter
    loss: Loss

    @property
    def adapter_name(self) -> str:
        return adapter_name(self.adapter)

    @property
    def adapter_params(self) -> int:
        return count_params(self.adapter)

    @property
    def loss_name(self) -> str:
        return self.pair.loss if isinstance(self.pair.loss, str) else self.loss.label

    @property
    def label(self) -> str:
        """The term in the printed formula, e.g. ``mse(LastDim(blocks.2), blocks.5)``; a multi-layer term
        ``review_kd(layer1+layer2, layer1+layer2)``."""
        if self.pair.multi_layer:
            return f"{self.loss_name}({'+'.join(self.pair.layers('student'))}, {'+'.join(self.pair.layers('teacher'))})"
        return f"{self.loss_name}({self.adapter_name}({self.pair.student}), {self.pair.teacher})"

    def line(self) -> str:
        p = self.pair
        weight = p.weight if isinstance(p.weight, str) else format(p.weight, "g")
        if p.multi_layer:  # one group: the term, then one row per level
            s_names, t_names = p.layers("student"), p.layers("teacher")
            head = (f"  {'+'.join(s_names)} -> {self.loss.label} ({count_params(self.loss):,} params, in the loss) -> "
                    f"{'+'.join(t_names)}  loss={self.loss_name} weight={weight}, {len(s_names)} levels:")
            levels = zip(s_names, self.student_shape, t_names, self.teacher_shape)
            return "\n".join([head, *(f"    level {i}: {s} {list(ss)} -> {t} {list(ts)}"
                                       for i, (s, ss, t, ts) in enumerate(levels, 1))])
        return (f"  {p.student} {list(self.student_shape)} -> {self.adapter_name} ({self.adapter_params:,} params)"
                f" -> {p.teacher} {list(self.teacher_shape)}  loss={self.loss_name} weight={weight}"
                + (f" capture={p.capture}" if p.capture != "output" else "")
                + (f" normalize={p.normalize}" if p.normalize else "")
                # the loss sees the teacher reshaped (prefix tokens dropped, another grid): say what it sees
                + (f" compared={list(self.compared_shape)}" if self.compared_shape != self.teacher_shape else ""))


def _positions(shape: tuple[int, ...]) -> int:
    """Spatial positions of one sample: H*W of a map [C, H, W], N of tokens [N, C]."""
    if len(shape) == 3:
        return shape[1] * shape[2]
    return shape[0] if len(shape) == 2 else 0


def _token_hints(model: nn.Module | None, shape: tuple[int, ...], attention: bool, side: str) -> dict:
    """Token layout the model declares for this feature (attention maps [H, N, N]: for their N tokens)."""
    n = shape[-1] if attention else (shape[0] if len(shape) == 2 else None)
    return model_token_hints(model, n, side) if model is not None and n is not None else {}


def plan_pair(pair: Pair, student_feat: torch.Tensor, teacher_feat: torch.Tensor, student: nn.Module,
              teacher: nn.Module | None, device: torch.device) -> PlannedPair:
    """Build and check the adapter and loss of ``pair`` from one dry-run capture of each side ``[B, ...]``."""
    s_shape, t_shape = tuple(student_feat.shape[1:]), tuple(teacher_feat.shape[1:])
    # attention maps [H, N, N]: captured as such, or declared by choosing their adapter
    attention = pair.capture in ("attention", "value_relation") or pair.adapter == "attention"
    hints = {**_token_hints(student, s_shape, attention, "student"),
             **_token_hints(teacher, t_shape, attention, "teacher")}
    try:
        loss = build_loss(pair.loss, s_shape, t_shape, pair.loss_kwargs)
        kind = "attention" if attention and pair.adapter == "auto" else pair.adapter
        adapter = build_adapter(kind, s_shape, t_shape, loss.channel_free, loss.relational,
                                **{**hints, **pair.adapter_kwargs})
        adapter.to(device)
        loss.to(device)
        was_training = adapter.training
        adapter.eval()
        with torch.no_grad():
            out = adapter(student_feat.to(device))
            target = adapter.target(teacher_feat.to(device))
        adapter.train(was_training)
        out_shape, target_shape = tuple(out.shape[1:]), tuple(target.shape[1:])
    except ShapeError as exc:
        raise ShapeError(f"pair {pair.key!r}: {exc}") from None
    except TypeError as exc:  # a loss or adapter factory that rejects its kwargs
        raise FeatdistillError(f"pair {pair.key!r}: {exc}. Check loss_kwargs {pair.loss_kwargs} and adapter_kwargs "
                               f"{pair.adapter_kwargs} against the loss's and adapter's arguments.") from None
    planned = PlannedPair(pair, s_shape, t_shape, target_shape, adapter, loss)
    name = planned.loss_name
    if loss.channel_free and not attention and _positions(target_shape) == 1:
        raise ShapeError(
            f"pair {pair.key!r}: {name} compares where activation energy sits across positions, "
            f"but {pair.teacher!r} gives {list(target_shape)}: one position, so the normalised map is "
            "constant and the loss is always 0. Pair an earlier layer with a spatial size above 1x1."
        )
    same = out_shape == target_shape or loss.relational  # batch relations: any widths and positions
    if loss.channel_free and len(out_shape) == len(target_shape) >= 2:
        drop = 0 if len(out_shape) == 3 else len(out_shape) - 1  # maps: channels first; tokens: last
        same = [d for i, d in enumerate(out_shape) if i != drop] == [d for i, d in enumerate(target_shape) if i != drop]
    if same and not loss.needs_index:  # one call now, so a bad loss_kwargs shows before any training
        try:
            was_training = loss.training
            with torch.no_grad():
                loss.eval()(out, loss.teacher_part(target))
            loss.train(was_training)
        except TypeError as exc:
            raise FeatdistillError(f"pair {pair.key!r}: the loss {planned.loss_name!r} cannot be called with "
                                   f"loss_kwargs {pair.loss_kwargs}: {exc}. Fix the pair's loss_kwargs.") from None
    if not same:
        raise ShapeError(
            f"pair {pair.key!r}: adapter {planned.adapter_name} ({planned.adapter_params:,} params) maps student "
            f"{list(s_shape)} to {list(out_shape)}, but the teacher gives {list(target_shape)}. Use adapter='auto' "
            "or fix the custom adapter's output shape."
        )
    return planned


def plan_multi(pair: Pair, student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor],
               device: torch.device) -> PlannedPair:
    """Build and check the loss of a multi-layer ``pair`` from one dry-run capture per level ``[B, ...]`` of each
    side (shallow -> deep): the loss gets every level's shapes and is called once, so a bad level or
    ``loss_kwargs`` shows before training."""
    s_shapes = [tuple(f.shape[1:]) for f in student_feats]
    t_shapes = [tuple(f.shape[1:]) for f in teacher_feats]
    try:
        loss = build_loss(pair.loss, s_shapes, t_shapes, pair.loss_kwargs).to(device)
        if loss.multi_layer and not loss.needs_index:
            was_training = loss.training
            with torch.no_grad():
                loss.eval()([f.to(device) for f in student_feats], [f.to(device) for f in teacher_feats])
            loss.train(was_training)
    except ShapeError as exc:
        raise ShapeError(f"pair {pair.key!r}: {exc}") from None
    except TypeError as exc:
        raise FeatdistillError(f"pair {pair.key!r}: {exc}. Check loss_kwargs {pair.loss_kwargs} against the loss's "
                               "arguments.") from None
    if not loss.multi_layer:  # a Loss instance or function that config could not see through
        raise FeatdistillError(f"pair {pair.key!r}: the loss {loss.label!r} compares one layer with one layer; a pair "
                               "naming tuples of layers needs a multi-layer loss (e.g. 'review_kd')")
    return PlannedPair(pair, s_shapes, t_shapes, t_shapes, Identity().to(device), loss)


def _blocks_run(model: nn.Module, layer: str) -> str:
    """``': 4 of 12 blocks run'`` for a forward that stops after ``layer`` (blocks as :func:`block_names` finds
    them, in registration order), ``' (the last in part)'`` when ``layer`` sits inside a block; '' without blocks."""
    try:
        blocks = block_names(model)
    except FeatdistillError:
        return ""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    inside = [b for b in blocks if layer.startswith(b + ".")]
    run = [b for b in blocks if b == layer or b.startswith(layer + ".") or order[b] < order[layer]]
    return f": {len(run)} of {len(blocks)} blocks run" + (" (the last in part)" if inside else "")


def teacher_run_line(source: object, need_logits: bool) -> str | None:
    """One line: whether the teacher's forward stops early in the step (only a ``LiveTeacher`` can), and after
    which layer, or why not. None for a teacher source without a live model."""
    if getattr(source, "plan_line", None):  # e.g. a CachedTeacher: no forward at all
        return source.plan_line
    if not hasattr(source, "early_exit_after"):
        return None
    if need_logits:
        return "teacher: runs in full: logit KD needs its logits"
    after = source.early_exit_after
    if after is None:
        return f"teacher: runs in full although logits are not needed (feature-only KD): {source.early_exit_reason}"
    return (f"teacher: stops after {after} when logits are not needed (feature-only KD)"
            + _blocks_run(source.model, after))


def format_plan(teacher: nn.Module | None, student: nn.Module, adapters: nn.Module, planned: list[PlannedPair],
                pairing_notes: list[str], formula: str, teacher_run: str | None = None,
                pairing_title: str | None = None) -> str:
    """The printed plan: model sizes, whether the teacher stops early (``teacher_run``, one line), one line per
    pair, how automatic pairs were chosen, the loss formula."""
    lines = []
    if teacher is not None:
        lines.append(f"teacher {type(teacher).__name__}: {count_params(teacher):,} params (frozen)")
    if teacher_run:
        lines.append(teacher_run)
    lines += [f"student {type(student).__name__}: {count_params(student):,} params",
              f"adapters: {count_params(adapters):,} params"]
    in_losses = sum(count_params(p.loss) for p in planned)
    if in_losses:
        lines.append(f"losses: {in_losses:,} params (modules inside the losses, trained with the student)")
    lines += [p.line() for p in planned]
    if pairing_notes:
        lines.append(pairing_title or "pairs chosen automatically by relative depth (TinyBERT uniform mapping):")
        lines += [f"  {note}" for note in pairing_notes]
    lines.append(formula)
    return "\n".join(lines)
