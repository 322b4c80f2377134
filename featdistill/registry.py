"""A small name -> object registry; ADAPTERS and LOSSES are instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .errors import UnknownNameError, did_you_mean


class Registry:
    """Maps names to callables. ``@REG.register('name', 'alias')`` adds one; ``REG.get(name)`` finds it.

    A lookup of an unknown name raises :class:`UnknownNameError` listing every known name
    and the closest match, so a typo in a recipe is a one-line fix.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, *names: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            for name in names or (obj.__name__,):
                if name in self._items and self._items[name] is not obj:
                    raise ValueError(f"{self.kind} {name!r} is already registered")
                self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self._items, n=1)} "
                f"Known {self.kind}s: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def entries(self) -> list[tuple[list[str], Any]]:
        """Each registered object once with all its names (the first registered first, then its aliases), in
        registration order."""
        grouped: dict[int, tuple[list[str], Any]] = {}
        for name, obj in self._items.items():
            grouped.setdefault(id(obj), ([], obj))[0].append(name)
        return list(grouped.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
