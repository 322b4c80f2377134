"""FeatureHooks: capture named layers' outputs (or inputs) with forward hooks, by module name."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch
from torch import nn

from ..config import REPEAT_POLICIES
from ..errors import CaptureError, OutputTypeError, UnknownNameError, did_you_mean

Selector = Union[int, str, Callable[[Any], torch.Tensor], None]
LIST_HINT = (
    "List valid names with featdistill.list_layers(model, sample_input) or "
    "`python -m featdistill.run RECIPE --list-layers student|teacher`."
)


def list_layers(model: nn.Module, sample_input: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """``[(name, description)]`` for every named submodule; with ``sample_input`` the description is
    the output shape seen in one no-grad eval forward (``'-'`` for layers that did not run)."""
    names = [n for n, _ in model.named_modules() if n]
    if sample_input is None:
        return [(n, type(model.get_submodule(n)).__name__) for n in names]
    shapes: dict[str, str] = {}

    def describe(out: Any) -> str:
        if isinstance(out, torch.Tensor):
            return str(list(out.shape))
        if isinstance(out, (tuple, list)):
            return "(" + ", ".join(describe(o) for o in out) + ")"
        if isinstance(out, Mapping):
            return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in out.items()) + "}"
        return type(out).__name__

    def record(name: str) -> Callable:
        def hook(_module, _inputs, out) -> None:  # must return None, or it would replace the output
            shapes.setdefault(name, describe(out))

        return hook

    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(n, f"{type(model.get_submodule(n)).__name__} {shapes.get(n, '-')}") for n in names]


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``, or a helpful error."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise UnknownNameError(
            f"layer {name!r} not found in {type(model).__name__}.{did_you_mean(name, [n for n in modules if n])} "
            + LIST_HINT
        )
    return modules[name]


def select_tensor(value: Any, select: Selector, where: str) -> torch.Tensor:
    """Pick the tensor to capture from a layer's output (tensor, tuple/list or dict)."""
    if select is not None:
        if callable(select):
            value = select(value)
        else:
            try:
                value = value[select]
            except (IndexError, KeyError, TypeError) as exc:
                raise CaptureError(
                    f"{where}: select={select!r} does not fit an output of type {type(value).__name__} ({exc}). "
                    "Use an index for tuples/lists, a key for dicts, or a callable."
                ) from None
    if not isinstance(value, torch.Tensor):
        hint = " Pass select= (an index, a key or a callable) to pick the tensor."
        if isinstance(value, Mapping):
            hint += f" Keys: {list(value)}."
        elif isinstance(value, (tuple, list)):
            hint += f" It has {len(value)} items."
        raise OutputTypeError(f"{where} produced a {type(value).__name__}, not a tensor.{hint}")
    return value


class _Capture:
    """The hook callable for one layer. A small class (not a closure) so it pickles and compiles."""

    def __init__(self, owner: FeatureHooks, name: str, select: Selector):
        self.owner = owner
        self.name = name
        self.select = select

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        owner = self.owner
        if not owner.active:
            return
        value = args if owner.capture == "input" else output
        if owner.capture == "input" and self.select is None:
            value = args[0] if len(args) == 1 else args
        where = f"layer {self.name!r} ({type(module).__name__}) {owner.capture}"
        tensor = select_tensor(value, self.select, where)
        if owner.detach:
            tensor = tensor.detach()
        store = owner.store
        if owner.repeat == "first" and self.name in store:
            return
        # 'stack' keeps several tensors, so the version check below cannot watch them: always copy
        if owner.clone is True or (owner.clone == "auto" and (self.name in owner.inplace_layers
                                                              or owner.repeat == "stack")):
            tensor = tensor.clone()  # a later in-place op (e.g. ReLU(inplace=True) after bn1) would change it
        elif owner.clone == "auto" and not torch.compiler.is_compiling():
            # a compiled graph's outputs carry no meaningful version counter; the eager dry run found the layers
            owner.versions[self.name] = tensor._version
        if self.name not in store:
            store[self.name] = [tensor] if owner.repeat == "stack" else tensor
        elif owner.repeat == "error":
            raise CaptureError(
                f"layer {self.name!r} ({type(module).__name__}) ran more than once in one forward pass. "
                "Pass repeat='first', 'last' or 'stack' to choose which call to keep."
            )
        elif owner.repeat == "last":
            store[self.name] = tensor
        elif owner.repeat == "stack":
            store[self.name].append(tensor)


