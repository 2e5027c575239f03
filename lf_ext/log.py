"""The ``lf_ext`` logger: one stream handler, LLaMA-Factory-like format, INFO by default."""

import logging
import os

_FORMAT = "[%(levelname)s|lf_ext|rank%(rank)s] %(message)s"


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = os.environ.get("RANK", "0")
        return True


def get_logger() -> logging.Logger:
    """Return the package logger, configuring it on first use (level from ``LF_EXT_VERBOSITY``)."""
    logger = logging.getLogger("lf_ext")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(_RankFilter())
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("LF_EXT_VERBOSITY", "INFO").upper())
        logger.propagate = False
    return logger
