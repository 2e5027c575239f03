"""Take ``bgobj_*`` keys out of LLaMA-Factory's arguments before its strict parser sees them."""

from __future__ import annotations

import functools
from types import ModuleType

from lf_ext.log import get_logger
from lf_ext.config import parse_bgobj_args, set_active_settings, split_bgobj_args

logger = get_logger()


_last_logged: dict = {}


def patch_parser(parser_module: ModuleType) -> None:
    """Wrap ``llamafactory.hparams.parser._parse_args``; every LF entry point parses through it."""
    original = parser_module._parse_args
    if getattr(original, "_lf_ext_wrapped", False):
        return

    @functools.wraps(original)
    def _parse_args(parser, args=None, allow_extra_keys=False):
        rest, found = split_bgobj_args(parser_module.read_args(args))
        settings = parse_bgobj_args(found)
        set_active_settings(settings, rest if isinstance(rest, dict) else {})
        if found and found != _last_logged:
            _last_logged.clear()
            _last_logged.update(found)
            logger.info("lf_ext settings: %s", ", ".join(f"{k}={v!r}" for k, v in sorted(found.items())))
        return original(parser, rest, allow_extra_keys=allow_extra_keys)

    _parse_args._lf_ext_wrapped = True
    parser_module._parse_args = _parse_args
