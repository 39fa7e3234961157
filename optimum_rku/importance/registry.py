"""The importance registry: `@register_importance("name")` adds a method; `get_importance(name)` instantiates it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optimum_rku.importance.base import Importance


_REGISTRY: dict[str, type[Importance]] = {}


def register_importance(name: str):
    """Class decorator adding an importance method to the registry under `name`."""

    def wrap(cls: type[Importance]) -> type[Importance]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_importances() -> list[str]:
    """Names of every registered importance method (the built-in ones register when `optimum_rku.importance` loads)."""
    return sorted(_REGISTRY)


def get_importance(name: str) -> Importance:
    """Instantiate the importance method registered as `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown importance {name!r}; allowed: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]()
