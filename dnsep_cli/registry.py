"""One registry type for every pluggable part: SDEs, backbones, predictors, correctors, samplers, post-filters
and front-ends, each chosen by name in a model's config.json or on the command line.

A ``Registry`` is a read-only mapping from names to classes or factories, filled by the module that defines
them (``@REGISTRY.register("name")`` or ``REGISTRY.register("name", obj)``), in the order a user reads in
the error: an unknown name raises ``UnknownChoice`` (a ``ValueError`` and a ``KeyError``) that lists the
choices, and a name registered twice is refused rather than silently replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownChoice(KeyError, ValueError):
    """An unknown name: ``unknown <kind> 'name'; known: a, b, c``."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """Names -> classes or factories of one kind of part.

    ``also``: choices the caller handles before the registry (``"none"`` for front-ends), listed in the error.
    """

    def __init__(self, kind: str, also: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.also = also
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """``register(name, entry)`` adds ``entry``; ``@register(name)`` adds the decorated class or function."""
        if entry is not None:
            self._add(name, entry)
            return entry

        def decorate(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorate

    def _add(self, name: str, entry: T) -> None:
        if name in self._entries or name in self.also:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def check(self, name: str) -> None:
        """Raise ``UnknownChoice`` unless ``name`` is registered."""
        self[name]

    def choices(self) -> str:
        return ", ".join((*self.also, *self._entries))

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownChoice(f"unknown {self.kind} {name!r}; known: {self.choices()}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {self.choices()})"
