"""One registry per kind of name that params.yaml uses: models, optimizers, schedulers, augment
operations, explanation, saliency and preprocessing methods, ...

The phase that owns a kind fills its registry (`register`, as timm's `register_model` does), and
everything that needs the names reads them there: params validation (the `params` stage hands
every registry to `cxr.core.config.parse_params`), command-line choices, and params.yaml's
comments (held against the registries by a test). No list of names is ever copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from cxr.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind, each with what it stands for (a spec, a factory, a function)."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind  # what one name is: "model", "optimizer", ...
        self.key = key  # the params key that holds one: "train.model", ...
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add `name` (it must be new); returns `entry`, so it also serves as a decorator's
        body: `REGISTRY.register("name", function)`."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        """Every name, in the order registered."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered."""
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"

    def check(self, name: str) -> None:
        """Raise ValueError (what params validation reports under the key) for an unknown name."""
        if name not in self._entries:
            raise ValueError(self.unknown(name))

    def __getitem__(self, name: str) -> T:
        """The entry of `name`; an unknown name is a ConfigError naming the params key."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.key}: {self.unknown(name)}") from None
