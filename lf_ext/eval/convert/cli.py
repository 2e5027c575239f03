"""``data convert TASK --src DIR --out DIR [task options]`` for an argparse command line.

Wire it with ``add_parser(subparsers)`` on the top-level subparsers; the parsed namespace's ``func`` is :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import sys

from lf_ext.eval.convert import CONVERTERS, convert


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text else ""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``data`` (with its ``convert`` command, one sub-command per task) on ``subparsers``."""
    data = subparsers.add_parser("data", help="benchmark data tools")
    commands = data.add_subparsers(dest="data_command", required=True)
    converter = commands.add_parser("convert", help="convert a public benchmark to LLaMA-Factory sharegpt .jsonl (resumable)")
    tasks = converter.add_subparsers(dest="task", required=True, metavar="TASK")
    for name in sorted(CONVERTERS):
        cls = CONVERTERS[name]
        doc = sys.modules[cls.__module__].__doc__
        task = tasks.add_parser(name, help=_first_line(doc), description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        task.add_argument("--src", required=True, help="folder holding the benchmark's files as published")
        task.add_argument("--out", required=True, help="output folder (jsonl files, dataset_info.json, written images)")
        task.add_argument("--skip-missing", action="store_true", help="skip and count items whose media are missing")
        task.add_argument("--limit", type=int, help="stop after this many records (a later run continues)")
        task.add_argument("--overwrite", action="store_true", help="start again, replacing an earlier conversion")
        task.add_argument("--no-progress", action="store_true", help="no progress bar")
        cls.add_arguments(task)
        task.set_defaults(func=main)
    return data


def main(args: argparse.Namespace) -> int:
    """Run one conversion from parsed arguments and print its summary as JSON; format errors raise ``ValueError``
    (``lf_ext.cli`` prints those as one line and exits with 2)."""
    cls = CONVERTERS[args.task]
    options = {key: getattr(args, key) for key in cls.defaults() if getattr(args, key, None) is not None}
    summary = convert(args.task, args.src, args.out, skip_missing=args.skip_missing, limit=args.limit,
                      overwrite=args.overwrite, progress=not args.no_progress, **options)  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


def run(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m lf_ext.eval.convert.cli data convert gqa --src ... --out ...``)."""
    parser = argparse.ArgumentParser(prog="lf-ext")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"lf-ext data: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
