"""The one way lf_ext wraps a function of another library: once, keeping the original reachable.

Every patch of LLaMA-Factory, transformers or a model instance goes through :func:`wrap`, so that
importing a patched module twice, calling ``lf_ext.register()`` again or loading the same model
twice never stacks wrappers, and ``wrapper.__wrapped__`` is always the original.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

MARK, TAG = "_lf_ext_wrapped", "_lf_ext_tag"


def is_wrapped(function: Any, tag: str = "") -> bool:
    """Whether ``function``, or a function it wraps, is an lf_ext wrapper (with this ``tag``, if given)."""
    seen = 0
    while function is not None and seen < 64:
        if getattr(function, MARK, False) and (not tag or getattr(function, TAG, None) == tag):
            return True
        function, seen = getattr(function, "__wrapped__", None), seen + 1
    return False


def wrap(owner: Any, name: str, make: Callable[[Callable], Callable], tag: str = "") -> bool:
    """Replace ``owner.name`` by ``make(original)`` unless it is already an lf_ext wrapper with ``tag``.

    ``owner`` is a module, a class or an instance (an instance attribute then shadows the class's
    method). ``tag`` tells wrappers of the same attribute apart (e.g. the background cache and the
    exit guard both wrap ``model.generate``). Returns True when it wrapped.
    """
    original = getattr(owner, name)
    if is_wrapped(original, tag or name):
        return False
    wrapper = make(original)
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, MARK, True)
    setattr(wrapper, TAG, tag or name)
    setattr(owner, name, wrapper)
    return True


def call_after(owner: Any, name: str, after: Callable[..., None], tag: str = "") -> bool:
    """Wrap ``owner.name`` so that ``after(result, *args, **kwargs)`` runs after every call."""

    def make(original):
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            after(result, *args, **kwargs)
            return result

        return wrapper

    return wrap(owner, name, make, tag)
