"""One small registry type, used for every kind of pluggable thing.

timm-style: a variant is a factory function registered under a name
(``dehazeformer-t``, ``dav2-l``, ``edge-s``); users build it with one call.
An unknown name is an error that lists the names that exist.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry:
    """A named mapping ``name -> factory`` with a decorator to fill it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(fn: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} '{name}'; known: {known}") from None

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
