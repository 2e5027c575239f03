"""Model families: what lf_ext needs to know about one VLM architecture, behind one interface.

A family (:class:`~lf_ext.families.base.BgObjFamily`) says where the vision tower, projector and LLM
live, how an image becomes token units and back (:class:`~lf_ext.families.base.PixelUnits`), how the
units of an :class:`~lf_ext.layout.ImageLayout` are encoded and positioned, and which template and
plugin serve it. Everything else (layout, separators, prefusion, split projectors, the background
cache, sibling training, benchmarks) is shared and calls the family.

Families register by HF ``model_type`` (like LLaMA-Factory's template and plugin registries and
PEFT's ``PEFT_TYPE_TO_CONFIG_MAPPING``); the registry only imports a family module when asked.
"""

from __future__ import annotations

import importlib
from typing import Any

from lf_ext.families.base import BgObjFamily, PixelUnits

# model_type -> "module:attribute" of the family object (imported lazily)
FAMILY_PATHS: dict[str, str] = {
    "qwen2_vl": "lf_ext.families.qwen:QWEN2_VL",
    "qwen2_5_vl": "lf_ext.families.qwen:QWEN2_5_VL",
    "llava": "lf_ext.families.llava:LLAVA",
}
_LOADED: dict[str, BgObjFamily] = {}


def register_family(family: BgObjFamily) -> BgObjFamily:
    """Register a family object for each of its ``model_types`` (a duplicate type is an error)."""
    for model_type in family.model_types:
        known = _LOADED.get(model_type)
        if known is not None and known is not family:
            raise ValueError(f"model type '{model_type}' already has the family '{known.name}'")
        _LOADED[model_type] = family
        FAMILY_PATHS.setdefault(model_type, "")
    return family


def family_for_type(model_type: str | None) -> BgObjFamily | None:
    """The family serving an HF ``model_type``, or None."""
    if model_type is None or model_type not in FAMILY_PATHS:
        return None
    if model_type not in _LOADED:
        module, name = FAMILY_PATHS[model_type].split(":")
        register_family(getattr(importlib.import_module(module), name))
    return _LOADED[model_type]


def family_of(config_or_model: Any) -> BgObjFamily | None:
    """The family of a config or model (PEFT wrappers included), or None for unsupported models."""
    config = getattr(config_or_model, "config", config_or_model)
    return family_for_type(getattr(config, "model_type", None))


def family_for_template(template: str) -> BgObjFamily:
    """The family whose bgobj template is ``template`` (the first registered one)."""
    for model_type in FAMILY_PATHS:
        family = family_for_type(model_type)
        if family is not None and family.template == template:
            return family
    raise ValueError(f"no bgobj family serves the template '{template}'")


def all_families() -> list[BgObjFamily]:
    """Every registered family once, in registration order."""
    seen: dict[int, BgObjFamily] = {}
    for model_type in FAMILY_PATHS:
        family = family_for_type(model_type)
        if family is not None:
            seen.setdefault(id(family), family)
    return list(seen.values())


__all__ = ["BgObjFamily", "PixelUnits", "all_families", "family_for_template", "family_for_type", "family_of",
           "register_family"]  # fmt: skip
