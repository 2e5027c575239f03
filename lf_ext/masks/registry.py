"""Registry of mask providers, selected by the ``bgobj_mask_provider`` key."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

MASK_PROVIDERS: dict[str, type] = {}
BUILTIN_MODULES = ("lf_ext.masks.dataset", "lf_ext.masks.entropy", "lf_ext.masks.motion", "lf_ext.masks.reference",
                   "lf_ext.masks.yolo")


def register_mask_provider(name: str) -> Callable[[type], type]:
    """Class decorator: register a mask provider under ``name`` (duplicates are an error).

    The class is built with ``cls.from_settings(settings, **context)`` (or ``cls()`` without it)
    and called with a :class:`lf_ext.masks.base.MaskRequest`.
    """

    def wrap(cls: type) -> type:
        if name in MASK_PROVIDERS and MASK_PROVIDERS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"Mask provider '{name}' already exists.")
        MASK_PROVIDERS[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def mask_provider_names() -> list[str]:
    _load_builtins()
    return sorted(MASK_PROVIDERS)


def build_mask_provider(name: str, settings: Any, **context: Any):
    """Instantiate the provider registered as ``name`` from the ``bgobj_*`` settings."""
    _load_builtins()
    if name not in MASK_PROVIDERS:
        raise ValueError(f"Unknown mask provider '{name}'. Valid: {', '.join(mask_provider_names())}.")
    cls = MASK_PROVIDERS[name]
    return cls.from_settings(settings, **context) if hasattr(cls, "from_settings") else cls()


@register_mask_provider("none")
class NoSplitMaskProvider:
    """No split: every token unit is background and the object group is empty."""

    def __call__(self, request) -> np.ndarray:
        return np.zeros((request.image.height, request.image.width), dtype=np.float32)
