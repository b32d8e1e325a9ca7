"""A tiny name -> builder registry shared by models, data readers and other pluggable parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pcamlab.errors import ConfigError, did_you_mean

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to objects (builders or classes).

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("baseline")
        ... def build_baseline(): ...
        >>> MODELS.get("baseline")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._items:
            where = field or f"{self.kind} name"
            raise ConfigError(
                f"{where} must be one of {sorted(self._items)}; got {name!r}"
                f"{did_you_mean(name, self._items)}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
