"""Benchmark converters: public dataset formats -> LLaMA-Factory sharegpt ``.jsonl`` + ``dataset_info.json``.

``convert("gqa", src, out, questions="testdev_balanced_questions.json")`` or ``lf-ext data convert gqa --src ... --out ...``.
Each task is a :class:`~lf_ext.eval.convert.common.Converter` subclass registered with :func:`register_converter`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

CONVERTERS: dict[str, type] = {}


def register_converter(name: str) -> Callable[[type], type]:
    """Class decorator: make a converter available as ``name``."""

    def decorate(cls: type) -> type:
        if CONVERTERS.get(name, cls) is not cls:
            raise ValueError(f"converter '{name}' is already registered ({CONVERTERS[name].__module__})")
        cls.task = name
        CONVERTERS[name] = cls
        return cls

    return decorate


def convert(task: str, src: str | Path, out: str | Path, **options: Any) -> dict:
    """Convert ``task``'s files under ``src`` into ``out``; returns the summary (records written, skipped, paths).

    Options: the task's own (see each converter's ``defaults()``) and the run options ``skip_missing``, ``limit``,
    ``overwrite``, ``progress`` and ``checkpoint_every`` (see :func:`~lf_ext.eval.convert.common.run_conversion`).
    """
    from lf_ext.eval.convert.common import RUN_OPTIONS, run_conversion

    if task not in CONVERTERS:
        raise ValueError(f"unknown task '{task}'; known: {', '.join(sorted(CONVERTERS))}")
    run_options = {key: options.pop(key) for key in list(options) if key in RUN_OPTIONS}
    converter = CONVERTERS[task](src, **options)
    return run_conversion(converter, out, **run_options)


# the converters register themselves on import
from lf_ext.eval.convert import androidcontrol, gqa, mmmu, ocrvqa, seedbench  # noqa: F401
