"""Distiller: a frozen teacher, a trainable student and adapters, and the combined loss of one step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import build_adapter, describe
from .attention import ATTENTION_KINDS, qkv_transform
from .calibration import AutoWeights
from .combiner import FeatureTerm, LossCombiner
from .errors import FeatdistillError, ShapeError
from .hooks import FeatureHooks, resolve_module
from .losses import CHANNEL_FREE, LOSSES
from .pairing import auto_pairs
from .spec import AutoPairs, LogitKD, Pair

_DEFAULT_KD = LogitKD()


def split_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(task_logits, kd_logits)`` from a model output. A tensor serves both; a 2-tuple is
    ``(class_head, distillation_head)`` as timm's distilled DeiT returns in training; a dict
    gives ``'logits'``."""
    if isinstance(output, torch.Tensor):
        return output, output
    if isinstance(output, (tuple, list)) and len(output) == 2 and all(isinstance(o, torch.Tensor) for o in output):
        return output[0], output[1]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"], output["logits"]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; "
        "pass logits_from= (a callable output -> [B, K] tensor) to the Distiller."
    )


def token_hints(model: nn.Module, shape: tuple, side: str) -> dict[str, Any]:
    """Prefix-token count and patch grid of a timm-style ViT, when they explain a ``(N, C)`` token shape."""
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if len(shape) != 2 or prefix is None or grid is None or prefix + grid[0] * grid[1] != shape[0]:
        return {}
    return {f"{side}_prefix": int(prefix), f"{side}_grid": tuple(int(g) for g in grid)}