class FeatureHooks:
    """Forward hooks on layers of ``model`` named as ``model.named_modules()`` names them.

    Args:
        model: any ``nn.Module``.
        names: layer names, e.g. ``['layer2', 'blocks.3']``.
        capture: ``'output'`` (default) or ``'input'`` (the layer's first positional input).
        select: for non-tensor outputs, an index, dict key or callable picking the tensor; one
            selector for all layers or a ``{name: selector}`` mapping.
        repeat: what to do when a layer runs twice in one forward: ``'error'`` (default),
            ``'first'``, ``'last'`` or ``'stack'`` (tensors stacked on a new dim 0).
        detach: detach captures from the graph (use for a frozen teacher).
        clone: copy each capture so later in-place ops cannot change it. ``'auto'`` copies only layers seen
            to be modified in place: ``pop()`` compares each capture's version counter with the one at capture
            time and copies that layer from then on (a warning says the capture of that pass was affected),
            so run one pass first (the Distiller's dry run does) to find them before it matters.

    ``pop()`` returns ``{name: Tensor}`` (shapes as the layers produce them, e.g. ``[B, C, H, W]`` or
    ``[B, N, C]``) and clears the store; ``remove()`` (or leaving the ``with`` block) removes every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        capture: str = "output",
        select: Selector | Mapping[str, Selector] = None,
        repeat: str = "error",
        detach: bool = False,
        clone: bool | str = True,
    ):
        if capture not in ("output", "input"):
            raise ValueError(f"capture must be 'output' or 'input', got {capture!r}")
        if repeat not in REPEAT_POLICIES:
            raise ValueError(f"repeat must be one of {REPEAT_POLICIES}, got {repeat!r}")
        self.names = list(dict.fromkeys(names))
        self.capture, self.repeat, self.detach, self.clone = capture, repeat, detach, clone
        self.active = True
        self.store: dict[str, Any] = {}
        self.versions: dict[str, int] = {}
        self.inplace_layers: set[str] = set()
        self.warn_inplace = True
        self.model_name = type(model).__name__
        modules = {name: resolve_module(model, name) for name in self.names}
        per_layer = select if isinstance(select, Mapping) else {n: select for n in self.names}
        unknown = set(per_layer) - set(self.names)
        if unknown:
            raise UnknownNameError(f"select= names layers that are not hooked: {sorted(unknown)}")
        self._handles = [
            modules[n].register_forward_hook(_Capture(self, n, per_layer.get(n))) for n in self.names
        ]

    def pop(self, strict: bool = True) -> dict[str, torch.Tensor]:
        """Return ``{name: tensor}`` captured since the last pop and clear the store.

        With ``strict`` a hooked layer that did not run is an error (it usually means the layer
        is not on the forward path, e.g. a head replaced by ``forward_features``).
        """
        store, self.store = self.store, {}
        if self.versions:
            self._check_inplace(store)
        if strict:
            missing = [n for n in self.names if n not in store]
            if missing:
                raise CaptureError(
                    f"layer(s) {missing} of {self.model_name} did not run in the last forward pass. "
                    "Pick layers on the forward path; " + LIST_HINT
                )
        return {n: torch.stack(v) if isinstance(v, list) else v for n, v in store.items()}

    def _check_inplace(self, store: dict[str, Any]) -> None:
        versions, self.versions = self.versions, {}
        changed = [n for n, v in versions.items() if isinstance(store.get(n), torch.Tensor) and store[n]._version != v]
        if changed:
            self.inplace_layers.update(changed)
            if self.warn_inplace:
                warnings.warn(f"the output of {changed} was modified in place after capture (e.g. by "
                              "ReLU(inplace=True)); those captures are copied from now on, but this pass's "
                              "were affected", RuntimeWarning, stacklevel=3)

    def clear(self) -> None:
        self.store = {}
        self.versions = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.store = {}

    close = remove

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "removed"
        return f"FeatureHooks({self.model_name}, {self.names}, capture={self.capture!r}, {state})"


def count_hooks(model: nn.Module) -> int:
    """Number of forward hooks on ``model`` and its submodules (0 after a clean ``close()``)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
