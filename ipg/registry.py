"""Named choices (signals, answer formats) in registries that refuse silent overrides: registering a name
twice is an error unless the caller says ``replace=True``."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator registering an item under ``name``."""

        def wrap(item: T) -> T:
            if name in self._items and not replace:
                raise ValueError(f"{self.what} '{name}' is already registered; pass replace=True to override it")
            self._items[name] = item
            return item

        return wrap

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)