def channel_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over channels at each position (dim 1 of maps, last dim otherwise)."""
    if x.dim() == 4:
        return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)
    return F.layer_norm(x, x.shape[-1:])


def _positions(shape: tuple[int, ...]) -> int:
    """Spatial positions of one sample: H*W of a map [C, H, W], N of tokens [N, C]."""
    if len(shape) == 3:
        return shape[1] * shape[2]
    return shape[0] if len(shape) == 2 else 0


class Distiller(nn.Module):
    """Teacher -> student distillation with logit KD and feature pairs, as one ``nn.Module``.

    ``forward(x, y)`` runs the frozen teacher (``eval()``, ``no_grad``) and the student on ``x``
    (e.g. ``[B, 3, H, W]``), reads the hooked layers, applies the adapters and returns a dict of
    scalar tensors: ``'loss'`` (what to backpropagate), ``'task'``, ``'kd'`` and ``'feat/<pair>'``.

    Only the student and the adapters are registered submodules, so ``parameters()``, ``state_dict()``
    and ``DistributedDataParallel`` see exactly the trainable part; the teacher still follows
    ``.to()``. ``close()`` (or leaving a ``with`` block) removes every hook; ``export_student()``
    returns the bare student.

    Args:
        teacher, student: any modules returning logits ``[B, K]`` (see :func:`split_logits`).
        pairs: :class:`Pair` list, or ``'auto'`` / :class:`AutoPairs` to pair blocks by relative depth.
        kd: :class:`LogitKD`, or ``None`` for feature terms plus plain cross-entropy.
        sample_input: one batch used for a no-grad dry run that measures feature shapes (needed
            when there are pairs).
        logits_from: optional ``output -> logits`` callable for unusual model outputs.
        calibration_steps: training steps over which ``Pair(weight='auto')`` weights are measured.
        label_smoothing: for the task term's cross-entropy.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        pairs: Sequence[Pair] | AutoPairs | str = (),
        kd: LogitKD | None = _DEFAULT_KD,
        sample_input: torch.Tensor | None = None,
        logits_from: Callable[[Any], torch.Tensor] | None = None,
        calibration_steps: int = 20,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.pairing_notes: list[str] = []
        if pairs == "auto":
            pairs = AutoPairs()
        if isinstance(pairs, AutoPairs):
            if pairs.problems():
                raise FeatdistillError("cannot build the Distiller:\n  - " + "\n  - ".join(pairs.problems()))
            pairs, self.pairing_notes = auto_pairs(teacher, student, pairs.n_pairs, **pairs.pair_kwargs())
        pairs = list(pairs)
        problems = (kd.problems() if kd is not None else []) + [p for pair in pairs for p in pair.problems()]
        keys = [p.key for p in pairs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        problems += [f"two pairs share the name {k!r}; give one a name=" for k in dupes]
        if pairs and sample_input is None:
            problems.append("sample_input= is needed to measure feature shapes: pass one batch, "
                            "e.g. torch.randn(2, 3, 224, 224)")
        if problems:
            raise FeatdistillError("cannot build the Distiller:\n  - " + "\n  - ".join(problems))
        self.student = student
        object.__setattr__(self, "teacher", teacher)  # not a submodule: frozen, outside DDP and state_dict
        teacher.requires_grad_(False)
        teacher.eval()
        self.pairs = pairs
        self.kd = kd
        self.logits_from = logits_from
        if hasattr(student, "set_distilled_training"):  # timm distilled DeiT: return both heads in training
            student.set_distilled_training(kd is not None)
        self.student_hooks: list[FeatureHooks] = []
        self.teacher_hooks: list[FeatureHooks] = []
        self._student_groups: list[tuple[str, str]] = []
        self._teacher_groups: list[tuple[str, str]] = []
        self.adapters = nn.ModuleList()
        self.plan_rows: list[dict[str, Any]] = []
        try:
            self.student_hooks = self._hook(student, "student")
            self.teacher_hooks = self._hook(teacher, "teacher")
            if pairs:
                self._build_adapters(sample_input)
        except BaseException:
            self.close()  # a failed build leaves no hook behind on the user's models
            raise
        auto = None
        if any(p.weight == "auto" for p in pairs):
            auto = AutoWeights([None if p.weight == "auto" else p.weight for p in pairs],
                               [p.auto_ratio for p in pairs], steps=calibration_steps)
        self.auto_weights = auto  # a submodule: its buffers travel with state_dict and DDP
        self.combiner = LossCombiner(kd, [
            FeatureTerm(p.key, self._loss_fn(p), p.weight, self._label(p, row))
            for p, row in zip(pairs, self.plan_rows)
        ], auto, label_smoothing)

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _tap(pair: Pair, side: str, model: nn.Module) -> tuple[tuple[str, str], str, Any]:
        """``((capture, repeat), hooked layer name, select)`` for one side of a pair. Attention pairs hook
        the attention module's fused ``qkv`` linear and recompute the probabilities from its output; their
        group keeps the kind, so 'attention' and 'value_relation' on one module get separate hooks."""
        name = getattr(pair, side)
        if pair.capture in ATTENTION_KINDS:
            transform = qkv_transform(resolve_module(model, name), pair.capture)
            return (pair.capture, pair.repeat), f"{name}.qkv", transform
        select = pair.teacher_select if side == "teacher" and pair.teacher_select is not None else pair.select
        return (pair.capture, pair.repeat), name, select

    def _hook(self, model: nn.Module, side: str) -> list[FeatureHooks]:
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        taps = []
        for pair in self.pairs:
            group, name, select = self._tap(pair, side, model)
            taps.append((group, name))
            layers = groups.setdefault(group, {})
            if name in layers and layers[name] is not select and pair.capture not in ATTENTION_KINDS:
                raise FeatdistillError(f"{side} layer {name!r} is paired twice with different select=; use one")
            layers[name] = select
        setattr(self, f"_{side}_taps", taps)
        setattr(self, f"_{side}_groups", list(groups))
        hooks = [
            FeatureHooks(model, list(layers), capture="output" if capture in ATTENTION_KINDS else capture,
                         select=layers, repeat=repeat, detach=side == "teacher", clone="auto")
            for (capture, repeat), layers in groups.items()
        ]
        for h in hooks:
            h.active = False  # only capture inside forward(), not when the user evaluates the student
            h.warn_inplace = False  # the dry run finds in-place-modified layers; warn only after it
        return hooks

    def _build_adapters(self, sample_input: torch.Tensor) -> None:
        s_feats, t_feats = self._dry_run(sample_input)
        device = next((p.device for p in self.student.parameters()), sample_input.device)
        for pair, s_tap, t_tap in zip(self.pairs, self._student_taps, self._teacher_taps):
            s, t = s_feats[s_tap[0]][s_tap[1]], t_feats[t_tap[0]][t_tap[1]]
            s_shape, t_shape = tuple(s.shape[1:]), tuple(t.shape[1:])
            loss_name = pair.loss if isinstance(pair.loss, str) else ""
            attention = pair.capture in ATTENTION_KINDS
            # attention maps [H, N, N]: the token hints describe N
            s_tokens, t_tokens = ((s_shape[-1], 0), (t_shape[-1], 0)) if attention else (s_shape, t_shape)
            hints = {**token_hints(self.student, s_tokens, "student"), **token_hints(self.teacher, t_tokens, "teacher")}
            kind = "attention" if attention and pair.adapter == "auto" else pair.adapter
            try:
                adapter = build_adapter(kind, s_shape, t_shape, loss_name in CHANNEL_FREE,
                                        **{**hints, **pair.adapter_kwargs})
                adapter.to(device)
                was_training = adapter.training
                adapter.eval()
                with torch.no_grad():
                    out_shape = tuple(adapter(s.to(device)).shape[1:])
                    target_shape = tuple(adapter.target(t.to(device)).shape[1:])
                adapter.train(was_training)
            except ShapeError as exc:
                raise ShapeError(f"pair {pair.key!r}: {exc}") from None
            if loss_name in CHANNEL_FREE and not attention and _positions(target_shape) == 1:
                raise ShapeError(
                    f"pair {pair.key!r}: {loss_name} compares where activation energy sits across positions, "
                    f"but {pair.teacher!r} gives {list(target_shape)}: one position, so the normalised map is "
                    "constant and the loss is always 0. Pair an earlier layer with a spatial size above 1x1."
                )
            same = out_shape == target_shape
            if loss_name in CHANNEL_FREE and len(out_shape) == len(target_shape) >= 2:
                drop = 0 if len(out_shape) == 3 else -1  # maps: channels first; tokens: last
                same = [d for i, d in enumerate(out_shape) if i != drop % len(out_shape)] == \
                       [d for i, d in enumerate(target_shape) if i != drop % len(target_shape)]
            if not same:
                raise ShapeError(
                    f"pair {pair.key!r}: adapter {describe(adapter)} maps student {list(s_shape)} to "
                    f"{list(out_shape)}, but the teacher gives {list(target_shape)}. Use adapter='auto' or fix "
                    "the custom adapter's output shape."
                )
            self.adapters.append(adapter)
            self.plan_rows.append({
                "pair": pair.key, "student": pair.student, "student_shape": list(s_shape),
                "adapter": describe(adapter), "adapter_params": sum(p.numel() for p in adapter.parameters()),
                "teacher": pair.teacher, "teacher_shape": list(t_shape), "compared_shape": list(target_shape),
                "loss": loss_name or getattr(pair.loss, "__name__", "custom"), "weight": pair.weight,
                "normalize": pair.normalize,
            })

    def _dry_run(self, x: torch.Tensor) -> tuple[dict, dict]:
        """One no-grad eval-mode forward of both models; returns the captures by hook group. It also finds
        the layers whose outputs are later modified in place: only those are copied in training steps."""
        was_training = self.student.training
        try:
            self.student.eval()
            with torch.no_grad():
                t_feats = self._capture("teacher", x)[1]
                s_feats = self._capture("student", x)[1]
        finally:
            self.student.train(was_training)
            for h in self.teacher_hooks + self.student_hooks:
                h.warn_inplace = True
        return s_feats, t_feats

    def _capture(self, side: str, x: torch.Tensor) -> tuple[Any, dict]:
        """Run one model on ``x`` with its hooks armed: ``(output, {hook group: {layer: tensor}})``."""
        model, hooks = getattr(self, side), getattr(self, f"{side}_hooks")
        for h in hooks:
            h.active = True
        try:
            out = model(x)
        except BaseException:
            for h in hooks:
                h.clear()
            raise
        finally:
            for h in hooks:
                h.active = False
        return out, {group: h.pop() for group, h in zip(getattr(self, f"_{side}_groups"), hooks)}

    @staticmethod
    def _loss_fn(pair: Pair) -> Callable[..., torch.Tensor]:
        fn = LOSSES.get(pair.loss) if isinstance(pair.loss, str) else pair.loss
        if not pair.loss_kwargs:
            return fn
        kwargs = dict(pair.loss_kwargs)
        return lambda s, t: fn(s, t, **kwargs)

    @staticmethod
    def _label(pair: Pair, row: dict) -> str:
        adapter = row["adapter"].split(" ")[0]
        return f"{row['loss']}({adapter}({pair.student}), {pair.teacher})"

    # -- training step ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``x``: input batch ``[B, ...]``; ``y``: labels ``[B]`` (optional). Returns named scalar terms."""
        self.teacher.eval()  # every step: a .train() on the teacher or the wrapper must not flip it
        teacher_logits = None
        t_feats: dict = {}
        if self.kd is not None or self.pairs:
            with torch.no_grad():
                t_out, t_feats = self._capture("teacher", x)
            teacher_logits = (self.logits_from or (lambda o: split_logits(o)[0]))(t_out)
        s_out, s_feats = self._capture("student", x)
        if self.logits_from is not None:
            task_logits = kd_logits = self.logits_from(s_out)
        else:
            task_logits, kd_logits = split_logits(s_out)
        aligned = {}
        for pair, adapter, s_tap, t_tap in zip(self.pairs, self.adapters, self._student_taps, self._teacher_taps):
            s = adapter(s_feats[s_tap[0]][s_tap[1]])
            t = adapter.target(t_feats[t_tap[0]][t_tap[1]])
            if pair.normalize is not None:
                t = channel_layer_norm(t)
                if pair.normalize == "both":
                    s = channel_layer_norm(s)
            aligned[pair.key] = (s, t)
        return self.combiner(task_logits, kd_logits, teacher_logits, y, aligned)

    # -- housekeeping -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half() move the unregistered teacher too
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)
        return self

    def plan(self) -> str:
        """The pairs as built: student layer and shape -> adapter -> teacher layer and shape, loss, weight."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        lines = [
            f"teacher {type(self.teacher).__name__}: {count(self.teacher):,} params (frozen)",
            f"student {type(self.student).__name__}: {count(self.student):,} params",
            f"adapters: {count(self.adapters):,} params",
        ]
        for r in self.plan_rows:
            lines.append(
                f"  {r['student']} {r['student_shape']} -> {r['adapter']} -> {r['teacher']} {r['teacher_shape']}"
                f"  loss={r['loss']} weight={r['weight'] if isinstance(r['weight'], str) else format(r['weight'], 'g')}"
                + (f" normalize={r['normalize']}" if r["normalize"] else "")
            )
        if self.pairing_notes:
            lines.append("pairs chosen automatically by relative depth (TinyBERT uniform mapping):")
            lines += [f"  {note}" for note in self.pairing_notes]
        lines.append(repr(self.combiner))
        return "\n".join(lines)

    def close(self) -> None:
        """Remove every hook this Distiller attached (student and teacher)."""
        for h in self.student_hooks + self.teacher_hooks:
            h.remove()

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
