"""lf_ext: background/object-separated visual tokens and a background cache for LLaMA-Factory.

Installed next to LLaMA-Factory, it activates itself in every ``llamafactory-cli`` process through
``lf_ext.pth``; ``LF_EXT_DISABLE=1`` turns it off. Library users may call :func:`register`.
"""

__version__ = "0.1.0"


def register() -> bool:
    """Patch LLaMA-Factory now; safe to call more than once. Returns False when disabled by env."""
    from lf_ext.activation import register as _register

    return _register()


__all__ = ["register", "__version__"]
