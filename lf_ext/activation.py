"""Explicit activation for library users (`lf_ext.register()`) and the env switch."""

from __future__ import annotations

import importlib
import os

from lf_ext._import_hook import LAZY_PREFIXES, PATCHES, install


def is_disabled() -> bool:
    """True when ``LF_EXT_DISABLE`` turns lf_ext off for this process."""
    return os.environ.get("LF_EXT_DISABLE", "0").strip().lower() in ("1", "true", "yes", "on")


def register() -> bool:
    """Patch LLaMA-Factory now (importing it); idempotent. Returns False when disabled by env."""
    if is_disabled():
        return False
    install()
    for name in PATCHES:
        if name.startswith(LAZY_PREFIXES):
            continue
        importlib.import_module(name)  # the hook patches it on first import; install() did the rest
    return True
