"""Take ``bgobj_*`` keys out of LLaMA-Factory's arguments before its strict parser sees them, and give
the parsed argument objects the resolved :class:`~lf_ext.config.Settings` of their command."""

from __future__ import annotations

import dataclasses
from types import ModuleType

from lf_ext.config import Settings, attach_settings, check_video_data, parse_bgobj_args, split_bgobj_args
from lf_ext.log import get_logger
from lf_ext.patching import wrap

logger = get_logger()
_last_logged: dict = {}


def _parsing(parser_module: ModuleType):
    def make(original):
        def _parse_args(parser, args=None, allow_extra_keys=False):
            rest, found = split_bgobj_args(parser_module.read_args(args))
            settings = Settings(parse_bgobj_args(found), rest if isinstance(rest, dict) else {})
            check_video_data(settings)
            if found and found != _last_logged:
                _last_logged.clear()
                _last_logged.update(found)
                logger.info("lf_ext settings: %s", ", ".join(f"{k}={v!r}" for k, v in sorted(found.items())))
            parsed = original(parser, rest, allow_extra_keys=allow_extra_keys)
            for value in parsed if isinstance(parsed, tuple) else (parsed,):
                if dataclasses.is_dataclass(value):
                    attach_settings(value, settings)
            return parsed

        return _parse_args

    return make


def patch_parser(parser_module: ModuleType) -> None:
    """Wrap ``llamafactory.hparams.parser._parse_args``; every LF entry point parses through it."""
    wrap(parser_module, "_parse_args", _parsing(parser_module))
