"""Named choices in registries that refuse silent overrides: registering a name twice is an error unless the
caller says ``replace=True``. Every family of choices lives in one: signals (``ipg.signals``), answer formats
(``ipg.answers``), attribution methods (``ipg.methods``), alpha schedules and activation baselines
(``ipg.paths``), advantages (``ipg.advantages``), selection baselines (``ipg.driver.selections``) and backends
(``ipg.workers.backends``). Config validation, the CLI's help and the docs read the names from them."""

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

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register ``item`` under ``name`` (the non-decorator form)."""
        return self.register(name, replace=replace)(item)

    def get(self, name: str, field: str) -> T:
        """The item named ``name``, or an ``InputError`` naming ``field`` and the choices."""
        from ipg.errors import InputError

        if name not in self._items:
            raise InputError(f"{field}: unknown {name!r}; use one of {list(self._items)}")
        return self._items[name]

    def __iter__(self):
        """The names, in the order they were registered."""
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)
