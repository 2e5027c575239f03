"""Registry of mask providers, selected by the ``bgobj_mask_provider`` key."""

from __future__ import annotations

from typing import Callable

MASK_PROVIDERS: dict[str, type] = {}


def register_mask_provider(name: str) -> Callable[[type], type]:
    """Class decorator: register a mask provider under ``name`` (duplicates are an error)."""

    def wrap(cls: type) -> type:
        if name in MASK_PROVIDERS and MASK_PROVIDERS[name] is not cls:
            raise ValueError(f"Mask provider '{name}' already exists.")
        MASK_PROVIDERS[name] = cls
        return cls

    return wrap


def mask_provider_names() -> list[str]:
    return sorted(MASK_PROVIDERS)


@register_mask_provider("none")
class NoSplitMaskProvider:
    """No split: every token unit is background, the object group is empty."""

    def __call__(self, image):
        return None
